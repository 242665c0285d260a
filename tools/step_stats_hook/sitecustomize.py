"""Measurement hook for the device suite (not part of the product): with MAX_STEP_STATS_DIR
set and this folder on PYTHONPATH, the `serve` engine process records every step
(max.benchmark.step_stats.StepRecorder) and writes the summary to
$MAX_STEP_STATS_DIR/steps-<pid>.json when its step loop ends."""

import os
import sys

if os.environ.get("MAX_STEP_STATS_DIR"):
    import importlib.abc
    import importlib.util
    import time

    _TARGET = "max.serve.engine_worker"

    def _timed(function, totals, key):
        """`function`, adding its calls' milliseconds to totals[key]."""

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[key] = totals.get(key, 0.0) + 1000 * (time.perf_counter() - t0)
                totals[key + "_calls"] = totals.get(key + "_calls", 0) + 1

        return timed

    class _TimedOutbox:
        """The engine's outbox, its put() timed (what the loop pays to send each step), and
        the wall-clock time of each message that finishes requests (with how many)."""

        def __init__(self, outbox, totals, finished):
            self._outbox = outbox
            self._put = _timed(outbox.put, totals, "outbox_put_ms")
            self._finished = finished

        def put(self, message, *args, **kwargs):
            done = sum(1 for o in getattr(message, "outputs", ()) if o.finished)
            if done:
                self._finished.append((round(time.time(), 4), done))
            return self._put(message, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._outbox, name)

    def _patch(module):
        original = module._serve
        loop_totals = {}
        module._drain_inbox = _timed(module._drain_inbox, loop_totals, "drain_inbox_ms")

        def _serve(engine, inbox, outbox, *args, **kwargs):
            import json

            from max.benchmark.step_stats import StepRecorder

            recorder = StepRecorder(engine)
            engine.step = recorder.step
            engine.stats = _timed(engine.stats, loop_totals, "stats_ms")
            arrivals, finished = [], []
            add_request = engine.add_request

            def timed_add(*a, **k):
                arrivals.append(round(time.time(), 4))
                return add_request(*a, **k)

            engine.add_request = timed_add
            try:
                return original(engine, inbox, _TimedOutbox(outbox, loop_totals, finished), *args, **kwargs)
            finally:
                try:
                    path = os.path.join(os.environ["MAX_STEP_STATS_DIR"], f"steps-{os.getpid()}.json")
                    with open(path, "w") as f:
                        json.dump({**recorder.summarize(), "serve_loop": loop_totals, "arrivals": arrivals, "finished": finished}, f)
                except Exception as e:  # a measurement aid: never break the server's exit
                    print(f"step stats not written: {e}", file=sys.stderr)

        module._serve = _serve

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != _TARGET:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            sys.meta_path.insert(0, self)
            loader = spec.loader
            exec_module = loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _Finder())
