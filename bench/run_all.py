"""Every ratio bench of issue 13 in one command and one table: figure, freshkb, peer, ratio,
goal, pass.

    .venv/bin/python bench/run_all.py [--quick] [--name NAME] [--only peer_ingest,stage_bench]
                                      [--http-port 28080 --grpc-port 25051] [--json]

Runs, one after the other, each bench script that exists (peer_ingest, stage_bench,
embed_bench, query_bench, rss_bench) with `--json` (and `--quick`, and the Weaviate ports,
where the script takes them), reads its JSON and turns it into rows. A script that is missing,
fails or prints no JSON gives a row saying "not run" and why. Writes
bench/results/NAME.json (every script's own JSON too, plus the machine and its load) and
bench/results/NAME.md (the table); NAME defaults to "ratios" ("ratios-quick" with --quick).
Benches share the machine's cores, so run nothing else meanwhile, and read the load figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = ROOT / ".venv/bin/python"

Row = dict[str, Any]


def row(
    figure: str,
    freshkb: Any,
    peer: Any,
    ratio: Any,
    goal: str,
    passed: bool | None,
    note: str = "",
) -> Row:
    """One table row; `passed` None for a figure without a goal of its own."""
    return {
        "figure": figure,
        "freshkb": freshkb,
        "peer": peer,
        "ratio": ratio,
        "goal": goal,
        "pass": passed,
        "note": note,
    }


def peer_ingest_rows(data: dict[str, Any]) -> list[Row]:
    """First ingest vs unstructured-ingest, per corpus: speed (judged), pages/s, chunks/s, PSS."""
    rows = []
    for r in data["results"]:
        f, p, corpus = r["freshkb"], r["peer"], r["corpus"] + (" quick" if r["quick"] else "")
        rows.append(
            row(
                f"first ingest s ({corpus}), speed x",
                f["seconds"],
                p["seconds"],
                r["speed_ratio"],
                f">= {r['goal']}x",
                r["pass"],
                f"{f['documents']} files, {f['pages']} PDF pages",
            )
        )
        if f["pages"]:
            rows.append(_info(f"pages/s ({corpus})", f["pages_per_s"], p["pages_per_s"]))
        rows.append(_info(f"chunks/s ({corpus})", f["chunks_per_s"], p["chunks_per_s"]))
        rows.append(
            _info(f"peak tree PSS MB ({corpus})", f["peak_tree_pss_mb"], p["peak_tree_pss_mb"])
        )
        rows.append(
            _info(f"peak tree RSS MB ({corpus})", f["peak_tree_rss_mb"], p["peak_tree_rss_mb"])
        )
        stages = f["stage_seconds"]
        if stages.get("embed"):
            share = stages.get("screen", 0.0) / stages["embed"]
            rows.append(
                row(
                    f"screen s vs embed s, first ingest ({corpus})",
                    stages.get("screen", 0.0),
                    stages["embed"],
                    round(share, 4),
                    "<= 10%",
                    share <= 0.10,
                    "freshkb's own stages, cold caches",
                )
            )
    return rows


def _info(figure: str, freshkb: float, peer: float) -> Row:
    ratio = round(freshkb / peer, 3) if peer else None
    return row(figure, round(freshkb, 2), round(peer, 2), ratio, "-", None)


STAGE_FIGURES = {
    "write": ("write stage s vs bare client import s", "bare s / write s"),
    "prefect": ("flow s vs plain calls s", "overhead share"),
    "reingest": ("unchanged re-ingest s vs first s", "share"),
    "memory": ("peak PSS MB, corpus x10 vs x1", "x10 / x1"),
}


def stage_bench_rows(data: dict[str, Any]) -> list[Row]:
    """The stage ratios, as stage_bench.py judged them."""
    rows = []
    for r in data["rows"]:
        label, _ = STAGE_FIGURES.get(r["figure"], (r["figure"], ""))
        if r.get("error"):
            rows.append(row(label, None, None, None, r["goal"], False, "not run: " + r["error"]))
            continue
        rows.append(row(label, r["freshkb"], r["peer"], r["ratio"], r["goal"], r["pass"]))
    return rows


def query_bench_rows(data: dict[str, Any]) -> list[Row]:
    """p95 of each phase against its goal (no peer), with the CPU a request costs each process
    and the latency floor that puts at the bench's clients on this machine; the time to ready."""
    rows = [
        row(
            f"p95 ms, {r['phase']}",
            r["p95_ms"],
            None,
            round(r["p95_ms"] / r["goal_p95_ms"], 3) if r.get("goal_p95_ms") else None,
            f"<= {r.get('goal_p95_ms')} ms",
            r.get("pass"),
            f"{r.get('ok')} x 200, {r.get('429')} x 429"
            + cpu_note(r, data.get("clients"), data.get("cores")),
        )
        for r in data.get("rows", [])
    ]
    if data.get("ready_s"):
        ready = max(data["ready_s"])
        rows.append(row("service ready s", ready, None, None, "<= 5 s", ready <= 5))
    return rows


def cpu_note(phase: dict[str, Any], clients: int | None, cores: int | None) -> str:
    """ "; " and query_bench's summary of the phase's CPU per request, or nothing."""
    from query_bench import cpu_summary  # bench/ is the script's folder

    summary = cpu_summary(phase, clients, cores)
    return f"; {summary}" if summary else ""


def rss_bench_rows(data: dict[str, Any]) -> list[Row]:
    """rss_bench.py's peak-RSS ratio of its largest copy count."""
    last, first = data["runs"][-1], data["runs"][0]
    return [
        row(
            f"peak RSS MB, corpus x{last['copies']} vs x{first['copies']} (rss_bench)",
            last["peak_mb"],
            first["peak_mb"],
            last["peak_ratio"],
            f"< {data['goal_ratio']}x",
            data["pass"],
        )
    ]


def embed_bench_rows(data: dict[str, Any]) -> list[Row]:
    """Each embedder against plain SentenceTransformer.encode, each screen against the embed
    stage (embed_bench.py's goals)."""
    goals = data.get("goals", {})
    embed_goal, screen_goal = (
        goals.get("embed_vs_peer", 1.5),
        goals.get("screen_vs_embed_stage", 0.1),
    )
    rows = data["embed"]
    peer = next((r for r in rows if r.get("vs_peer") == 1.0), rows[0])
    out = [
        row(
            f"embed s, {r['embedder']} ({data['chunks']} chunks)",
            r["seconds"],
            peer["seconds"],
            r["vs_peer"],
            f">= {embed_goal}x",
            r["vs_peer"] >= embed_goal,
        )
        for r in rows
        if r is not peer
    ]
    # the embed stage of a first ingest on a CPU: a new index is made of int8 vectors
    chosen = next((r for r in rows if r["embedder"] == "freshkb onnx-int8"), peer)
    out += [
        row(
            f"{r['screen']} s vs embed stage s",
            r["seconds"],
            chosen["seconds"],
            r["vs_embed_stage"],
            f"<= {screen_goal}",
            r["vs_embed_stage"] <= screen_goal,
        )
        for r in data.get("screen", [])
    ]
    return out


def generic_rows(data: Any) -> list[Row]:
    """Rows from any JSON: every object that says `pass`, named by its first naming field."""
    found: list[Row] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "pass" in node:
                name = next(
                    (
                        str(node[k])
                        for k in ("figure", "name", "phase", "stage", "run")
                        if k in node
                    ),
                    "figure",
                )
                ratio = next(
                    (node[k] for k in ("ratio", "speedup", "speed_ratio") if k in node), None
                )
                found.append(
                    row(
                        name,
                        node.get("freshkb", node.get("seconds")),
                        node.get("peer", node.get("baseline")),
                        ratio,
                        str(node.get("goal", "-")),
                        bool(node["pass"]),
                    )
                )
            for value in node.values():
                if isinstance(value, dict | list):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return found


# script name -> how its JSON becomes rows; scripts missing from bench/ become "not run" rows
BENCHES: dict[str, Callable[[Any], list[Row]]] = {
    "peer_ingest": peer_ingest_rows,
    "stage_bench": stage_bench_rows,
    "embed_bench": embed_bench_rows,
    "query_bench": query_bench_rows,
    "rss_bench": rss_bench_rows,
}


# --quick for benches without the flag: a small subset through their own options
QUICK_ARGS = {"embed_bench": ["--corpus", "manuals"], "rss_bench": ["--copies", "1,3"]}


def command_for(script: Path, quick: bool, ports: tuple[int, int]) -> list[str]:
    """The script's command line: --json, plus --quick and the ports where it takes them."""
    text = script.read_text(encoding="utf-8")
    command = [str(PYTHON), str(script), "--json"]
    if quick and '"--quick"' in text:
        command.append("--quick")
    elif quick:
        command += QUICK_ARGS.get(script.stem, [])
    if '"--http-port"' in text or "add_port_options" in text:
        command += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1])]
    elif '"--weaviate-ports"' in text:
        command += ["--weaviate-ports", f"{ports[0]},{ports[1]}"]
    return command


def last_json(stdout: str) -> Any:
    """The JSON a script printed: the whole output, else its last line that parses."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        pass
    for line in reversed(stdout.splitlines()):
        if line.strip().startswith(("{", "[")):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("printed no JSON")


def run_bench(name: str, quick: bool, ports: tuple[int, int], timeout: float) -> dict[str, Any]:
    """Run one bench script; its rows, seconds, command and raw JSON (or why it did not run)."""
    script = BENCH / f"{name}.py"
    not_run = row(name, None, None, None, "-", None)
    if not script.is_file():
        return {"rows": [not_run | {"note": f"not run: bench/{name}.py does not exist"}]}
    command = command_for(script, quick, ports)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"exit {done.returncode}: {tail[0]}")
        data = last_json(done.stdout)
        try:
            rows = BENCHES[name](data)
        except (KeyError, TypeError, StopIteration, IndexError):  # its JSON changed shape
            rows = generic_rows(data)
        rows = rows or [not_run | {"note": "its JSON held no judged figure"}]
    except Exception as exc:  # one bench failing must not cost the others' figures
        seconds = time.perf_counter() - started
        note = f"not run: {type(exc).__name__}: {exc}"[:500]
        return {"rows": [not_run | {"note": note}], "seconds": seconds, "command": command}
    for r in rows:
        r["bench"] = name
    return {"rows": rows, "seconds": round(seconds, 1), "command": command, "json": data}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The table as markdown, with the machine it ran on."""
    lines = [
        f"Ratios of issue 13, {meta['finished']} on {meta['machine']} "
        f"(load average {meta['load_before']} before, {meta['load_after']} after; "
        f"{'quick subsets' if meta['quick'] else 'full corpora'}; {meta['seconds']:.0f} s in all).",
        "",
        "| figure | freshkb | peer | ratio | goal | pass | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = {True: "pass", False: "FAIL", None: "-"}[r["pass"]]
        cells = [r["figure"], r["freshkb"], r["peer"], r["ratio"], r["goal"], verdict, r["note"]]
        lines.append("| " + " | ".join(_cell(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    """Cores and CPU model of this machine."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores, {model}"


def port_holder(port: int) -> str | None:
    """None when `port` can be bound on loopback, else who listens on it (pid and command,
    from /proc, where this process may read them)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                pid = fd.parent.parent.name
                command = (fd.parent.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                return f"pid {pid}: {command.decode(errors='replace').strip()[:200]}"
    return "a process this user cannot see"


def wait_for_ports(ports: tuple[int, int], seconds: float = 60) -> list[str]:
    """Wait up to `seconds` for a bench's Weaviate ports to be free again; what still holds
    them (each bench starts its own server on them, so a leftover fails the next bench)."""
    deadline = time.monotonic() + seconds
    while True:
        held = [f"port {p} held by {h}" for p in ports if (h := port_holder(p)) is not None]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(1)


def main() -> int:
    """Run the benches and print (and write) the one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name")
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--http-port", type=int, default=28080)
    parser.add_argument("--grpc-port", type=int, default=25051)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip() in BENCHES]
    if not names:
        parser.error(f"--only: name one or more of {', '.join(BENCHES)}")
    corpus = ROOT.parent / "shared" / "corpus"
    if not corpus.is_dir():  # every bench reads it: fail once, before any of them starts
        parser.error(f"{corpus} not found: the benches read ../shared beside the repository")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    output = args.name or ("ratios-quick" if args.quick else "ratios")
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_bench(name, args.quick, (args.http_port, args.grpc_port), args.timeout)
        if held := wait_for_ports((args.http_port, args.grpc_port)):
            runs[name]["left_running"] = held  # named here, not as the next bench's failure
            print(f"{name} left its Weaviate running: {'; '.join(held)}", file=sys.stderr)
        # Written after every bench, so a run stopped half way keeps what it measured.
        meta, rows, table = write_results(output, runs, load_before, started, args.quick)
    print(json.dumps({"meta": meta, "rows": rows}, default=str) if args.json else table)
    return 0


def write_results(
    output: str, runs: dict[str, dict[str, Any]], load_before: float, started: float, quick: bool
) -> tuple[dict[str, Any], list[Row], str]:
    """Write bench/results/OUTPUT.json and .md from the benches run so far."""
    rows = [r for run in runs.values() for r in run["rows"]]
    meta = {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
        "benches_run": list(runs),
    }
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    table = markdown(rows, meta)
    (results / f"{output}.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "benches": runs}, indent=2, default=str) + "\n"
    )
    (results / f"{output}.md").write_text(table)
    return meta, rows, table


if __name__ == "__main__":
    raise SystemExit(main())
