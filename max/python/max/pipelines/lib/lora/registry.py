"""Which LoRA adapters the engine knows, which are in host memory, which sit in device slots.

Three tiers, as in S-LoRA and vLLM: every adapter registered by name (`--lora-modules`,
`/v1/load_lora_adapter`) is known with its path; up to `--max-cpu-loras` of them are held in
host memory (least recently used out first; an evicted one is read again from its path
when needed); up to `--max-loras` sit in the device slots of the network (`LoRATargets`),
the ones a step uses taking the slots of the least recently used others. The scheduler
never puts more distinct adapters in one step than there are slots.

Each registration gets a number of its own (`LoRARef.uid`, never reused): requests hold
that, so an adapter unloaded or re-registered under the same name while requests run
leaves those requests on the weights they started with, and the prefix cache keys pages
by it (two adapters never share a page).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from max.errors import MaxError
from max.nn.lora import LoRATargets
from max.pipelines.lib.lora.peft_adapter import LoRAAdapter, read_adapter

logger = logging.getLogger("max.pipelines.lora")


@dataclass(frozen=True)
class LoRARef:
    """What a request holds of its adapter: name, registration number, and where to read
    it again."""

    name: str
    uid: int
    path: str


class AdapterRequest(Protocol):
    """What `assign` reads and writes of an engine request."""

    lora: LoRARef | None
    lora_slot: int


class LoRARegistry:
    """The adapters of one engine (see the module docstring)."""

    def __init__(self, targets: LoRATargets, max_cpu_loras: int | None = None) -> None:
        self.targets = targets
        self.max_cpu_loras = max(max_cpu_loras or targets.num_slots, targets.num_slots)
        self._known: dict[str, LoRARef] = {}
        self._host: OrderedDict[int, LoRAAdapter] = OrderedDict()
        self._slot_uid: list[int | None] = [None] * targets.num_slots
        self._slot_use: list[int] = [0] * targets.num_slots
        self._uids = itertools.count(1)
        self._reader: ThreadPoolExecutor | None = None
        self._pending: dict[str, tuple[str, str, Future]] = {}  # token -> (name, path, read)
        self._reading: dict[str, str] = {}  # token -> name
        self._clock = itertools.count(1)
        # For /metrics: adapters copied into a slot, and those copies that displaced another.
        self.slot_loads = 0
        self.slot_evictions = 0

    @property
    def max_loras(self) -> int:
        """Adapters the device holds at once."""
        return self.targets.num_slots

    def names(self) -> list[str]:
        """The registered adapters' names, in registration order."""
        return list(self._known)

    def paths(self) -> dict[str, str]:
        """Each registered adapter's path (folder or repo id)."""
        return {name: ref.path for name, ref in self._known.items()}

    def add(self, name: str, path: str) -> LoRARef:
        """Reads, checks and registers adapter `path` as `name` (MaxError if it does not fit
        the model, or the name is taken)."""
        self._check_name(name)
        return self._register(name, path, self._read(name, path))

    def start_add(self, name: str, path: str, token: str) -> None:
        """Starts reading and checking adapter `path` in a background thread (so that the
        engine keeps stepping meanwhile); `finish_adds` registers it once read. MaxError at
        once if the name is taken."""
        self._check_name(name)
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="lora-reader")
        future = self._reader.submit(self._read, name, path)
        self._pending[token] = (name, path, future)
        self._reading[token] = name

    def finish_adds(self, timeout: float = 0.0) -> list[tuple[str, str | None]]:
        """Registers the adapters `start_add` has finished reading (waiting up to `timeout`
        seconds for one); (token, error message or None) for each."""
        if not self._pending:
            return []
        wait([f for _, _, f in self._pending.values()], timeout=timeout, return_when=FIRST_COMPLETED)
        done = []
        for token, (name, path, future) in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[token], self._reading[token]
            try:
                adapter = future.result()
            except MaxError as e:
                done.append((token, str(e)))
                continue
            self._register(name, path, adapter)
            done.append((token, None))
        return done

    def _check_name(self, name: str) -> None:
        if not name or "=" in name:
            raise MaxError(f"invalid LoRA adapter name {name!r}")
        if name in self._known or name in self._reading.values():
            raise MaxError(f"a LoRA adapter named {name!r} is already loaded")

    def _register(self, name: str, path: str, adapter: LoRAAdapter) -> LoRARef:
        ref = LoRARef(name, next(self._uids), path)
        self._known[name] = ref
        self._keep(ref.uid, adapter)
        logger.info("LoRA adapter %r (rank %d, scale %g) from %s", name, adapter.rank, adapter.scale, path)
        return ref

    @property
    def reading(self) -> bool:
        """Adapters are being read in the background."""
        return bool(self._pending)

    def remove(self, name: str) -> None:
        """Forgets adapter `name` (MaxError if unknown). Requests already running with it
        finish on it; new ones are refused."""
        ref = self._known.pop(name, None)
        if ref is None:
            raise MaxError(f"LoRA adapter {name!r} is not loaded")
        self._host.pop(ref.uid, None)

    def ref(self, name: str) -> LoRARef:
        """The adapter a request names (MaxError if unknown)."""
        ref = self._known.get(name)
        if ref is None:
            raise MaxError(f"the LoRA adapter {name!r} does not exist")
        return ref

    def activate(self, refs: Sequence[LoRARef | None]) -> list[int]:
        """The device slot of each of a step's requests' adapters (-1: the base model),
        loading into slots those that are not resident yet."""
        wanted = {r.uid: r for r in refs if r is not None}
        if len(wanted) > self.max_loras:
            raise RuntimeError(f"a step uses {len(wanted)} LoRA adapters; the device holds {self.max_loras}")
        now = next(self._clock)
        slot_of = {uid: s for s, uid in enumerate(self._slot_uid) if uid is not None}
        for uid, ref in wanted.items():
            if uid not in slot_of:
                free = [s for s in range(self.max_loras) if self._slot_uid[s] not in wanted]
                slot = min(free, key=lambda s: (self._slot_uid[s] is not None, self._slot_use[s]))
                self.targets.load_slot(slot, self._adapter(ref).weights, self._adapter(ref).scale)
                self.slot_loads += 1
                self.slot_evictions += int(self._slot_uid[slot] is not None)
                self._slot_uid[slot] = uid
                slot_of[uid] = slot
            self._slot_use[slot_of[uid]] = now
        return [-1 if r is None else slot_of[r.uid] for r in refs]

    def assign(self, requests: Sequence[AdapterRequest]) -> None:
        """Gives each of a step's requests its adapter's device slot (`Request.lora_slot`)."""
        for request, slot in zip(requests, self.activate([r.lora for r in requests])):
            request.lora_slot = slot

    def _adapter(self, ref: LoRARef) -> LoRAAdapter:
        """The adapter in host memory (read again from its path if it was evicted)."""
        adapter = self._host.get(ref.uid)
        if adapter is None:
            adapter = self._read(ref.name, ref.path)
            self._keep(ref.uid, adapter)
        self._host.move_to_end(ref.uid)
        return adapter

    def _read(self, name: str, path: str) -> LoRAAdapter:
        adapter = read_adapter(name, path)
        self.targets.check_fits(name, adapter.weights)
        # Converted and pinned here (in the reader thread for loads while serving), not
        # while a step waits for the slot.
        return dataclasses.replace(adapter, weights=self.targets.stage(adapter.weights))

    def _keep(self, uid: int, adapter: LoRAAdapter) -> None:
        self._host[uid] = adapter
        while len(self._host) > self.max_cpu_loras:
            self._host.popitem(last=False)


def adapter_ref(registry: LoRARegistry | None, name: str | None) -> LoRARef | None:
    """The registered adapter `name` a request asks for (None: the base model); MaxError
    if it is unknown or LoRA is off."""
    if name is None:
        return None
    if registry is None:
        raise MaxError(f"LoRA adapter {name!r} asked for, but LoRA is not enabled (--enable-lora)")
    return registry.ref(name)
