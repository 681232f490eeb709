"""The HTTP API while the answer service loads: live at once, ready only when it can answer.

`freshkb serve` binds its port first and builds the service (Weaviate, the embedding model,
the injection screen, the databases) on a thread meanwhile. Until then `/healthz` answers 200,
`/readyz` 503 naming the step under way, and every other route 503 with Retry-After; once
built, every request goes to the real app. A failed build is reported by `/readyz` and ends
the process (`on_failure`), as a failed start did before.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

RETRY_AFTER_SECONDS = 2


@dataclass
class Startup:
    """The build of the real app on a thread: which step it is on, and how it ended."""

    build: Callable[[Startup], ASGIApp]  # calls `step` as it goes
    on_failure: Callable[[BaseException], None] = lambda exc: None
    app: ASGIApp | None = None
    error: BaseException | None = None
    current: str = "starting"
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None  # seconds from start to a built app
    seconds: dict[str, float] = field(default_factory=dict)  # per step, once it has ended
    _step_began: float = field(default_factory=time.monotonic)
    _thread: threading.Thread | None = None
    _begun: threading.Lock = field(default_factory=threading.Lock)

    def step(self, name: str) -> None:
        """Name the step under way (shown by /readyz while starting); the one before ends."""
        now = time.monotonic()
        self.seconds[self.current] = round(now - self._step_began, 3)
        self.current, self._step_began = name, now

    def breakdown(self) -> str:
        """Where the start-up's time went so far, slowest step first."""
        slowest = sorted(self.seconds.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in slowest)

    def begin(self) -> threading.Thread:
        """Start building on a thread of its own (once; later calls return that thread)."""
        with self._begun:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="freshkb-startup", daemon=True
                )
                self._thread.start()
            return self._thread

    def _run(self) -> None:
        try:
            self.app = self.build(self)
            self.ready_after = time.monotonic() - self.started
        except BaseException as exc:  # reported by /readyz, then the process ends
            self.error = exc
            self.on_failure(exc)


class StartingApp:
    """ASGI app that answers for the real one until `startup` has built it."""

    def __init__(self, startup: Startup):
        self.startup = startup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Delegate once built; before that, the probes and a 503 for everything else."""
        app = self.startup.app
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)  # the real app has no start-up or shutdown hooks
        elif app is not None:
            await app(scope, receive, send)
        elif scope["type"] == "http":
            await self._not_yet(scope, send)

    async def _not_yet(self, scope: Scope, send: Send) -> None:
        path = scope.get("path", "")
        waited = round(time.monotonic() - self.startup.started, 1)
        if path == "/healthz":
            await _json(send, 200, {"status": "ok"})
        elif self.startup.error is not None:
            report = {"ready": False, "error": f"start-up failed: {self.startup.error}"}
            await _json(send, 503, report)
        elif path == "/readyz":
            report = {"ready": False, "starting": self.startup.current, "seconds": waited}
            await _json(send, 503, report, retry=True)
        else:
            detail = f"the service is starting ({self.startup.current}, {waited}s so far)"
            await _json(send, 503, {"detail": detail}, retry=True)


async def _json(send: Send, status: int, body: dict[str, Any], retry: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if retry:
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
