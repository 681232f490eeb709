"""Soak: mixed /v1/search and /v1/answer traffic for minutes, with the server's memory watched.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 50] [--json]
    .venv/bin/python bench/soak.py --url http://127.0.0.1:8088 --token TOKEN [--pid PID]

Not run in CI. Without --url it ingests the bundled sample (sample/) into a throw-away data
directory and a Weaviate on ports of its own (28080/25051 unless given), then starts the API
as its own process (`python -m freshkb serve`, one worker, default back-pressure sizes) with
the LLM excluded (its endpoint unreachable: answers quote, the circuit stays open) unless
--llm-url names one. With --url it drives a running server; its memory is watched when --pid
is given, or found as the process listening on the URL's port.

The clients are polite: after a 429 they wait as Retry-After says. Every few seconds the
server's resident memory (RSS; psutil if installed, else /proc/<pid>/status) is sampled.
Prints, per minute: requests, responses by status, transport errors, p50/p95 of the 200s and
RSS; then RSS first/last/max, its slope (MB per minute, least squares) over the whole run and
over the last half, and the verdict: "flat" when the last half's fitted growth is under
--flat-mb (default 10 MB), else "growing".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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
TOKEN = "soak-token"
REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class Outcome:
    """One request: when it finished (seconds into the run), where, how and how long."""

    at: float
    endpoint: str
    status: int  # 0: transport error
    seconds: float


@dataclass(frozen=True)
class RssSample:
    """The server's resident memory at a moment (seconds into the run)."""

    at: float
    mb: float


@dataclass
class Run:
    """Everything the soak saw."""

    outcomes: list[Outcome] = field(default_factory=list)
    rss: list[RssSample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # transport error type -> count
    stages: dict[str, list[float]] = field(default_factory=dict)  # answer stage -> ms each


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (psutil, else /proc)."""
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except ImportError:
        status = Path(f"/proc/{pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port (psutil), if one can be found."""
    try:
        import psutil
    except ImportError:
        return None
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
            return int(conn.pid)
    return None


async def client_loop(
    client: Any, number: int, started: float, deadline: float, search_share: float, run: Run
) -> None:
    """Mixed requests until the deadline; after a 429, wait as Retry-After says."""
    import httpx

    chooser = random.Random(number)
    while time.monotonic() < deadline:
        question = chooser.choice(QUESTIONS)
        endpoint = "search" if chooser.random() < search_share else "answer"
        sent = time.monotonic()
        try:
            if endpoint == "search":
                response = await client.get("/v1/search", params={"q": question})
            else:
                response = await client.post("/v1/answer", json={"question": question})
        except httpx.HTTPError as exc:
            name = type(exc).__name__
            run.errors[name] = run.errors.get(name, 0) + 1
            run.outcomes.append(Outcome(time.monotonic() - started, endpoint, 0, 0.0))
            continue
        done = time.monotonic()
        run.outcomes.append(Outcome(done - started, endpoint, response.status_code, done - sent))
        if endpoint == "answer" and response.status_code == 200:
            for stage, ms in response.json().get("timings_ms", {}).items():
                run.stages.setdefault(stage, []).append(float(ms))
        if response.status_code in (429, 503):
            header = response.headers.get("Retry-After", "1")
            wait = float(header) if header.isdigit() else 1.0
            await asyncio.sleep(max(0.0, min(wait, deadline - time.monotonic())))


async def watch_memory(pid: int, started: float, deadline: float, every: float, run: Run) -> None:
    """Sample the server's RSS every `every` seconds until the deadline."""
    while True:
        run.rss.append(RssSample(time.monotonic() - started, rss_mb(pid)))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))


async def soak(url: str, token: str, pid: int, args: argparse.Namespace) -> Run:
    """Drive the clients and the memory watch for `args.minutes`."""
    import httpx

    run = Run()
    limits = httpx.Limits(max_connections=args.clients + 10)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=REQUEST_TIMEOUT,
        limits=limits,
    ) as client:
        started = time.monotonic()
        deadline = started + args.minutes * 60
        clients = [
            client_loop(client, n, started, deadline, args.search_share, run)
            for n in range(args.clients)
        ]
        await asyncio.gather(
            watch_memory(pid, started, deadline, args.sample_seconds, run), *clients
        )
    return run


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def slope_mb_per_minute(samples: list[RssSample]) -> float:
    """Least-squares slope of RSS over time, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    minutes = [s.at / 60 for s in samples]
    return statistics.linear_regression(minutes, [s.mb for s in samples]).slope


def per_minute(run: Run, minutes: int) -> list[dict[str, Any]]:
    """Requests, statuses, p50/p95 of 200s by endpoint, and RSS, for each minute."""
    rows = []
    for minute in range(minutes):
        outcomes = [o for o in run.outcomes if minute * 60 <= o.at < (minute + 1) * 60]
        rss = [s.mb for s in run.rss if s.at < (minute + 1) * 60]
        row: dict[str, Any] = {
            "minute": minute + 1,
            "requests": len(outcomes),
            "statuses": count_statuses(outcomes),
            "rss_mb": round(rss[-1], 1) if rss else None,
        }
        for endpoint in ("search", "answer"):
            served = [o.seconds for o in outcomes if o.endpoint == endpoint and o.status == 200]
            row[f"{endpoint}_p50_ms"] = round(percentile(served, 0.5) * 1000)
            row[f"{endpoint}_p95_ms"] = round(percentile(served, 0.95) * 1000)
        rows.append(row)
    return rows


def count_statuses(outcomes: list[Outcome]) -> dict[str, int]:
    """Responses by status ('error' for transport errors)."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = str(outcome.status) if outcome.status else "error"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def summary(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """The figures of the whole run and the memory verdict."""
    minutes = max(1, round(args.minutes))
    half = [s for s in run.rss if s.at >= args.minutes * 30]
    last_half_slope = slope_mb_per_minute(half)
    last_half_growth = last_half_slope * args.minutes / 2
    mbs = [s.mb for s in run.rss]
    statuses = count_statuses(run.outcomes)
    by_endpoint = {
        endpoint: {
            "requests": sum(1 for o in run.outcomes if o.endpoint == endpoint),
            "statuses": count_statuses([o for o in run.outcomes if o.endpoint == endpoint]),
            "p50_ms": round(percentile(served, 0.5) * 1000),
            "p95_ms": round(percentile(served, 0.95) * 1000),
        }
        for endpoint in ("search", "answer")
        for served in [
            [o.seconds for o in run.outcomes if o.endpoint == endpoint and o.status == 200]
        ]
    }
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": len(run.outcomes),
        "statuses": statuses,
        "unexpected": sum(n for status, n in statuses.items() if status not in ("200", "429")),
        "transport_errors": run.errors,
        "endpoints": by_endpoint,
        "per_minute": per_minute(run, minutes),
        "rss_mb": {
            "samples": len(mbs),
            "first": round(mbs[0], 1) if mbs else None,
            "last": round(mbs[-1], 1) if mbs else None,
            "max": round(max(mbs), 1) if mbs else None,
            "slope_mb_per_min": round(slope_mb_per_minute(run.rss), 2),
            "last_half_slope_mb_per_min": round(last_half_slope, 2),
            "last_half_growth_mb": round(last_half_growth, 1),
        },
        "answer_stage_ms": {
            stage: {"p50": round(percentile(ms, 0.5)), "p95": round(percentile(ms, 0.95))}
            for stage, ms in run.stages.items()
        },
        "flat_bound_mb": args.flat_mb,
        "verdict": "flat" if last_half_growth < args.flat_mb else "growing",
    }


def print_report(report: dict[str, Any]) -> None:
    """The figures side by side."""
    print(
        f"soak: {report['clients']} clients, {report['minutes']} min, mixed search/answer "
        "(polite: 429 -> wait Retry-After)"
    )
    print(
        f"{'min':>4}{'requests':>9}  {'statuses':<28}{'search p50':>11}{'p95':>7}"
        f"{'answer p50':>11}{'p95':>7}{'RSS MB':>9}"
    )
    for row in report["per_minute"]:
        statuses = " ".join(f"{k}:{v}" for k, v in row["statuses"].items())
        print(
            f"{row['minute']:>4}{row['requests']:>9}  {statuses:<28}{row['search_p50_ms']:>11}"
            f"{row['search_p95_ms']:>7}{row['answer_p50_ms']:>11}{row['answer_p95_ms']:>7}"
            f"{row['rss_mb'] or 0:>9.1f}"
        )
    for endpoint, figures in report["endpoints"].items():
        statuses = " ".join(f"{k}:{v}" for k, v in figures["statuses"].items())
        print(
            f"{endpoint:<7} {figures['requests']:>6} requests  {statuses:<24} "
            f"p50 {figures['p50_ms']} ms  p95 {figures['p95_ms']} ms"
        )
    stages = "  ".join(
        f"{stage} {ms['p50']}/{ms['p95']}" for stage, ms in report["answer_stage_ms"].items()
    )
    print(f"answer stages, p50/p95 ms (inside the server, once admitted): {stages}")
    rss = report["rss_mb"]
    print(
        f"RSS MB first {rss['first']}  last {rss['last']}  max {rss['max']}  slope "
        f"{rss['slope_mb_per_min']} MB/min (last half {rss['last_half_slope_mb_per_min']} MB/min,"
        f" {rss['last_half_growth_mb']} MB)  transport errors {report['transport_errors'] or 0}"
    )
    print(
        f"verdict: {report['verdict']} (flat: last half's fitted growth under "
        f"{report['flat_bound_mb']} MB)"
    )


def start_server(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Ingest the sample and start `freshkb serve` as its own process; (process, url)."""
    env = dict(os.environ)
    env.update(
        {
            "FRESHKB_API_TOKENS": json.dumps({TOKEN: "answer"}),
            "FRESHKB_LLM_BASE_URL": args.llm_url or "http://127.0.0.1:9/v1",
            "FRESHKB_LLM_BREAKER_COOLDOWN": "30" if args.llm_url else "3600",
        }
    )
    freshkb = [sys.executable, "-m", "freshkb"]
    ingest = subprocess.run(
        [*freshkb, "ingest", "--all", "--json"], env=env, capture_output=True, timeout=1800
    )
    if ingest.returncode != 0:
        raise SystemExit(f"ingest of the sample failed:\n{ingest.stderr.decode()[-3000:]}")
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(
        [*freshkb, "serve", "--port", str(args.port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{args.port}"
    wait_until_ready(url, process, work / "serve.log")
    return process, url


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for /readyz to say 200 (the model loads first), or fail with the server's log."""
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the API was not ready within 300 s:\n{log.read_text()[-3000:]}")


def warm_up(url: str, token: str) -> None:
    """One search and one answer, so the first minute is not the model's first call."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    httpx.get(f"{url}/v1/search", params={"q": QUESTIONS[0]}, headers=headers, timeout=120)
    httpx.post(f"{url}/v1/answer", json={"question": QUESTIONS[0]}, headers=headers, timeout=120)


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--search-share", type=float, default=0.5, help="share of searches")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument("--flat-mb", type=float, default=10.0, help="bound of the verdict")
    parser.add_argument("--url", help="drive a running API instead of starting one")
    parser.add_argument("--token", help="bearer token for --url (scope 'answer')")
    parser.add_argument("--pid", type=int, help="the --url server's process, for its memory")
    parser.add_argument("--port", type=int, default=28090, help="port of the API started")
    parser.add_argument("--weaviate-http-port", default=None, help="default 28080")
    parser.add_argument("--weaviate-grpc-port", default=None, help="default 25051")
    parser.add_argument("--llm-url", help="OpenAI-compatible LLM to include (default: excluded)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def main() -> int:
    """Run the soak and print (or --json) its figures."""
    args = parse_args()
    if args.url:
        pid = args.pid or listening_pid(urlparse(args.url).port or 80)
        if pid is None:
            raise SystemExit("cannot find the server's process: give --pid")
        report = summary(asyncio.run(soak(args.url, args.token or "", pid, args)), args)
    else:
        report = soak_own_server(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["unexpected"] == 0 and not report["transport_errors"] else 1


def soak_own_server(args: argparse.Namespace) -> dict[str, Any]:
    """Start Weaviate and the API in a throw-away place, soak them, and clean up."""
    work = Path(tempfile.mkdtemp(prefix="freshkb-soak-"))
    use_throwaway_environment(work, ROOT / "freshkb.yaml")
    for flag, key in (
        (args.weaviate_http_port, "FRESHKB_WEAVIATE_HTTP_PORT"),
        (args.weaviate_grpc_port, "FRESHKB_WEAVIATE_GRPC_PORT"),
    ):
        if flag:
            os.environ[key] = str(flag)
    from freshkb.core.config import Settings
    from freshkb.store import server

    settings = Settings()
    server.up(settings)
    process = None
    try:
        process, url = start_server(args, work)
        warm_up(url, TOKEN)
        return summary(asyncio.run(soak(url, TOKEN, process.pid, args)), args)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        server.down(settings)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
