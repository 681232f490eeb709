"""Answer-service latency: p50/p95 of /v1/search and /v1/answer, LLM excluded and included.

    .venv/bin/python bench/answer_bench.py [--requests N] [--json]

Ingests the bundled sample (sample/) into a throw-away data directory and a Weaviate on ports
28080/25051, starts the test LLM server (llama.cpp, SmolLM2-135M) on 28091 and the HTTP API on
28088, then times real HTTP requests one at a time:
- search: GET /v1/search (embed + hybrid search over fresh sources);
- answer, LLM excluded: POST /v1/answer with the LLM endpoint unreachable and its circuit open,
  so the answer is the quoted (extractive) one: everything but generation;
- answer, LLM included: POST /v1/answer against the LLM server.
Prints the figures side by side, and the ratio of each to search.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import use_throwaway_environment  # noqa: E402

QUESTIONS = [
    "Can I return boots I have not worn?",
    "How long does shipping take?",
    "What does the warranty cover?",
    "How do I rent a tent?",
    "Do you match prices from other stores?",
    "What are the membership tiers?",
    "How should I clean a down jacket?",
    "Is there a fee for returning opened electronics?",
]
TOKEN = "bench-token"


def percentile(values: list[float], share: float) -> float:
    """The value below which `share` of the values fall (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def serve(app: Any, port: int) -> Any:
    """Run the FastAPI app under uvicorn in a thread; returns the server."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def timed_requests(call: Any, count: int) -> tuple[list[float], list[str]]:
    """Latencies in ms of `count` calls, and the answer modes seen."""
    latencies, modes = [], []
    for number in range(count):
        started = time.perf_counter()
        response = call(QUESTIONS[number % len(QUESTIONS)])
        latencies.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        modes.append(response.json().get("mode", "-"))
    return latencies, modes


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per endpoint")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="freshkb-answer-bench-"))
    use_throwaway_environment(work, ROOT / "freshkb.yaml")
    import httpx

    from freshkb.api import create_app
    from freshkb.core.config import Settings
    from freshkb.flows.ingest import ingest_all
    from freshkb.serving import llm_server
    from freshkb.serving.runtime import build_runtime
    from freshkb.store import server

    settings = Settings(api_tokens={TOKEN: "answer"})
    llm = llm_server.LlmServerConfig(port=28091, state_dir=work / "llm")
    server.up(settings)
    servers = []
    try:
        reports = ingest_all()
        assert all(r.status == "completed" for r in reports), reports
        llm_server.up(llm)
        with_llm = build_runtime(
            settings.model_copy(update={"llm_base_url": llm.base_url, "llm_model": llm.model_alias})
        )
        without_llm = build_runtime(
            settings.model_copy(
                update={"llm_base_url": "http://127.0.0.1:9/v1", "llm_breaker_cooldown": 3600}
            )
        )
        for _ in range(settings.llm_breaker_failures):  # open: nothing waits on a dead endpoint
            without_llm.answerer.breaker.record(False)
        servers = [
            serve(create_app(settings, with_llm.service, with_llm.ready), 28088),
            serve(create_app(settings, without_llm.service, without_llm.ready), 28089),
        ]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        client = httpx.Client(headers=headers, timeout=300)
        client.get("http://127.0.0.1:28088/v1/search", params={"q": "warm-up"})
        client.post("http://127.0.0.1:28088/v1/answer", json={"question": QUESTIONS[0]})
        runs = {
            "search": timed_requests(
                lambda q: client.get("http://127.0.0.1:28088/v1/search", params={"q": q}),
                args.requests,
            ),
            "answer, LLM excluded": timed_requests(
                lambda q: client.post("http://127.0.0.1:28089/v1/answer", json={"question": q}),
                args.requests,
            ),
            "answer, LLM included": timed_requests(
                lambda q: client.post("http://127.0.0.1:28088/v1/answer", json={"question": q}),
                args.requests,
            ),
        }
        with_llm.close()
        without_llm.close()
    finally:
        for running in servers:
            running.should_exit = True
        llm_server.down(llm)
        server.down(settings)
        shutil.rmtree(work, ignore_errors=True)

    search_p50 = statistics.median(runs["search"][0])
    rows = [
        {
            "endpoint": name,
            "requests": len(latencies),
            "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(percentile(latencies, 0.95), 1),
            "max_ms": round(max(latencies), 1),
            "p50_vs_search": round(statistics.median(latencies) / search_p50, 2),
            "modes": {mode: modes.count(mode) for mode in sorted(set(modes))},
        }
        for name, (latencies, modes) in runs.items()
    ]
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return 0
    print(f"{'endpoint':<24}{'n':>4}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'x search':>10}  modes")
    for row in rows:
        print(
            f"{row['endpoint']:<24}{row['requests']:>4}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
            f"{row['max_ms']:>9.1f}{row['p50_vs_search']:>10.2f}  {row['modes']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
