"""The engine process: runs `LLMEngine.step()` in a loop, fed by the HTTP process.

It owns the model and the KV cache. Between steps it drains its inbox (new requests,
aborts) so requests join and leave the running batch at step boundaries; when idle it
blocks on the inbox. It ignores SIGINT (the server decides when to stop) and exits if its
parent process dies.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import traceback
from multiprocessing.queues import Queue

from max.errors import EngineDeadError, MaxError
from max.pipelines.lib import PipelineConfig, RequestOutput
from max.serve.engine_messages import (
    AbortRequest,
    AddRequest,
    EngineFailed,
    EngineReady,
    Shutdown,
    StepOutputs,
)

logger = logging.getLogger("max.serve.engine")


def run_engine_worker(config: PipelineConfig, inbox: Queue, outbox: Queue) -> None:
    """Process entry point: build the engine, then serve the inbox until Shutdown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parent = os.getppid()
    try:
        from max.pipelines.architectures import register_all
        from max.pipelines.lib import build_engine, resolve_model

        engine = build_engine(resolve_model(config, register_all()))
    except MaxError as e:
        outbox.put(EngineFailed(str(e)))
        return
    except Exception as e:  # anything else is a bug or the machine (out of memory...)
        traceback.print_exc()
        outbox.put(EngineFailed(f"{type(e).__name__}: {e}"))
        return
    stats = engine.stats()
    outbox.put(EngineReady(engine.max_seq_len, engine.vocab_size, stats.kv_pages_total))
    try:
        _serve(engine, inbox, outbox, parent)
    except EngineDeadError as e:
        traceback.print_exc()
        outbox.put(EngineFailed(str(e)))
    finally:
        engine.close()


def _serve(engine, inbox: Queue, outbox: Queue, parent: int) -> None:
    """Steps the engine while there is work; applies the inbox between steps."""
    while True:
        produced: list[RequestOutput] = []
        handled = _drain_inbox(inbox, engine, produced, block=not engine.has_unfinished())
        if handled is None:
            return  # Shutdown
        if engine.has_unfinished():
            try:
                produced.extend(engine.step())
            except EngineDeadError as e:
                for request_id in engine.request_ids():
                    engine.abort(request_id)
                    produced.append(RequestOutput(request_id, [], True, "error", error=f"engine error: {e}", server_error=True))
                outbox.put(StepOutputs(produced, engine.stats()))
                raise
            except Exception as e:
                # A failed step must not take the server down: fail the running requests.
                traceback.print_exc()
                for request_id in engine.request_ids():
                    engine.abort(request_id)
                    produced.append(
                        RequestOutput(request_id, [], True, "error", error=f"engine error: {e}", server_error=True)
                    )
            handled = True
        if handled:
            outbox.put(StepOutputs(produced, engine.stats()))
        elif os.getppid() != parent:
            return  # orphaned: the server is gone


def _drain_inbox(inbox: Queue, engine, produced: list[RequestOutput], block: bool) -> bool | None:
    """Applies every waiting message; waits up to a second for one when idle.

    Returns None on Shutdown, else whether any message was handled.
    """
    handled = False
    try:
        message = inbox.get(timeout=1.0) if block else inbox.get_nowait()
    except queue.Empty:
        return False
    while True:
        if isinstance(message, Shutdown):
            return None
        if isinstance(message, AddRequest):
            try:
                engine.add_request(message.request_id, message.prompt_ids, message.params)
            except MaxError as e:
                produced.append(RequestOutput(message.request_id, [], True, "error", error=str(e)))
        elif isinstance(message, AbortRequest):
            out = engine.abort(message.request_id)
            if out is not None:
                produced.append(out)
        handled = True
        try:
            message = inbox.get_nowait()
        except queue.Empty:
            return handled
