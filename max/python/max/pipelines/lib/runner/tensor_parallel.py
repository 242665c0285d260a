"""Tensor-parallel ranks on torch.distributed: starting them, joining them, feeding each step.

Rank 0 is the engine's process: it owns the scheduler, the page tables and the sampler.
The other ranks only run the model on their shard of every layer. Each step, rank 0 sends
the step's layout (a small pickled header, over a gloo group) and its input tensors (one
int64 and one int32 buffer, over the device group: NCCL on GPUs, gloo on the CPU) to the
others, and every rank runs the same forward (the layers' collectives meet inside it).

On one host rank 0 starts the other ranks itself, as child processes. Across hosts every
process is started by torchrun (or with `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`,
`LOCAL_RANK` set by hand): the process with RANK 0 runs the command, the others run
`pipeline_builder.run_tensor_parallel_rank`, which builds its shard and serves steps here.
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
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from max.errors import EngineDeadError, MaxError
from max.kv_cache import PagedKVCache
from max.nn import TensorParallel
from max.pipelines.lib.config import PipelineConfig
from max.pipelines.lib.runner.input_batch import ModelInputs
from max.pipelines.lib.runner.model_runner import ModelRunner

logger = logging.getLogger("max.pipelines")

# An idle rank waits for the next step's header this long (a step's collectives time out
# after the config's `engine_step_timeout`: a dead or hung rank).
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


def join_group(rank: int, world: int, addr: str, port: int, device: torch.device, step_timeout: float) -> RankGroup:
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
        timeout=datetime.timedelta(seconds=step_timeout),
        **({"device_id": device} if device.type == "cuda" else {}),
    )
    headers = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    return RankGroup(TensorParallel(rank, world, dist.group.WORLD), device, headers)


def start_tensor_parallel(config: PipelineConfig, architecture, rank_main: Callable[..., None]) -> RankGroup:
    """Rank 0: starts the other ranks on this host (unless torchrun did) and joins them.
    Each runs `rank_main(config, arch_bytes, rank, size, addr, port, parent_pid)` (the
    builder's `run_tensor_parallel_rank`)."""
    world = config.torchrun
    if world is not None:
        if world.rank != 0:
            raise MaxError("start_tensor_parallel runs on rank 0; other ranks run the rank main")
        return join_group(
            0, world.world_size, world.master_addr, world.master_port, config.device, config.engine_step_timeout
        )
    size = config.tp_size
    devices = config.rank_devices()
    addr, port = "127.0.0.1", _free_port()
    ctx = mp.get_context("spawn")
    arch_bytes = pickle.dumps(architecture)
    workers = []
    for rank in range(1, size):
        proc = ctx.Process(
            target=rank_main,
            args=(config.for_rank(rank), arch_bytes, rank, size, addr, port, os.getpid()),
            name=f"max-tp-rank{rank}",
            daemon=True,
        )
        proc.start()
        workers.append(proc)
    try:
        group = join_group(0, size, addr, port, devices[0], config.engine_step_timeout)
    except Exception:
        for proc in workers:
            proc.terminate()
        raise
    group.workers = workers
    return group


def exit_with_parent(parent: int) -> None:
    """Ends this rank when the process that started it is gone (it cannot tell us)."""

    def watch() -> None:
        import time

        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="max-tp-parent-watch").start()


def receive_header(group: RankGroup) -> list:
    box = [None]
    dist.broadcast_object_list(box, src=0, group=group.header_group)
    return box


def receive_inputs(header: dict, group: RankGroup, kv_cache: PagedKVCache) -> ModelInputs:
    """The step rank 0 sent: one buffer per dtype, cut into the tensors its header lists."""
    device = group.device
    tensors: dict[str, torch.Tensor] = {}
    for dtype_name, entries in header["tensors"].items():
        dtype = getattr(torch, dtype_name)
        buffer = torch.empty(sum(_numel(shape) for _, shape in entries), dtype=dtype, device=device)
        dist.broadcast(buffer, src=0, group=group.tp.group)
        offset = 0
        for name, shape in entries:
            n = _numel(shape)
            tensors[name] = buffer[offset : offset + n].view(shape)
            offset += n
    return ModelInputs.from_wire(header["inputs"], tensors, kv_cache)


def _send_inputs(inputs: ModelInputs, group: RankGroup) -> None:
    """Broadcasts a step: its header (host fields, and each tensor's name and shape by
    dtype) over gloo, then one buffer per dtype over the device group (two for a text
    step: int64 and int32; a step with images adds its embeddings' dtype)."""
    fields, tensors = inputs.to_wire()
    by_dtype: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        by_dtype.setdefault(str(tensor.dtype).removeprefix("torch."), []).append((name, tensor))
    header = {
        "op": "step",
        "inputs": fields,
        "tensors": {d: [(name, tuple(t.shape)) for name, t in entries] for d, entries in by_dtype.items()},
    }
    dist.broadcast_object_list([header], src=0, group=group.header_group)
    for entries in by_dtype.values():
        dist.broadcast(torch.cat([t.reshape(-1) for _, t in entries]), src=0, group=group.tp.group)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class TensorParallelRunner:
    """Rank 0's model runner: builds each step's inputs, sends them to the other ranks, then
    runs its own shard."""

    def __init__(self, local: ModelRunner, group: RankGroup) -> None:
        self.local = local
        self.group = group
        self.model = local.model
        self.kv_cache = local.kv_cache
        self.inputs = local.inputs
        self.prepare = local.prepare
        self.record_draws = local.record_draws
        self.check_images = local.check_images
        self.step_kind = local.step_kind

    @property
    def max_seq_len(self) -> int:
        return self.local.max_seq_len


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
        _send_inputs(inputs, self.group)
        return self.local.execute(inputs)

    def close(self) -> None:
        """Releases this rank's graphs, stops the other ranks and leaves the group."""
        self.local.close()
        self.group.close()
