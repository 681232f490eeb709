"""The LLM answerer: an OpenAI-compatible chat completions client with a circuit breaker.

Production runs vLLM (`vllm serve MODEL --port 8000` exposes /v1/chat/completions); the client
uses only the standard request and response fields, so TGI, llama.cpp's server or a managed
endpoint work the same. Retrieved text goes into the prompt as delimited data blocks, each with
an id the model must cite; what it cites is checked against what was retrieved afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from freshkb.core.config import Settings
from freshkb.core.errors import LLMUnavailable
from freshkb.serving.admission import AdmissionGate, Overloaded
from freshkb.serving.prompting import PROMPT_VERSION, neutralise, quote_as_data, system_prompt

CITATION = re.compile(r"\[(S\d+)\]")
INSUFFICIENT = "INSUFFICIENT"
# An answer is at most a few thousand tokens; a reply beyond this is not one.
MAX_REPLY_BYTES = 1 << 20
# When the answer being computed must be done (time.monotonic()); None: no budget.
_deadline: ContextVar[float | None] = ContextVar("answer_deadline", default=None)
# Shortest call worth starting before the model's pace is known.
MIN_CALL_SECONDS = 1.0


@contextmanager
def answer_deadline(deadline: float | None) -> Iterator[None]:
    """LLM calls made in this block wait and run only until `deadline` (time.monotonic()):
    an answer admitted under load is quoted rather than served past its budget."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk as the answerer sees it: a short label and the chunk's id."""

    label: str  # S1, S2, ... as cited in the answer
    chunk_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Completion:
    """What the model said, the labels it cited, and what it cost."""

    text: str
    cited: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    insufficient: bool
    seconds: float = 0.0  # the call itself, without waiting for a slot: what the GPU spent


class Answerer(Protocol):
    """Writes an answer to a question from passages, citing them by label."""

    def answer(self, question: str, passages: Sequence[Passage], note: str = "") -> Completion:
        """The model's answer; raises LLMUnavailable when it cannot be had."""
        ...


@dataclass
class CircuitBreaker:
    """Opens after `failures` consecutive failures; lets one trial call through after
    `cooldown` seconds, so a dead endpoint is not hammered by every request."""

    failures: int
    cooldown: float
    _consecutive: int = 0
    _opened_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allow(self) -> bool:
        """True if a call may be made now."""
        with self._lock:
            if self._opened_at is None:
                return True
            if time.monotonic() - self._opened_at >= self.cooldown:
                self._opened_at = time.monotonic()  # half-open: one trial, others wait again
                return True
            return False

    def record(self, ok: bool) -> None:
        """Count a call's outcome."""
        with self._lock:
            if ok:
                self._consecutive, self._opened_at = 0, None
                return
            self._consecutive += 1
            if self._consecutive >= self.failures:
                self._opened_at = time.monotonic()

    @property
    def is_open(self) -> bool:
        """True while calls are being refused."""
        return self._opened_at is not None


def build_messages(
    question: str,
    passages: Sequence[Passage],
    note: str = "",
    prompt_version: str = PROMPT_VERSION,
) -> list[dict]:
    """The chat messages: instructions, passages as delimited data, then the question."""
    blocks = "\n\n".join(quote_as_data(p.text, f"{p.label} {p.title}") for p in passages)
    user = f"{blocks}\n\n"
    if note:
        user += f"Note: {note}\n\n"
    user += f"Question: {neutralise(question)}"
    system = system_prompt(prompt_version)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class OpenAICompatibleAnswerer:
    """Calls POST {base_url}/chat/completions of vLLM or any compatible server.

    `outcomes` counts the calls by how they ended (ok, error, timeout, busy, circuit_open) for
    the metrics; the prompt version is checked at start, so a missing one fails there."""

    def __init__(self, settings: Settings, client: httpx.Client | None = None):
        self.base_url = settings.llm_base_url.rstrip("/")
        self.model = settings.llm_model
        self.prompt_version = settings.prompt_version
        system_prompt(self.prompt_version)  # ConfigError now, not on the first question
        self.outcomes: Counter[str] = Counter()
        self._outcomes_lock = threading.Lock()
        self.max_tokens = settings.llm_max_tokens
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = settings.llm_timeout
        self.client = client or httpx.Client(timeout=settings.llm_timeout, headers=headers)
        self.breaker = CircuitBreaker(settings.llm_breaker_failures, settings.llm_breaker_cooldown)
        # Calls beyond the endpoint's capacity wait a little, then the answer quotes instead.
        self.slots = AdmissionGate(
            "LLM", settings.llm_concurrency, waiting=1_000, wait_seconds=settings.llm_queue_seconds
        )
        self.call_seconds: float | None = None  # moving average of good calls

    def answer(self, question: str, passages: Sequence[Passage], note: str = "") -> Completion:
        """The model's answer with the labels it cited; LLMUnavailable on any failure, or when
        no call slot frees up within `llm_queue_seconds` or in time for the answer's deadline
        (`answer_deadline`)."""
        deadline = _deadline.get()
        wait = self.slots.wait_seconds
        if deadline is not None:
            # Wait for a slot only while a call of the usual length still fits the budget.
            wait = min(wait, deadline - time.monotonic() - self._usual_call_seconds())
            if wait < 0:
                self._tally("budget")
                raise LLMUnavailable(
                    "no time left in the answer's budget for an LLM call "
                    f"(one takes about {self._usual_call_seconds():.1f}s now)"
                )
        try:
            with self.slots.admit(wait):
                return self._call(question, passages, note, deadline)
        except Overloaded as exc:
            self._tally("busy")
            raise LLMUnavailable(f"LLM busy ({exc})") from exc

    def _usual_call_seconds(self) -> float:
        """How long a call has lately taken (a moving average), at least MIN_CALL_SECONDS."""
        return max(MIN_CALL_SECONDS, self.call_seconds or 0.0)

    def _call(
        self, question: str, passages: Sequence[Passage], note: str, deadline: float | None
    ) -> Completion:
        """One chat completion, through the circuit breaker, cut off at `deadline`."""
        if not self.breaker.allow():
            self._tally("circuit_open")
            raise LLMUnavailable(
                f"LLM endpoint {self.base_url} failed repeatedly; circuit open, retrying later"
            )
        payload = {
            "model": self.model,
            "messages": build_messages(question, passages, note, self.prompt_version),
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        started = time.perf_counter()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if left is not None and left < self.timeout:
            return self._call_within_budget(payload, left, started)
        try:
            completion = parse_completion(self._post(payload))
        except LLMUnavailable as exc:
            self.breaker.record(False)
            timed_out = isinstance(exc.__cause__, httpx.TimeoutException)
            self._tally("timeout" if timed_out else "error")
            raise LLMUnavailable(f"LLM endpoint {self.base_url} {exc}") from exc
        return self._succeeded(completion, started)

    def _call_within_budget(
        self, payload: dict[str, Any], timeout: float, started: float
    ) -> Completion:
        """A call cut short by the answer's budget: running out of it is not the endpoint's
        failure, so the breaker does not count it."""
        try:
            completion = parse_completion(self._post(payload, timeout))
        except LLMUnavailable as exc:
            if isinstance(exc.__cause__, httpx.TimeoutException):
                self._tally("budget")
                raise LLMUnavailable(f"LLM endpoint {self.base_url} {exc} (answer budget)") from exc
            self.breaker.record(False)
            self._tally("error")
            raise LLMUnavailable(f"LLM endpoint {self.base_url} {exc}") from exc
        return self._succeeded(completion, started)

    def _succeeded(self, completion: Completion, started: float) -> Completion:
        """Count a good reply and learn the pace of calls."""
        seconds = time.perf_counter() - started
        self.breaker.record(True)
        self._tally("ok")
        with self._outcomes_lock:
            previous = self.call_seconds
            self.call_seconds = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        return dataclasses.replace(completion, seconds=seconds)

    def _post(self, payload: dict[str, Any], timeout: float | None = None) -> bytes:
        """The reply's body; LLMUnavailable on a timeout, an error status, a connection
        failure or a reply too large to be an answer."""
        # httpx's timeout bounds each read, not the whole reply: a server trickling bytes
        # would hold the request forever, so the whole exchange has its own deadline.
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            url = f"{self.base_url}/chat/completions"
            with self.client.stream("POST", url, json=payload, timeout=timeout) as r:
                if not r.is_success:
                    raise LLMUnavailable(f"answered HTTP {r.status_code} {r.reason_phrase}")
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_REPLY_BYTES:
                        raise LLMUnavailable(f"sent a reply over {MAX_REPLY_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("reply still arriving at the deadline")
                return bytes(body)
        except httpx.TimeoutException as exc:
            raise LLMUnavailable(f"timed out after {timeout:g}s ({exc})") from exc
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"failed: {type(exc).__name__}: {exc}") from exc

    def _tally(self, outcome: str) -> None:
        """Count one call's outcome (calls end on several threads at once)."""
        with self._outcomes_lock:
            self.outcomes[outcome] += 1

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.client.close()


def parse_completion(body: bytes) -> Completion:
    """A chat completion reply as a Completion; LLMUnavailable when it holds no answer (an
    empty body, not JSON, another shape, or empty text), so nothing but text reaches a user."""
    if not body.strip():
        raise LLMUnavailable("sent an empty body")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise LLMUnavailable(f"sent a reply that is not JSON (starts {body[:40]!r})") from exc
    content = _content(data)
    if not isinstance(content, str):
        raise LLMUnavailable(
            "sent JSON without a text answer at choices[0].message.content "
            f"(found {type(content).__name__})"
        )
    text = content.strip()
    if not text:
        raise LLMUnavailable("sent an empty answer")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return Completion(
        text=text,
        cited=tuple(dict.fromkeys(CITATION.findall(text))),
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        insufficient=text.upper().startswith(INSUFFICIENT),
    )


def _content(data: Any) -> Any:
    """choices[0].message.content of a reply, or None when the reply has another shape."""
    choices = data.get("choices") if isinstance(data, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    return message.get("content") if isinstance(message, dict) else None


def _count(value: Any) -> int:
    """A token count as reported, 0 when it is missing or not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
