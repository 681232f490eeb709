"""Scale-out figures (issue 14): ingest by batches on threads or Dask, runs spread over Prefect
workers, search under load on 1 vs 3 Weaviate nodes, and the time to recover a lost node.

    .venv/bin/python bench/scale_bench.py [--copies N] [--seconds S] [--only FIGURES] [--json]

FIGURES (comma-separated, default all):
- ingest: the outdoor manuals (../shared/corpus/policies/outdoor-manuals) copied N times (every
  copy's prose lines tagged so no two copies share a chunk, and the vector cache cannot answer
  for a copy) ingested by `freshkb ingest` from cold caches, with 1 batch in flight, 2 batches
  on threads, and on a local Dask cluster of 2 single-thread worker processes; documents/s and
  chunks/s of each, and the ratio to 1 batch.
- workers: the same copies as two sources, deployed, both runs triggered at once, with 1 and
  then 2 Prefect process workers on the pool (`freshkb workers up --n`): wall time from trigger
  to both completed, and which worker ran each run.
- query: the bundled sample ingested into 1 node, then into a 3-node cluster (replication
  factor 3), `freshkb serve` and 16 clients on /v1/search for S seconds each; p50/p95, req/s.
- recovery: on the 3-node cluster, 16 clients search while one node is SIGKILLed (errors seen),
  then the node is restarted: seconds until it is ready, and until it holds every object again.

On 2 cores the speed-ups are small: the point is that the work spreads and nothing breaks; the
README's sizing section reads these figures. Ports: Weaviate 28180.. (node i: +10i), Prefect
28250-28251, Dask 28350, API 28188. Each figure's JSON is also printed to stderr as it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from itertools import count
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import bench_environment, cold_cache  # noqa: E402
from query_bench import UNREACHABLE_LLM, drive, start_serve, stop_serve  # noqa: E402
from stage_bench import prefect_server  # noqa: E402

MANUALS = ROOT.parent / "shared" / "corpus" / "policies" / "outdoor-manuals"
# Below Linux's ephemeral range (32768+), where a client's port could take a restarting node's.
# Nodes: HTTP 28180/28190/28200, gRPC 25151/25161/25171, internal 28280..28303; the rest apart.
HTTP, GRPC, PREFECT, DASK, API = 28180, 25151, 28250, 28350, 28188
FIGURES = ("ingest", "workers", "query", "recovery")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
ASKED = count()  # one question counter for the run: no text is asked twice (query_bench.drive)


def tagged_copies(target: Path, copies: int, sources: int = 1) -> list[Path]:
    """The manuals `copies` times over `sources` folders; copy k's prose lines start with a tag
    of their own, so every copy's chunks are new text of the same length and shape."""
    folders = [target / f"part{n}" for n in range(sources)]
    for folder in folders:
        folder.mkdir(parents=True)
    for copy in range(copies):
        folder = folders[copy % sources]
        for path in sorted(MANUALS.glob("*.md")):
            lines = path.read_text(encoding="utf-8").splitlines()
            tag = f"(edition {copy + 1}) "
            text = "\n".join(tag + x if x and x[0].isalpha() else x for x in lines)
            (folder / f"{path.stem}-{copy + 1}.md").write_text(text + "\n", encoding="utf-8")
    return folders


def write_config(work: Path, folders: list[Path], schedule: str | None = None) -> Path:
    """A freshkb.yaml with one documents source per folder."""
    sources = []
    for n, folder in enumerate(folders):
        source = {"name": f"manuals-{n}", "kind": "documents", "location": str(folder)}
        source |= {"owner": "bench", "freshness": {"max_age": "30d"}}
        sources.append(source | ({"schedule": schedule} if schedule else {}))
    config = work / "freshkb.yaml"
    config.write_text(json.dumps({"sources": sources}), encoding="utf-8")
    return config


def fresh_run_env(work: Path, name: str, extra: dict[str, str]) -> dict[str, str]:
    """Environment of one run: its own data directory and cold caches, same Weaviate."""
    run = work / name
    run.mkdir()
    env = dict(os.environ, FRESHKB_DATA_DIR=str(run / "data"))
    env["FRESHKB_CACHE_DIR"] = str(cold_cache(run))
    # The bench's server, not one of this data directory's own (it has none).
    env["WEAVIATE_URL"] = f"http://127.0.0.1:{HTTP}"
    env["WEAVIATE_GRPC_URL"] = f"http://127.0.0.1:{GRPC}"
    return env | extra


def timed_ingest(env: dict[str, str], config: Path, source: str) -> dict[str, Any]:
    """`freshkb ingest SOURCE --json` in a subprocess; wall seconds and the report's counts."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(ROOT / ".venv/bin/freshkb"), "ingest", source, "--config", str(config), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"ingest failed (exit {done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    documents = report["documents_new"] + report["documents_changed"]
    if not documents or not report["chunks_embedded"]:
        raise RuntimeError(f"the ingest wrote nothing: {report}; was the index emptied?")
    return {
        "seconds": round(seconds, 1),
        "documents": documents,
        "chunks": report["chunks_embedded"],
        "documents_per_s": round(documents / seconds, 2),
        "chunks_per_s": round(report["chunks_embedded"] / seconds, 1),
    }


def ingest_figures(work: Path, copies: int, api_url: str) -> list[dict[str, Any]]:
    """One source of `copies` manuals copies: 1 batch, 2 batches on threads, Dask 2 processes."""
    from distributed import LocalCluster

    config = write_config(work, tagged_copies(work / "corpus", copies))
    base = {"PREFECT_API_URL": api_url, "FRESHKB_INGEST_BATCH_DOCUMENTS": "8"}
    rows = []
    for name, extra in (
        ("threads, 1 batch in flight", {"FRESHKB_INGEST_PARALLEL_BATCHES": "1"}),
        ("threads, 2 batches in flight", {"FRESHKB_INGEST_PARALLEL_BATCHES": "2"}),
    ):
        clear_index()  # every run writes the whole source anew
        env = fresh_run_env(work, name.replace(" ", "-").replace(",", ""), base | extra)
        rows.append({"run": name, **timed_ingest(env, config, "manuals-0")})
    clear_index()
    env = fresh_run_env(work, "dask", base | {"FRESHKB_INGEST_TASK_RUNNER": "dask"})
    saved = dict(os.environ)
    os.environ.update(env)  # the Dask workers inherit it: freshkb's and Prefect's settings
    try:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, scheduler_port=DASK, dashboard_address=None
        ) as cluster:
            env["FRESHKB_INGEST_DASK_ADDRESS"] = cluster.scheduler_address
            env["FRESHKB_INGEST_PARALLEL_BATCHES"] = "2"
            row = timed_ingest(env, config, "manuals-0")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    rows.append({"run": "Dask, 2 worker processes x 1 thread", **row})
    for row in rows:
        row["speedup"] = round(rows[0]["seconds"] / row["seconds"], 2)
    return rows


def workers_figures(work: Path, copies: int, api_port: int) -> list[dict[str, Any]]:
    """Two sources triggered at once with 1 and with 2 process workers on the pool; each round
    from cold caches, its workers started with them."""
    from freshkb.flows.prefect_server import PrefectServerConfig, api_client
    from freshkb.flows.prefect_server import down as prefect_down
    from freshkb.flows.workers import workers_up

    folders = tagged_copies(work / "corpus-workers", max(copies, 2), sources=2)
    config = write_config(work, folders, schedule="0 0 1 1 *")
    saved = dict(os.environ)
    os.environ |= {
        "PREFECT_HOME": str(work / "prefect-workers"),
        "FRESHKB_PREFECT_PORT": str(api_port),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    server = PrefectServerConfig.from_env()
    rows = []
    try:
        for count in (1, 2):
            clear_index()  # both rounds write the two sources anew
            os.environ |= fresh_run_env(work, f"workers-{count}", {})
            for number in server.worker_numbers():  # workers keep the caches they started with
                server.worker_process(number).stop(30.0)
            workers_up(server, count)
            ids = deploy(dict(os.environ), config)
            with api_client(server.api_url) as client:
                started = time.perf_counter()
                runs = [
                    client.create_flow_run_from_deployment(ids[f"ingest-source/manuals-{n}"])
                    for n in range(2)
                ]
                ended = wait_for_runs(client, [run.id for run in runs], 1800)
            seconds = time.perf_counter() - started
            failed = [r.name for r in ended if r.state_type.value != "COMPLETED"]
            if failed:
                raise RuntimeError(f"runs {failed} did not complete; see {server.home}")
            ran_on = sorted({str(r.labels.get("prefect.worker.name")) for r in ended})
            rows.append({"workers": count, "seconds": round(seconds, 1), "ran_on": ran_on})
    finally:
        prefect_down(server)
        os.environ.clear()
        os.environ.update(saved)
    for row in rows:
        row["speedup"] = round(rows[0]["seconds"] / row["seconds"], 2)
    return rows


def deploy(env: dict[str, str], config: Path) -> dict[str, str]:
    """`freshkb deploy` of the config; deployment name -> id."""
    done = subprocess.run(
        [str(ROOT / ".venv/bin/freshkb"), "deploy", "--config", str(config), "--json"],
        env=dict(os.environ) | env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"deploy failed: {done.stderr[-2000:]}")
    return {d["name"]: d["id"] for d in json.loads(done.stdout)["deployments"]}


def wait_for_runs(client: Any, run_ids: list[Any], timeout: float) -> list[Any]:
    """The flow runs once every one has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [client.read_flow_run(run_id) for run_id in run_ids]
        if all(run.state_type.value in TERMINAL for run in runs):
            return runs
        time.sleep(2)
    raise RuntimeError(f"flow runs not finished within {timeout:.0f} s")


def clear_index() -> None:
    """Delete every collection of the bench's Weaviate (the next round writes anew)."""
    import weaviate

    with weaviate.connect_to_local(host="127.0.0.1", port=HTTP, grpc_port=GRPC) as client:
        client.collections.delete_all()
        for alias in client.alias.list_all():
            client.alias.delete(alias_name=alias)


def query_and_recovery(work: Path, seconds: float, wanted: set[str]) -> dict[str, Any]:
    """Search p95 at 16 clients on 1 node and on 3 nodes; then a node lost and recovered."""
    from query_bench import dev_questions, ingest

    from freshkb.core.config import Settings
    from freshkb.store import server

    questions = dev_questions()
    results: dict[str, Any] = {"query": [], "recovery": None}
    for nodes in (1, 3):
        node_work = work / f"nodes-{nodes}"
        node_work.mkdir()
        bench_environment(node_work, HTTP, GRPC)
        os.environ["FRESHKB_WEAVIATE_NODES"] = str(nodes)
        os.environ["FRESHKB_WEAVIATE_REPLICATION_FACTOR"] = str(nodes)
        settings = Settings()
        server.up(settings, nodes=nodes)
        try:
            ingest("sample", node_work)
            served = start_serve(API, UNREACHABLE_LLM, node_work / "serve.log")
            try:
                asyncio.run(drive(served.url, "search", 2, 1.0, questions, ASKED))  # warm-up
                if "query" in wanted:
                    tally = asyncio.run(drive(served.url, "search", 16, seconds, questions, ASKED))
                    results["query"].append({"nodes": nodes, **tally.row()})
                    print("SCALE-RESULT", json.dumps(results["query"][-1]), file=sys.stderr)
                if nodes == 3 and "recovery" in wanted:
                    results["recovery"] = node_loss(settings, served.url, questions, seconds)
            finally:
                stop_serve(served)
        finally:
            server.down(settings)
    return results


def node_loss(settings: Any, url: str, questions: list[str], seconds: float) -> dict[str, Any]:
    """SIGKILL node 3 while 16 clients search; restart it and time its return."""
    from freshkb.store import server
    from freshkb.store.cluster import managed_nodes

    nodes = managed_nodes(settings)
    seed, victim = nodes[0], nodes[2]
    pid = server.node_process(victim).read_pid()
    if pid is None:
        raise RuntimeError(f"{victim.name} is not running")
    expected = node_objects(seed)

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)  # as when its host dies
        server.node_process(victim).stop(timeout=5)  # reap it: this process started it

    killer = threading.Timer(min(2.0, seconds / 4), kill)
    killer.start()
    tally = asyncio.run(drive(url, "search", 16, seconds, questions, ASKED))
    killer.join()
    started = time.perf_counter()
    try:
        server.up(settings, nodes=3)
    except Exception as exc:
        log = victim.data_dir / "weaviate.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
        raise RuntimeError(f"{victim.name} did not come back: {exc}\n" + "\n".join(tail)) from exc
    ready = time.perf_counter() - started
    while node_objects(victim) < expected and time.perf_counter() - started < 300:
        time.sleep(0.5)
    # None when the count through the node failed (it read -1 in the last runs: an open item).
    caught_up = time.perf_counter() - started if expected >= 0 else None
    return {
        "killed": victim.name,
        "searches_during_loss": tally.row(),
        "restart_ready_s": round(ready, 1),
        "all_objects_back_s": None if caught_up is None else round(caught_up, 1),
        "objects": expected,
        "objects_on_node": node_objects(victim),
    }


def node_objects(node: Any) -> int:
    """Objects of every collection read through `node` at consistency ONE: its own copy (a node
    back from a loss answers its stale count here until it has caught up); -1 while it is down.
    The nodes API's per-shard objectCount is refreshed lazily and read 0 here, so it is not used."""
    import weaviate
    from weaviate.classes.config import ConsistencyLevel

    try:
        client = weaviate.connect_to_local(port=node.http_port, grpc_port=node.grpc_port)
    except Exception:
        return -1
    try:
        total = 0
        for name, config in client.collections.list_all(simple=False).items():
            if config.multi_tenancy_config.enabled:
                continue  # customer records: one shard per customer, read per tenant
            handle = client.collections.get(name).with_consistency_level(ConsistencyLevel.ONE)
            total += sum(1 for _ in handle.iterator(return_properties=[]))
        return total
    except Exception:
        return -1
    finally:
        client.close()


def print_tables(results: dict[str, Any]) -> None:
    """Every figure, side by side."""
    if results.get("ingest"):
        print(f"ingest, {results['copies']} copies of the outdoor manuals, cold caches")
        print(f"{'run':<38}{'s':>8}{'docs':>6}{'chunks':>8}{'docs/s':>8}{'chunks/s':>10}{'x':>7}")
        for r in results["ingest"]:
            print(
                f"{r['run']:<38}{r['seconds']:>8.1f}{r['documents']:>6}{r['chunks']:>8}"
                f"{r['documents_per_s']:>8.2f}{r['chunks_per_s']:>10.1f}{r['speedup']:>7.2f}"
            )
    if results.get("workers"):
        print("two sources triggered at once, Prefect process workers")
        for r in results["workers"]:
            print(
                f"  {r['workers']} worker(s): {r['seconds']:.1f} s (x{r['speedup']:.2f}), "
                f"ran on {r['ran_on']}"
            )
    for r in results.get("query") or []:
        print(
            f"/v1/search, 16 clients, {r['nodes']} node(s): {r['req_per_s']:.1f} req/s, "
            f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, errors {r['errors']}, "
            f"non-200 {r['429'] + r['503']}"
        )
    rec = results.get("recovery")
    if rec:
        during = rec["searches_during_loss"]
        print(
            f"node loss ({rec['killed']} SIGKILLed under 16 clients): {during['ok']} searches ok, "
            f"{during['errors']} errors, p95 {during['p95_ms']:.0f} ms; restarted ready in "
            f"{rec['restart_ready_s']} s, every object ({rec['objects']}) back in "
            f"{rec['all_objects_back_s'] or 'n/a'} s"
        )


def main() -> int:
    """Run the chosen figures in a throw-away directory and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--only", default=",".join(FIGURES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    results: dict[str, Any] = {"copies": args.copies}
    with tempfile.TemporaryDirectory(prefix="freshkb-scale-") as tmp:
        work = Path(tmp)
        bench_environment(work, HTTP, GRPC)
        from freshkb.core.config import Settings
        from freshkb.store import server

        if wanted & {"ingest", "workers"}:
            settings = Settings()
            server.up(settings)
            try:
                if "ingest" in wanted:
                    with prefect_server(work, PREFECT) as api_url:
                        results["ingest"] = ingest_figures(work, args.copies, api_url)
                    print("SCALE-RESULT", json.dumps(results["ingest"]), file=sys.stderr)
                    clear_index()
                if "workers" in wanted:
                    results["workers"] = workers_figures(work, args.copies, PREFECT + 1)
                    print("SCALE-RESULT", json.dumps(results["workers"]), file=sys.stderr)
            finally:
                server.down(settings)
        cluster = wanted & {"query", "recovery"}
        if cluster and wanted & {"ingest", "workers"}:
            # In a process of its own: the ingest figures leave Prefect settings behind here.
            command = [sys.executable, __file__, "--only", ",".join(sorted(cluster)), "--json"]
            done = subprocess.run(
                [*command, "--seconds", str(args.seconds)], stdout=subprocess.PIPE, check=True
            )
            results |= {k: v for k, v in json.loads(done.stdout).items() if k != "copies"}
        elif cluster:
            results |= query_and_recovery(work, args.seconds, wanted)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_tables(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
