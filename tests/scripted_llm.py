"""A scripted OpenAI-compatible chat server for tests of the answer checks.

The real test LLM (SmolLM2-135M) is too small to answer from passages reliably, so the path
where a model answers correctly, or misbehaves in one specific way, is driven by this server:
a real HTTP server on loopback speaking the chat completions protocol, whose "model" copies
the passage sentence that best matches the question and cites it. The model name picks a
behaviour: `grounded`, `invalid-citation` (adds a claim citing a passage that was not given),
`unsupported` (adds a cited claim the passage does not contain), `leak` (adds another
customer's e-mail), `insufficient`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = re.compile(r'<retrieved_data source="(S\d+)[^"]*">\n(.*?)\n</retrieved_data>', re.S)
WORD = re.compile(r"[a-z0-9]+")


def scripted_answer(model: str, prompt: str) -> str:
    """The scripted model's reply to the user message of a freshkb prompt."""
    if model == "insufficient":
        return "INSUFFICIENT"
    question = prompt.rsplit("Question:", 1)[-1]
    asked = set(WORD.findall(question.lower()))
    best = ("", "S1", -1)
    for label, text in BLOCK.findall(prompt):
        for sentence in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")):
            overlap = len(asked & set(WORD.findall(sentence.lower())))
            if overlap > best[2]:
                best = (sentence.strip(), label, overlap)
    answer = f"{best[0]} [{best[1]}]"
    if model == "invalid-citation":
        answer += " Returns are free for members [S9]."
    if model == "unsupported":
        answer += f" Every order also ships free to Mars within one hour [{best[1]}]."
    if model == "leak":
        answer += f" You can also write to alan.turing@example.com [{best[1]}]."
    return answer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "grounded", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        text = scripted_answer(body.get("model", "grounded"), prompt)
        self._send(
            {
                "id": "scripted",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(text.split()),
                    "total_tokens": len(prompt.split()) + len(text.split()),
                },
            }
        )

    def _send(self, data: dict) -> None:
        payload = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        """Quiet: tests read results, not access logs."""


@contextmanager
def scripted_llm_server(port: int) -> Iterator[str]:
    """Serve the scripted model on 127.0.0.1:`port`; yields its /v1 base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.shutdown()
        server.server_close()
