"""A faulty OpenAI-compatible chat server for the LLM fault tests.

A real HTTP server on loopback that misbehaves in one chosen way, switchable while it runs,
and counts the completions it is asked for (so a test can tell that an open circuit breaker
kept requests from reaching it). Modes:

- `slow`: answers correctly, but only after `delay` seconds (set it past the client's timeout);
- `trickle`: sends a correct reply one byte at a time, `delay` seconds apart in all;
- `error`: HTTP 500 with an error body;
- `not-json`: HTTP 200 with a body that is not JSON;
- `html`: HTTP 200, `text/html`, a proxy's error page;
- `wrong-shape`: HTTP 200 JSON without `choices[0].message.content`;
- `empty-body`: HTTP 200 with no body at all;
- `empty-content`: HTTP 200, a well-formed completion whose content is blank;
- `hang-up`: closes the connection without answering;
- `healthy`: a grounded answer, like tests/scripted_llm.py's `grounded` model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scripted_llm import scripted_answer

FAULTS = (
    "slow",
    "trickle",
    "error",
    "not-json",
    "html",
    "wrong-shape",
    "empty-body",
    "empty-content",
    "hang-up",
)


@dataclass
class FaultyLLM:
    """The server's switchable behaviour and what it has been asked."""

    base_url: str
    mode: str = "healthy"
    delay: float = 3.0
    _completions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def completions(self) -> int:
        """Chat completion requests received so far (whatever the mode answered)."""
        with self._lock:
            return self._completions

    def count(self) -> None:
        """Count one completion request."""
        with self._lock:
            self._completions += 1


def completion(text: str) -> dict:
    """A well-formed chat completion carrying `text`."""
    return {
        "id": "faulty",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())},
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._send(200, json.dumps({"object": "list", "data": [{"id": "faulty"}]}).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length))
        state = self.server.state
        state.count()
        mode = state.mode
        healthy = json.dumps(
            completion(scripted_answer("grounded", body["messages"][-1]["content"]))
        ).encode()
        if mode == "slow":
            time.sleep(state.delay)
            self._send(200, healthy)
        elif mode == "trickle":
            self._trickle(healthy, state.delay)
        elif mode == "error":
            self._send(500, b'{"error": {"message": "model crashed", "type": "server_error"}}')
        elif mode == "not-json":
            self._send(200, b"upstream returned: <<binary \x00\xff garbage>>")
        elif mode == "html":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self._send(200, page, "text/html")
        elif mode == "wrong-shape":
            self._send(200, json.dumps({"result": "ok", "choices": [{"text": "hi"}]}).encode())
        elif mode == "empty-body":
            self._send(200, b"")
        elif mode == "empty-content":
            self._send(200, json.dumps(completion("  \n ")).encode())
        elif mode == "hang-up":
            self.close_connection = True
            self.connection.close()
        else:
            self._send(200, healthy)

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _trickle(self, payload: bytes, seconds: float) -> None:
        """The whole reply, spread over `seconds`: each read is quick, the reply is not."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        pause = seconds / len(payload)
        try:
            for byte in payload:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(pause)
        except OSError:  # the client gave up: that is the point
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        """Quiet: tests read the request count, not access logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a sleeping `slow` reply must not hold the test run open
    state: FaultyLLM

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that gave up on a slow reply is what the faults are for."""


@contextmanager
def faulty_llm_server(port: int) -> Iterator[FaultyLLM]:
    """Serve the faulty model on 127.0.0.1:`port` (healthy until a test sets `mode`)."""
    server = _Server(("127.0.0.1", port), _Handler)
    server.state = FaultyLLM(base_url=f"http://127.0.0.1:{port}/v1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
