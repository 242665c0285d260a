"""Running steps on a device: the `ModelRunner` owns the step (its `InputBatchBuilder` turns
the scheduler's chunks into device inputs, then the step runs eagerly or replays a CUDA
graph); `tensor_parallel` spreads it over ranks; `device_transfer` uploads host arrays
without stalling.
"""
