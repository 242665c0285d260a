"""Running the server's ASGI app with uvicorn on a local port, in a thread of the test.

For HTTP tests that need a real socket (the official `openai` client, streaming) but an
engine the test controls, such as `FakeEngine`: the test keeps a handle on the engine and
reads what each request brought.
"""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from max.testing.server_process import free_port


class AppServer:
    """`app` served on 127.0.0.1 until `stop()` (or the end of a `with` block)."""

    def __init__(self, app, startup_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="app-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the app server did not start on {self.url}")
            time.sleep(0.05)

    def get(self, path: str, **kwargs) -> httpx.Response:
        """GET a path of the server."""
        return httpx.get(f"{self.url}{path}", timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, body: dict, **kwargs) -> httpx.Response:
        """POST a JSON body to a path of the server."""
        return httpx.post(f"{self.url}{path}", json=body, timeout=kwargs.pop("timeout", 30), **kwargs)

    def stop(self) -> None:
        """Stops serving and waits for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
