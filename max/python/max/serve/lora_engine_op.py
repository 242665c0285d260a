"""The engine process's side of `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`:
applying a `LoRAAdapterOp` to the engine's adapter registry between two steps."""

from __future__ import annotations

import logging

from max.errors import MaxError
from max.pipelines.lib import RequestOutput
from max.serve.engine_messages import LoRAAdapterOp

logger = logging.getLogger("max.serve.engine")


def apply_lora_op(engine, op: LoRAAdapterOp) -> RequestOutput | None:
    """Unloads an adapter, or starts loading one (read in the background while the engine
    steps: `finished_lora_ops` answers it); the answer is a finished output of the op's id,
    with the error a client may read when it failed. Running requests are not touched: an
    unloaded adapter's requests finish on it."""
    try:
        if engine.lora is None:
            raise MaxError("LoRA adapters are not enabled on this server (start it with --enable-lora)")
        if op.path is None:
            engine.lora.remove(op.name)
        else:
            engine.lora.start_add(op.name, op.path, op.op_id)
            return None
    except MaxError as e:
        return RequestOutput(op.op_id, [], True, "error", error=str(e))
    except Exception as e:  # a bug or the machine: report it, keep the engine
        logger.error("LoRA adapter operation on %r failed", op.name, exc_info=e)
        return RequestOutput(op.op_id, [], True, "error", error=f"the engine could not apply it ({type(e).__name__})", server_error=True)
    return RequestOutput(op.op_id, [], True, "stop")


def lora_reading(engine) -> bool:
    """Adapters are being read in the background (the loop must not sleep on its inbox)."""
    return engine.lora is not None and engine.lora.reading


def finished_lora_ops(engine, idle: bool) -> list[RequestOutput]:
    """The answers of the loads whose adapters were read since the last call (an idle
    engine waits a few milliseconds for one instead of spinning)."""
    if not lora_reading(engine):
        return []
    done = engine.lora.finish_adds(timeout=0.01 if idle else 0.0)
    return [RequestOutput(token, [], True, "error" if error else "stop", error=error) for token, error in done]
