"""Helpers of the client tests: the API served over real HTTP, so the client talks to it as users do."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from service.api.app import create_app
from service.core.settings import Settings


class LiveServer:
    """The API of `settings` served by uvicorn on 127.0.0.1:<a free port>, in a thread of this process.

    It shares the database and broker of the fixture's settings, so that fixture's worker runs the jobs.
    """

    def __init__(self, settings: Settings) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # uvicorn's own flag: the socket accepts connections
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
