"""The engine process: runs `LLMEngine.step()` in a loop, fed by the HTTP process.

It owns the model and the KV cache. Between steps it drains its inbox (new requests,
aborts) so requests join and leave the running batch at step boundaries; when idle it
blocks on the inbox. It ignores SIGINT (the server decides when to stop) and exits if its
parent process dies.

A step that raises fails and drops every request in the engine (the engine cannot tell
which one broke the step, and a request retried with the same inputs would break it
again), then a one-token probe request checks that the engine still steps. If the probe
fails too, or a tensor-parallel rank is gone, the worker reports `EngineFailed` and exits:
the server's supervisor restarts the process. A step that makes no progress for the
config's `engine_step_timeout` (a hung kernel, a deadlock) cannot be interrupted: the
`StepWatchdog` reports `EngineFailed` and ends the process, with the same outcome.

With `step_stats_dir` set (`serve --step-stats-dir DIR`) the engine's steps are recorded
(`max.pipelines.lib.engine.step_recorder`) and written to DIR/steps-PID.json when the loop ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from multiprocessing.queues import Queue

from max.errors import EngineDeadError, MaxError
from max.pipelines.lib import PipelineConfig, RequestOutput, SamplingParams
from max.pipelines.lib.engine.step_recorder import StepRecorder
from max.serve.engine_messages import (
    AbortRequest,
    AddRequest,
    EngineFailed,
    EngineReady,
    LoRAAdapterOp,
    Shutdown,
    StepOutputs,
)
from max.serve.lora_engine_op import apply_lora_op, finished_lora_ops, lora_reading

logger = logging.getLogger("max.serve.engine")

PROBE_REQUEST_ID = "max-engine-probe"
PROBE_MAX_STEPS = 8  # a one-token request finishes in two steps (asynchronous scheduling)


class StepWatchdog:
    """Ends the engine process when one step runs longer than `timeout` seconds: it puts
    `EngineFailed` in the outbox (the server fails the requests in flight and restarts the
    engine) and exits, since a hung step cannot be interrupted from Python."""

    def __init__(self, timeout: float, outbox: Queue) -> None:
        self.timeout = timeout
        self.outbox = outbox
        self._started: float | None = None
        thread = threading.Thread(target=self._watch, name="max-step-watchdog", daemon=True)
        thread.start()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Marks the enclosed code as one step."""
        self._started = time.monotonic()
        try:
            yield
        finally:
            self._started = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            started = self._started
            if started is not None and time.monotonic() - started > self.timeout:
                message = f"an engine step made no progress for {self.timeout:g} s (--engine-step-timeout)"
                logger.error("%s: ending the engine process", message)
                self.outbox.put(EngineFailed(message))
                self.outbox.close()
                self.outbox.join_thread()  # the message must leave before the process does
                os._exit(3)


def run_engine_worker(
    config: PipelineConfig, inbox: Queue, outbox: Queue, step_stats_dir: str | None = None
) -> None:
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
    report = getattr(engine.model, "memory_report", None)
    memory = report.components() if report is not None else {}
    outbox.put(EngineReady(engine.max_seq_len, engine.vocab_size, stats.kv_pages_total, memory, stats))
    recorder = StepRecorder(engine) if step_stats_dir else None
    try:
        _serve(engine, inbox, outbox, parent, StepWatchdog(config.engine_step_timeout, outbox))
    except EngineDeadError as e:
        traceback.print_exc()
        outbox.put(EngineFailed(str(e)))
    finally:
        if recorder is not None:
            try:
                logger.info("step stats written to %s", recorder.write(step_stats_dir))
            except Exception as e:  # a measurement aid: never break the engine's exit
                logger.warning("step stats not written: %s", e)
        engine.close()


def _serve(engine, inbox: Queue, outbox: Queue, parent: int, watchdog: StepWatchdog) -> None:
    """Steps the engine while there is work; applies the inbox between steps."""
    while True:
        produced: list[RequestOutput] = []
        handled = _drain_inbox(inbox, engine, produced, block=not engine.has_unfinished() and not lora_reading(engine))
        if handled is None:
            return  # Shutdown
        loaded = finished_lora_ops(engine, idle=not engine.has_unfinished())
        if loaded:
            produced.extend(loaded)
            handled = True
        if engine.has_unfinished():
            try:
                with watchdog.step():
                    produced.extend(engine.step())
            except EngineDeadError as e:
                produced.extend(_fail_all(engine, f"engine error: {e}"))
                outbox.put(StepOutputs(produced, engine.stats()))
                raise
            except Exception as e:
                produced.extend(_drop_failed_step(engine, e))
                outbox.put(StepOutputs(produced, engine.stats()))
                produced = []
                _probe(engine, e)
            handled = True
        if handled:
            outbox.put(StepOutputs(produced, engine.stats()))
        elif os.getppid() != parent:
            return  # orphaned: the server is gone


def _fail_all(engine, message: str) -> list[RequestOutput]:
    """Aborts every request in the engine; returns their error outputs."""
    failed = []
    for request_id in engine.request_ids():
        engine.abort(request_id)
        failed.append(RequestOutput(request_id, [], True, "error", error=message, server_error=True))
    return failed


def _drop_failed_step(engine, error: Exception) -> list[RequestOutput]:
    """After a step raised: fails and drops every request in the engine."""
    request_ids = engine.request_ids()
    logger.error(
        "an engine step failed; failing and dropping its %d request(s) %s",
        len(request_ids),
        request_ids[:8],
        exc_info=error,
    )
    # The client reads the kind of failure; the log keeps the details (paths, tracebacks).
    message = f"the engine failed while running this request ({type(error).__name__}); the request was dropped"
    return _fail_all(engine, message)


def _probe(engine, cause: Exception) -> None:
    """Runs a one-token request; raises EngineDeadError if the engine cannot (then the
    engine, not a request, is broken)."""
    try:
        engine.add_request(PROBE_REQUEST_ID, [0], SamplingParams(max_new_tokens=1, temperature=0.0))
        for _ in range(PROBE_MAX_STEPS):
            if any(out.request_id == PROBE_REQUEST_ID and out.finished for out in engine.step()):
                return
        raise RuntimeError(f"the probe request did not finish in {PROBE_MAX_STEPS} steps")
    except Exception as e:
        engine.abort(PROBE_REQUEST_ID)
        logger.error("the engine does not step any more after a failed step", exc_info=e)
        raise EngineDeadError(
            f"the engine does not run steps any more (a step failed with {type(cause).__name__}, "
            f"then a probe request with {type(e).__name__})"
        ) from e


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
                engine.add_request(
                    message.request_id, message.prompt_ids, message.params, images=message.images, lora=message.lora
                )
            except MaxError as e:
                produced.append(RequestOutput(message.request_id, [], True, "error", error=str(e)))
            except Exception as e:  # a bug: fail this request, keep the engine
                logger.error("adding request %s failed", message.request_id, exc_info=e)
                error = f"the engine could not take this request ({type(e).__name__})"
                produced.append(RequestOutput(message.request_id, [], True, "error", error=error, server_error=True))
        elif isinstance(message, LoRAAdapterOp):
            answer = apply_lora_op(engine, message)
            if answer is not None:
                produced.append(answer)
        elif isinstance(message, AbortRequest):
            out = engine.abort(message.request_id)
            if out is not None:
                produced.append(out)
        handled = True
        try:
            message = inbox.get_nowait()
        except queue.Empty:
            return handled
