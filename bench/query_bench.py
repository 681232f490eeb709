"""Query path under concurrency: /v1/search and /v1/answer at N clients, and time to ready.

    .venv/bin/python bench/query_bench.py [--clients 16] [--seconds 20] [--quick]
        [--corpus sample|FOLDER] [--work DIR] [--no-llm] [--serve-from DIR] [--json]

Ingests a documents folder (default ../shared/corpus/policies/benefits-pdfs, which the
benefits dev questions are about; `--corpus sample` for the bundled sample/) into a throw-away
data directory (or `--work DIR`, kept and reused: an unchanged re-ingest takes seconds) with a
Weaviate on ports 34580/34551. Then it starts the real `freshkb serve` on port 34588 as its own
process, timing /healthz and /readyz from the start, and runs N concurrent clients for T
seconds against:
- search: GET /v1/search;
- answer, LLM excluded: POST /v1/answer with the LLM endpoint unreachable and its circuit open
  (the quoted answer: everything but generation);
- answer, LLM included: the server restarted against the test LLM server (llama.cpp,
  SmolLM2-135M) on 34591; admitted answers' p95 is compared with slo.yaml's, and excess load
  must be turned away quickly with 429.
Questions are read at run time from ../shared/eval/dev (benefits_qa, benefits_out_of_scope);
past the first pass a pass number is appended, so no two requests of the whole run (warm-up and
every phase) send the same text and no cache answers a repeat. Prints the figures beside the
goals of issue 13, and per phase the CPU that the server, Weaviate and the clients each spend
per request (from /proc), with the floor that sets on latency at N clients on this machine's
cores; `--quick` runs 5 s per phase. `--serve-from DIR` serves from another copy of the code
(e.g. the previous commit, `git archive HEAD | tar -x -C DIR`) for a before/after comparison on
the same index.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import use_throwaway_environment  # noqa: E402

DEV = ROOT.parent / "shared" / "eval" / "dev"
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "policies" / "benefits-pdfs"
TOKEN = "query-bench-token"
UNREACHABLE_LLM = "http://127.0.0.1:9/v1"
GOALS_MS = {"search": 50.0, "answer, LLM excluded": 300.0}


@dataclass
class Tally:
    """What the clients of one phase saw: latencies by status, transport errors."""

    name: str
    seconds: float = 0.0
    latencies: dict[int, list[float]] = field(default_factory=dict)
    errors: int = 0
    modes: dict[str, int] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The figures of the phase."""
        served = sorted(self.latencies.get(200, []))
        refused = sorted(self.latencies.get(429, []))
        total = sum(len(v) for v in self.latencies.values())
        return {
            "phase": self.name,
            "requests": total,
            "ok": len(served),
            "429": len(refused),
            "503": len(self.latencies.get(503, [])),
            "other": total - len(served) - len(refused) - len(self.latencies.get(503, [])),
            "errors": self.errors,
            "req_per_s": round(len(served) / self.seconds, 1) if self.seconds else 0.0,
            "mean_ms": round(sum(served) / len(served) * 1000, 1) if served else 0.0,
            "p50_ms": round(percentile(served, 0.50) * 1000, 1),
            "p95_ms": round(percentile(served, 0.95) * 1000, 1),
            "429_p50_ms": round(percentile(refused, 0.50) * 1000, 1),
            "429_p95_ms": round(percentile(refused, 0.95) * 1000, 1),
            "429_over_1s": sum(1 for s in refused if s > 1.0),
            "modes": dict(sorted(self.modes.items())),
        }


def percentile(ordered: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def dev_questions() -> list[str]:
    """The benefits dev questions, read at run time (their text never lives in code)."""
    questions: list[str] = []
    for name in ("benefits_qa.jsonl", "benefits_out_of_scope.jsonl"):
        for line in (DEV / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                questions.append(json.loads(line)["question"])
    return questions


async def one_client(
    client: Any, phase: str, asked: Any, questions: list[str], deadline: float, tally: Tally
) -> None:
    """Ask distinct questions until the deadline; after a 429/503 wait briefly and go on."""
    import httpx

    while time.monotonic() < deadline:
        number = next(asked)
        passes, index = divmod(number, len(questions))
        question = questions[index] + (f" (ref {passes})" if passes else "")
        started = time.monotonic()
        try:
            if phase == "search":
                response = await client.get("/v1/search", params={"q": question})
            else:
                response = await client.post("/v1/answer", json={"question": question})
        except httpx.HTTPError:
            tally.errors += 1
            continue
        tally.latencies.setdefault(response.status_code, []).append(time.monotonic() - started)
        if response.status_code == 200 and phase != "search":
            mode = response.json().get("mode", "-")
            tally.modes[mode] = tally.modes.get(mode, 0) + 1
        if response.status_code in (429, 503):
            await asyncio.sleep(0.25)  # impatient clients: keep the pressure on


async def drive(
    url: str, phase: str, clients: int, seconds: float, questions: list[str], asked: Any
) -> Tally:
    """`clients` concurrent clients on one phase for `seconds`, numbering their questions from
    `asked` (one counter for the whole run, so that no phase asks a text another phase asked:
    the server keeps the vectors of recent questions, and a repeat would skip the embedding)."""
    import httpx

    tally = Tally(phase)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120, limits=limits
    ) as client:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(
            *(one_client(client, phase, asked, questions, deadline, tally) for _ in range(clients))
        )
        tally.seconds = time.monotonic() - started
    return tally


@dataclass
class Served:
    """A `freshkb serve` process and how long it took to answer /healthz and /readyz."""

    process: subprocess.Popen[bytes]
    url: str
    healthy_s: float
    ready_s: float


def start_serve(port: int, llm_url: str, log: Path, code: Path | None = None) -> Served:
    """`freshkb serve` as users start it (from `code`, if given), timed until /healthz and
    /readyz answer 200."""
    import httpx

    env = dict(
        os.environ,
        FRESHKB_LLM_BASE_URL=llm_url,
        FRESHKB_LLM_BREAKER_COOLDOWN="3600",
        FRESHKB_API_TOKENS=json.dumps({TOKEN: "answer"}),
    )
    if code is not None:
        env["PYTHONPATH"] = str(code.resolve())
    started = time.monotonic()
    with log.open("ab") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [str(ROOT / ".venv/bin/freshkb"), "serve", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    healthy = ready = None
    while ready is None and time.monotonic() - started < 300:
        if process.poll() is not None:
            raise RuntimeError(f"freshkb serve exited with {process.returncode}; see {log}")
        try:
            if healthy is None and httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                healthy = time.monotonic() - started
            if healthy is not None and httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                ready = time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    if ready is None or healthy is None:
        process.terminate()
        raise RuntimeError(f"freshkb serve not ready within 300 s; see {log}")
    return Served(process, url, healthy, ready)


def stop_serve(served: Served) -> None:
    """Stop the server the way a supervisor does (SIGTERM), then wait for it."""
    served.process.terminate()
    try:
        served.process.wait(30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait()


def ingest(corpus: str, work: Path) -> str:
    """Ingest the corpus (unchanged documents cost next to nothing); returns its source name."""
    from freshkb.flows.ingest import ingest_all

    if corpus == "sample":
        os.environ["FRESHKB_CONFIG"] = str(ROOT / "freshkb.yaml")
    else:
        config = work / "sources.yaml"
        config.write_text(
            "sources:\n  - name: bench-policies\n    kind: documents\n"
            f"    location: {Path(corpus).resolve()}\n    owner: bench\n"
            "    freshness:\n      max_age: 30d\n",
            encoding="utf-8",
        )
        os.environ["FRESHKB_CONFIG"] = str(config)
    reports = ingest_all(os.environ["FRESHKB_CONFIG"])
    failed = [(r.source, r.error) for r in reports if r.status != "completed"]
    if failed:
        raise RuntimeError(f"ingest failed: {failed}")
    return ", ".join(r.source for r in reports)


def run_phases(args: argparse.Namespace, work: Path, questions: list[str]) -> dict[str, Any]:
    """Serve LLM excluded (search, answer), then LLM included; the figures of each."""
    from freshkb.serving import llm_server

    log = work / "serve.log"
    results: dict[str, Any] = {"rows": [], "ready_s": [], "healthy_s": []}
    asked = count()

    def phase(served: Served, name: str, endpoint: str, llm_pid: int | None = None) -> None:
        warm = asyncio.run(drive(served.url, endpoint, 2, 1.0, questions, asked))
        del warm  # the first requests pay for lazy loading; not part of the figures
        processes = {"serve": served.process.pid, "weaviate": weaviate_pid(), "client": os.getpid()}
        if llm_pid is not None:
            processes["llm"] = llm_pid
        before = cpu_seconds(processes)
        tally = asyncio.run(
            drive(served.url, endpoint, args.clients, args.seconds, questions, asked)
        )
        tally.name = name
        row = tally.row()
        # Per request served. Turned-away requests cost little and their clients pause, so the
        # latency floor holds only for a phase where every request was served.
        row["cpu_ms_per_request"] = (
            cpu_per_request(processes, before, row["ok"]) if row["ok"] else {}
        )
        row["cpu_floor_holds"] = row["ok"] == row["requests"]
        results["rows"].append(row)

    served = start_serve(args.api_port, UNREACHABLE_LLM, log, args.serve_from)
    results["ready_s"].append(round(served.ready_s, 2))
    results["healthy_s"].append(round(served.healthy_s, 2))
    try:
        phase(served, "search", "search")
        phase(served, "answer, LLM excluded", "answer")
    finally:
        stop_serve(served)
    if args.no_llm:
        return results
    llm = llm_server.LlmServerConfig(port=args.llm_port, state_dir=work / "llm")
    llm_server.up(llm)
    try:
        served = start_serve(args.api_port, llm.base_url, log, args.serve_from)
        results["ready_s"].append(round(served.ready_s, 2))
        results["healthy_s"].append(round(served.healthy_s, 2))
        try:
            llm_pid = llm_server.managed_process(llm).read_pid()
            phase(served, "answer, LLM included", "answer", llm_pid)
        finally:
            stop_serve(served)
    finally:
        llm_server.down(llm)
    return results


def weaviate_pid() -> int | None:
    """The pid of the managed Weaviate the bench ingested into."""
    from freshkb.core.config import Settings
    from freshkb.store import server

    return server.managed_process(Settings()).read_pid()


def cpu_seconds(processes: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds (user + system, threads included) each process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in processes.items():
        if pid is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return used


def cpu_per_request(
    processes: dict[str, int | None], before: dict[str, float], requests: int
) -> dict[str, float]:
    """CPU milliseconds per request of each process over a phase, and their sum: with C cores,
    C / sum is the most requests per second the machine can serve, and N clients that never
    pause then wait N x sum / C on average at least (Little's law), whatever the server does
    with its queue."""
    after = cpu_seconds(processes)
    spent = {
        name: round((after[name] - before[name]) * 1000 / requests, 2)
        for name in before
        if name in after
    }
    spent["total"] = round(sum(spent.values()), 2)
    return spent


def cpu_summary(row: dict[str, Any], clients: int | None, cores: int | None) -> str:
    """A phase's CPU per request served, per process, the most requests per second that allows
    on `cores`, and (where every request was served) the floor it puts on the mean latency at
    `clients`; empty when the phase has no CPU figures."""
    cpu = row.get("cpu_ms_per_request") or {}
    if not cpu.get("total") or not cores:
        return ""
    parts = ", ".join(f"{name} {ms:.1f}" for name, ms in cpu.items() if name != "total")
    text = (
        f"CPU ms per request {cpu['total']:.1f} ({parts}); at most "
        f"{cores * 1000 / cpu['total']:.0f} req/s on {cores} cores"
    )
    if clients and row.get("cpu_floor_holds"):
        text += (
            f", so mean latency >= {clients * cpu['total'] / cores:.0f} ms at {clients} clients "
            f"(measured mean {row['mean_ms']:.0f} ms)"
        )
    return text


def slo_p95_ms() -> float:
    """The answer latency p95 ceiling written in slo.yaml."""
    import yaml

    slo = yaml.safe_load((ROOT / "slo.yaml").read_text(encoding="utf-8"))
    return float(slo["targets"]["answer_latency_p95_ms"]["max"])


def judged(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row with its goal and whether it meets it."""
    goals = dict(GOALS_MS, **{"answer, LLM included": slo_p95_ms()})
    for row in results["rows"]:
        row["goal_p95_ms"] = goals[row["phase"]]
        row["pass"] = row["ok"] > 0 and row["p95_ms"] <= row["goal_p95_ms"] and not row["errors"]
    return results["rows"]


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The figures beside the goals."""
    print(
        f"{args.clients} clients x {args.seconds:g} s per phase, loopback, corpus "
        f"{results['corpus']}; latency of 200s"
    )
    print(
        f"{'phase':<22}{'200':>6}{'429':>6}{'503':>5}{'err':>5}{'req/s':>7}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'goal p95':>10}{'429 p95':>9}  pass  modes"
    )
    for r in results["rows"]:
        print(
            f"{r['phase']:<22}{r['ok']:>6}{r['429']:>6}{r['503']:>5}{r['errors']:>5}"
            f"{r['req_per_s']:>7.1f}{r['p50_ms']:>9.0f}{r['p95_ms']:>9.0f}"
            f"{r['goal_p95_ms']:>10.0f}{r['429_p95_ms']:>9.0f}  {'yes' if r['pass'] else 'NO ':<4}"
            f"  {r['modes'] or ''}"
        )
    for r in results["rows"]:
        if summary := cpu_summary(r, args.clients, results.get("cores")):
            print(f"  {r['phase']}: {summary}")
    ready = max(results["ready_s"])
    print(
        f"{'ready (GET /readyz 200)':<22} {', '.join(f'{s:.1f}' for s in results['ready_s'])}"
        f" s after start (healthz {', '.join(f'{s:.1f}' for s in results['healthy_s'])} s);"
        f" goal <= 5 s: {'yes' if ready <= 5 else 'NO'}"
    )


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="5 s per phase")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="'sample' or a folder")
    parser.add_argument("--work", type=Path, help="data directory to keep and reuse")
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM-included phase")
    parser.add_argument("--weaviate-ports", default="34580,34551", help="HTTP,gRPC")
    parser.add_argument("--api-port", type=int, default=34588)
    parser.add_argument("--llm-port", type=int, default=34591)
    parser.add_argument("--serve-from", type=Path, help="serve from this copy of the code")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 5.0
    work = args.work or Path(tempfile.mkdtemp(prefix="freshkb-query-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    use_throwaway_environment(work)
    # Prefect's ephemeral server can take minutes to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    http_port, grpc_port = args.weaviate_ports.split(",")
    os.environ["FRESHKB_WEAVIATE_HTTP_PORT"] = http_port
    os.environ["FRESHKB_WEAVIATE_GRPC_PORT"] = grpc_port

    from freshkb.core.config import Settings
    from freshkb.store import server

    settings = Settings()
    server.up(settings)
    try:
        started = time.monotonic()
        corpus = ingest(args.corpus, work)
        ingest_s = time.monotonic() - started
        results = run_phases(args, work, dev_questions())
        results.update(
            corpus=corpus, ingest_s=round(ingest_s, 1), clients=args.clients, cores=os.cpu_count()
        )
    finally:
        server.down(settings)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    judged(results)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
