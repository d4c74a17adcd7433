"""`BackgroundServer`: an app under uvicorn in a daemon thread, for tests, notebooks and in-process benchmarks.

It binds port 0 (the OS picks a free one) so that several can run at once, and
:meth:`BackgroundServer.start` returns once the socket listens (and, by
default, once ``/health`` says the model is loaded), with a deadline.
"""
from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI


class BackgroundServer:
    """Serve ``app`` on ``host`` in a thread; ``url`` once started."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1"):
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="llmkit-serve", daemon=True)
        self.url = ""

    def start(self, wait_ready: bool = True, timeout: float = 60) -> BackgroundServer:
        """Start; wait until it listens and (``wait_ready``) until ``/health`` is 200, at most ``timeout`` s.

        Raises:
            TimeoutError: it did not start or load in time.
        """
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise TimeoutError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        while wait_ready and httpx.get(f"{self.url}/health").status_code != 200:
            if time.time() > deadline:
                raise TimeoutError("the model did not load")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 20) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
