"""Measurement hook for the device suite (not part of the product): with MAX_STEP_STATS_DIR
set and this folder on PYTHONPATH, the `serve` engine process records every step
(max.benchmark.step_stats.StepRecorder) and writes the summary to
$MAX_STEP_STATS_DIR/steps-<pid>.json when its step loop ends."""

import os
import sys

if os.environ.get("MAX_STEP_STATS_DIR"):
    import importlib.abc
    import importlib.util

    _TARGET = "max.serve.engine_worker"

    def _patch(module):
        original = module._serve

        def _serve(engine, *args, **kwargs):
            import json

            from max.benchmark.step_stats import StepRecorder

            recorder = StepRecorder(engine)
            engine.step = recorder.step
            try:
                return original(engine, *args, **kwargs)
            finally:
                try:
                    path = os.path.join(os.environ["MAX_STEP_STATS_DIR"], f"steps-{os.getpid()}.json")
                    with open(path, "w") as f:
                        json.dump(recorder.summarize(), f)
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
