"""Host-to-device copies that do not stall the host.

A plain `torch.tensor(list, device="cuda")` copies from pageable memory, which makes the
host wait until the GPU has finished everything queued before the copy: the step loop could
then never run ahead of the GPU. Copies here go through pinned (page-locked) memory and are
asynchronous; the CUDA stream orders them before the kernels that read them.
"""

from __future__ import annotations

import numpy as np
import torch


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """`array` as a tensor on `device`, copied without waiting for the device."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor if device.type == "cpu" else tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class HostCopy:
    """Device tensors being copied back to pinned host memory, to be read once ready.

    `start` queues the copies behind the kernels that produce the tensors and returns at
    once; `wait` blocks until they have landed (the step's one host synchronisation).
    """

    def __init__(self, tensors: list[torch.Tensor | None]) -> None:
        self._event = None
        if tensors and any(t is not None and t.is_cuda for t in tensors):
            self.host = [
                None if t is None else torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                for t in tensors
            ]
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self.host = tensors

    def wait(self) -> list[torch.Tensor | None]:
        """The host copies, once complete."""
        if self._event is not None:
            self._event.synchronize()
        return self.host
