"""Tensor-parallel ranks on torch.distributed: starting them, joining them, feeding each step.

Rank 0 is the engine's process: it owns the scheduler, the page tables and the sampler.
The other ranks only run the model on their shard of every layer. Each step, rank 0 sends
the step's layout (a small pickled header, over a gloo group) and its input tensors (one
int64 and one int32 buffer, over the device group: NCCL on GPUs, gloo on the CPU) to the
others, and every rank runs the same forward (the layers' collectives meet inside it).

On one host rank 0 starts the other ranks itself, as child processes. Across hosts every
process is started by torchrun (or with `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`,
`LOCAL_RANK` set by hand): the process with RANK 0 runs the command, the others run
`run_tensor_parallel_rank`.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing as mp
import os
import pickle
import socket
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from max.errors import EngineDeadError, MaxError
from max.kv_cache import PagedKVCache
from max.nn import TensorParallel
from max.pipelines.lib.config import PipelineConfig, torchrun_world
from max.pipelines.lib.pipeline_model import ModelInputs
from max_kernels import RaggedLayout

logger = logging.getLogger("max.pipelines")

# A step's collectives time out after this (a dead or hung rank); an idle rank waits for the
# next step's header much longer.
STEP_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("MAX_TP_STEP_TIMEOUT", "300")))
IDLE_TIMEOUT = datetime.timedelta(days=7)


@dataclass
class RankGroup:
    """This process's membership of a tensor-parallel group."""

    tp: TensorParallel
    device: torch.device
    header_group: object  # gloo: the pickled per-step headers
    workers: list[mp.Process] = field(default_factory=list)  # rank 0 on one host: ranks 1..N-1

    @property
    def rank(self) -> int:
        return self.tp.rank

    def agree_min(self, value: int) -> int:
        """The smallest of every rank's `value` (e.g. KV pages that fit on every device)."""
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.header_group)
        return int(t.item())

    def check_workers(self, grace: float = 0.0) -> None:
        """Raises EngineDeadError if a local rank has died. With `grace`, first gives a rank
        that is still exiting that many seconds to be reaped (after a failed collective,
        the peer's socket can close before its process is gone)."""
        deadline = time.monotonic() + grace
        for rank, proc in enumerate(self.workers, start=1):
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if not proc.is_alive():
                raise EngineDeadError(f"tensor-parallel rank {rank} exited (exit code {proc.exitcode})")

    def close(self) -> None:
        """Tells the other ranks to stop (rank 0), then leaves the group.

        Told ranks leave the group as rank 0 does, at the same time: NCCL's finalize waits
        for the peers, so rank 0 must not wait for them to exit before leaving itself.
        Ranks that could not be told (one is gone) are ended first.
        """
        told = False
        if self.rank == 0 and dist.is_initialized():
            try:
                self.check_workers()
                dist.broadcast_object_list([{"op": "stop"}], src=0, group=self.header_group)
                told = True
            except Exception:  # a rank already gone: nothing to tell it
                pass
        if told and dist.is_initialized():
            dist.destroy_process_group()
        for proc in self.workers:
            # Ranks that were not told to stop wait for a step forever: end them now, so
            # that a restarted engine finds their devices free.
            proc.join(timeout=30 if told else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, addr: str, port: int, device: torch.device) -> RankGroup:
    if dist.is_initialized():
        raise MaxError("this process is already in a torch.distributed group (one engine per process)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://{addr}:{port}",
        rank=rank,
        world_size=world,
        timeout=STEP_TIMEOUT,
        **({"device_id": device} if device.type == "cuda" else {}),
    )
    headers = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    return RankGroup(TensorParallel(rank, world, dist.group.WORLD), device, headers)


def start_tensor_parallel(config: PipelineConfig, architecture) -> RankGroup:
    """Rank 0: starts the other ranks on this host (unless torchrun did) and joins them."""
    world = torchrun_world()
    if world is not None:
        rank, size, _ = world
        if rank != 0:
            raise MaxError("start_tensor_parallel runs on rank 0; other ranks run run_tensor_parallel_rank")
        addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
        return _join(0, size, addr, port, config.device)
    size = config.tp_size
    devices = config.rank_devices()
    addr, port = "127.0.0.1", _free_port()
    ctx = mp.get_context("spawn")
    arch_bytes = pickle.dumps(architecture)
    workers = []
    for rank in range(1, size):
        proc = ctx.Process(
            target=run_tensor_parallel_rank,
            args=(config.for_rank(rank), arch_bytes, rank, size, addr, port, os.getpid()),
            name=f"max-tp-rank{rank}",
            daemon=True,
        )
        proc.start()
        workers.append(proc)
    try:
        group = _join(0, size, addr, port, devices[0])
    except Exception:
        for proc in workers:
            proc.terminate()
        raise
    group.workers = workers
    return group


def run_tensor_parallel_rank(
    config: PipelineConfig,
    arch_bytes: bytes | None = None,
    rank: int | None = None,
    world: int | None = None,
    addr: str | None = None,
    port: int | None = None,
    parent: int | None = None,
) -> None:
    """A rank other than 0: joins the group, builds its shard, runs every step rank 0 sends
    until told to stop. With no arguments beyond `config`, the torchrun environment says
    who and where this rank is."""
    from max.pipelines.lib.pipeline_builder import build_rank, resolve_model
    from max.pipelines.lib.registry import PipelineRegistry, register_custom_architectures

    if parent is not None:
        _exit_with_parent(parent)
    if rank is None:
        env = torchrun_world()
        if env is None:
            raise MaxError("run_tensor_parallel_rank needs RANK and WORLD_SIZE (as torchrun sets them)")
        rank, world, _ = env
        addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    registry = PipelineRegistry()
    register_custom_architectures(config.custom_architectures, registry)
    if arch_bytes is not None:
        registry.register(pickle.loads(arch_bytes), allow_override=True)
    else:
        from max.pipelines.lib.registry import PIPELINE_REGISTRY

        for arch in PIPELINE_REGISTRY.architectures():
            registry.register(arch, allow_override=True)
    group = _join(rank, world, addr, port, config.device)
    runner = None
    try:
        resolved = resolve_model(config, registry)
        _, kv_cache, runner = build_rank(resolved, group)
        while True:
            (header,) = _receive_header(group)
            if header["op"] == "stop":
                break
            runner.execute(_receive_inputs(header, group, kv_cache))
    finally:
        if runner is not None:
            runner.close()  # its graphs hold captured collectives: they go before the group
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_with_parent(parent: int) -> None:
    """Ends this rank when the process that started it is gone (it cannot tell us)."""

    def watch() -> None:
        import time

        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="max-tp-parent-watch").start()


def _receive_header(group: RankGroup) -> list:
    box = [None]
    dist.broadcast_object_list(box, src=0, group=group.header_group)
    return box


def _receive_inputs(header: dict, group: RankGroup, kv_cache: PagedKVCache) -> ModelInputs:
    device = group.device
    t, b, n, w = header["num_tokens"], header["num_requests"], header["num_logits"], header["width"]
    longs = torch.empty(3 * t + n, dtype=torch.int64, device=device)
    ints = torch.empty(2 * b + 1 + b * w, dtype=torch.int32, device=device)
    dist.broadcast(longs, src=0, group=group.tp.group)
    dist.broadcast(ints, src=0, group=group.tp.group)
    layout = RaggedLayout(
        query_start=ints[: b + 1],
        context_lens=ints[b + 1 : 2 * b + 1],
        page_table=ints[2 * b + 1 :].view(b, w),
        slot_mapping=longs[2 * t : 3 * t],
        page_size=kv_cache.page_size,
        num_decode=header["num_decode"],
        query_lens=header["query_lens"],
        context_lens_host=header["context_lens"],
        num_splits=header["num_splits"],
    )
    return ModelInputs(
        tokens=longs[:t],
        positions=longs[t : 2 * t],
        layout=layout,
        logits_indices=longs[3 * t :],
        logits_rows=[slice(a, z) for a, z in header["logits_rows"]],
        request_ids=[],
        kv_cache=kv_cache,
    )


class TensorParallelRunner:
    """Rank 0's model runner: sends each step to the other ranks, then runs its own shard."""

    def __init__(self, local, group: RankGroup) -> None:
        self.local = local
        self.group = group

    @property
    def graph_batch_sizes(self) -> list[int]:
        return self.local.graph_batch_sizes

    @property
    def num_replays(self) -> int:
        return self.local.num_replays

    def execute(self, inputs: ModelInputs) -> torch.Tensor:
        """Logits of the step (every rank computes them; rank 0's are used)."""
        self.group.check_workers()
        try:
            return self._execute(inputs)
        except (RuntimeError, dist.DistBackendError) as e:
            # A rank that died mid-step, or a collective that timed out (a hung rank).
            self.group.check_workers(grace=2.0)
            raise EngineDeadError(f"the tensor-parallel group failed during a step: {e}") from e

    def _execute(self, inputs: ModelInputs) -> torch.Tensor:
        layout = inputs.layout
        table = layout.page_table
        header = {
            "op": "step",
            "num_tokens": int(inputs.tokens.shape[0]),
            "num_requests": layout.num_requests,
            "num_logits": int(inputs.logits_indices.shape[0]),
            "width": int(table.shape[1]),
            "num_decode": layout.num_decode,
            "query_lens": layout.query_lens,
            "context_lens": layout.context_lens_host,
            "num_splits": layout.num_splits,
            "logits_rows": [(r.start, r.stop) for r in inputs.logits_rows],
        }
        dist.broadcast_object_list([header], src=0, group=self.group.header_group)
        longs = torch.cat([inputs.tokens, inputs.positions, layout.slot_mapping, inputs.logits_indices])
        ints = torch.cat([layout.query_start, layout.context_lens, table.reshape(-1)])
        dist.broadcast(longs, src=0, group=self.group.tp.group)
        dist.broadcast(ints, src=0, group=self.group.tp.group)
        return self.local.execute(inputs)

    def close(self) -> None:
        """Releases this rank's graphs, stops the other ranks and leaves the group."""
        self.local.close()
        self.group.close()
