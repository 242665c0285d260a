"""How every command of the project starts and ends: the `pipelines` CLI, the benchmarks,
the verification tools and the kernel benches all run their `main` through `run_main`.

Starting, a command
- works in the caller's directory: `bazel run` starts it in the runfiles tree and names the
  user's directory in BUILD_WORKING_DIRECTORY, and users mean paths relative to their shell;
- keeps tokenizers single-threaded (TOKENIZERS_PARALLELISM=false unless set): the engine
  and the server fork worker processes, and a forked Rust thread pool warns and may hang;
- reaches the Hugging Face Hub (online, as MAX and vLLM are) unless the tool asks to stay
  offline by default (HF_HUB_OFFLINE=1 unless set), as tools that reproduce reference runs do;
- logs to stderr in one format, with the chatty third-party loggers turned down.

Ending, an input error (`MaxError`) is one `error:` line on stderr and exit status 1,
Ctrl-C is status 130 without a traceback, and a closed stdout pipe (`| head`) is status 0.

Nothing here imports the engine, the server or the kernels: the lightest tool can use it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from max.errors import MaxError

LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def prepare_process(*, hub_offline: bool = False, log_level: int = logging.WARNING) -> None:
    """Sets up the process of a command before it reads its inputs (see the module doc).

    Args:
        hub_offline: make HF_HUB_OFFLINE=1 the default (an explicit setting still wins).
        log_level: the level of the project's own log lines: WARNING for tools, whose
            output is their report; the `pipelines` CLI reports its progress at INFO.
    """
    cwd = os.environ.get("BUILD_WORKING_DIRECTORY")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if hub_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per Hub request otherwise
    try:
        from huggingface_hub.utils import logging as hub_logging
        from transformers.utils import logging as hf_logging
    except ImportError:  # the kernel benches run where transformers may be missing
        return
    hf_logging.set_verbosity_error()
    hub_logging.disable_propagation()  # it prints its warnings itself; not twice


def run_main(
    main: Callable[..., int | None],
    *args: object,
    hub_offline: bool = False,
    log_level: int = logging.WARNING,
) -> int:
    """Prepares the process, runs `main(*args)` and returns its exit status (see the
    module doc for the statuses of errors, Ctrl-C and a closed pipe)."""
    prepare_process(hub_offline=hub_offline, log_level=log_level)
    try:
        return int(main(*args) or 0)
    except MaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
