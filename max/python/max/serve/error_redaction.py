"""Keeping the server's internals out of what clients read.

Server-side failures (5xx bodies, `/health` details) may carry text from exceptions of
libraries (torch, gloo, the OS) that name files and lines; clients get the message with
such paths replaced and any traceback cut off, and the log keeps the whole story.
"""

from __future__ import annotations

import re

# An absolute POSIX path with at least two components, or a Windows drive path.
_PATH = re.compile(r"(?<![\w.])(?:/[\w.@+~-]+){2,}/?|\b[A-Za-z]:\\[^\s'\"]+")
_TRACEBACK = "Traceback (most recent call last)"
MAX_MESSAGE_CHARS = 500


def redact(message: str) -> str:
    """`message` without file paths or a traceback, and at most MAX_MESSAGE_CHARS long."""
    message = message.split(_TRACEBACK, 1)[0].rstrip()
    message = _PATH.sub("<path>", message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return message
