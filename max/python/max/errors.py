"""The one exception type that means "the user gave us something we cannot use".

Anything raised as a `MaxError` is reported by the command-line tools as a single line
(`error: ...`) with a non-zero exit, and by the server as a 4xx response: its message must
say what was wrong and, where it helps, which file, tensor or flag.
"""


class MaxError(Exception):
    """An error caused by input (a flag, a file, a request), reported without a traceback."""


class EngineDeadError(MaxError):
    """The engine cannot go on (a tensor-parallel rank died or stopped answering): requests
    in flight fail and the engine stops, rather than failing every later step."""
