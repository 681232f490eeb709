"""A replicated Weaviate: three nodes of the same binary on loopback, replication factor 3.

One cluster, started through `freshkb weaviate up --nodes 3`, serves the module; its tests run
in order and each leaves every node up and caught up for the next: a node SIGKILLed mid-ingest,
the node freshkb's client talks to killed between runs, the Raft leader killed before a
rebuild's schema changes. Unit tests of the port plan and the election retry come first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import weaviate
from fixtures_files import shared_dir
from typer.testing import CliRunner
from weaviate.classes.config import ConsistencyLevel
from weaviate.classes.init import AdditionalConfig, Timeout
from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateConnectionError

from freshkb.cli.servers import WEAVIATE, server_commands
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.records import ExpectedDocument, SourceKind
from freshkb.store import server
from freshkb.store.cluster import (
    Replication,
    WeaviateNode,
    managed_nodes,
    raft_leader,
    through_election,
)
from freshkb.store.weaviate_store import POLICY_ALIAS, WeaviateStore, open_store

# The cluster's ports: node i uses HTTP +10i, gRPC +10i, internal HTTP+100+10i..+3.
CLUSTER_HTTP_PORT = int(os.environ.get("FRESHKB_TEST_WEAVIATE_CLUSTER_HTTP_PORT", "18300"))
CLUSTER_GRPC_PORT = int(os.environ.get("FRESHKB_TEST_WEAVIATE_CLUSTER_GRPC_PORT", "15300"))
NODES = 3
# A restarted node's copy caught up ~30 s after it was back (async replication's default
# 30 s comparison period; measured), with slack for 2 busy cores.
CATCH_UP_SECONDS = 75.0
MANUALS = 8


# -- the port plan and the retry, no server -----------------------------------------------------


def test_one_node_keeps_the_single_servers_ports_data_dir_and_raft_join() -> None:
    settings = Settings(weaviate_http_port=18080, weaviate_grpc_port=15051)
    env = server.server_env(settings)
    assert {key: env[key] for key in env if "PORT" in key or "RAFT" in key} == {
        "GRPC_PORT": "15051",
        "CLUSTER_GOSSIP_BIND_PORT": "18180",
        "CLUSTER_DATA_BIND_PORT": "18181",
        "RAFT_PORT": "18182",
        "RAFT_INTERNAL_RPC_PORT": "18183",
        "RAFT_JOIN": "freshkb-node1:18183",
        "RAFT_BOOTSTRAP_EXPECT": "1",
    }
    assert env["PERSISTENCE_DATA_PATH"] == str(settings.weaviate_data_dir)
    assert env["CLUSTER_HOSTNAME"] == "freshkb-node1" and "CLUSTER_JOIN" not in env
    assert server.managed_process(settings).pid_file.parent == settings.weaviate_data_dir


def test_cluster_nodes_own_disjoint_port_blocks_and_data_dirs() -> None:
    settings = Settings(weaviate_http_port=8080, weaviate_grpc_port=50051, weaviate_nodes=3)
    nodes = managed_nodes(settings)
    ports = [port for node in nodes for port in node.ports()]
    assert len(ports) == len(set(ports)) == 18
    assert [node.http_port for node in nodes] == [8080, 8090, 8100]
    assert len({node.data_dir for node in nodes}) == 3
    envs = [server.server_env(settings, node, nodes) for node in nodes]
    assert {env["RAFT_JOIN"] for env in envs} == {
        "freshkb-node1:8182,freshkb-node2:8192,freshkb-node3:8202"
    }
    assert [env["CLUSTER_JOIN"] for env in envs] == [
        "127.0.0.1:8190,127.0.0.1:8200",
        "127.0.0.1:8180,127.0.0.1:8200",
        "127.0.0.1:8180,127.0.0.1:8190",
    ]
    with pytest.raises(ConfigError, match="used twice"):
        managed_nodes(Settings(weaviate_http_port=8080, weaviate_grpc_port=8190, weaviate_nodes=3))


def test_election_errors_are_retried_and_other_errors_are_not() -> None:
    attempts: list[int] = []

    def leaderless_twice() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            body = {"error": [{"message": "grpc: the client connection is closing"}]}
            raise UnexpectedStatusCodeError("create", httpx.Response(500, json=body))
        return "created"

    assert through_election(leaderless_twice, "create", pause=0.01) == "created"
    assert len(attempts) == 3

    def refused() -> None:
        raise UnexpectedStatusCodeError("create", httpx.Response(422, json={"error": "bad"}))

    with pytest.raises(UnexpectedStatusCodeError):
        through_election(refused, "create", pause=0.01)

    def unreachable() -> None:
        raise WeaviateConnectionError("connection refused")

    with pytest.raises(TransientError, match="no Raft leader"):
        through_election(unreachable, "create", timeout=0.1, pause=0.01)


# -- a live cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    freshkb_env: dict[str, str], prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Three nodes started by the CLI (`weaviate up --nodes 3`), freshkb pointed at them with
    replication factor 3 and small ingest batches; every node stopped at the end."""
    env = {
        "FRESHKB_DATA_DIR": str(tmp_path_factory.mktemp("cluster-data")),
        "FRESHKB_WEAVIATE_HTTP_PORT": str(CLUSTER_HTTP_PORT),
        "FRESHKB_WEAVIATE_GRPC_PORT": str(CLUSTER_GRPC_PORT),
        "FRESHKB_WEAVIATE_REPLICATION_FACTOR": str(NODES),
        "FRESHKB_INGEST_BATCH_DOCUMENTS": "2",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    group = cli()
    try:
        started = CliRunner().invoke(group, ["weaviate", "up", "--nodes", str(NODES), "--json"])
        assert started.exit_code == 0, started.output
        yield Settings()
    finally:
        CliRunner().invoke(group, ["weaviate", "down"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cli() -> typer.Typer:
    """The weaviate commands as the lead registers them in freshkb/cli/app.py."""
    app = typer.Typer()
    app.add_typer(server_commands(WEAVIATE), name="weaviate")
    return app


@pytest.fixture(autouse=True)
def nodes_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the cluster, passed or failed, every node it killed is started again
    (server.up waits for each to be ready), so one test's failure half-way does not leave the
    next one a cluster with a node down (a CI run once failed two tests for one that way)."""
    yield
    if "cluster" in request.fixturenames:
        supervise(request.getfixturevalue("cluster"), delay=0.0)


@pytest.fixture(scope="module")
def manuals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of 8 outdoor manuals (Markdown) of the shared corpus: 4 batches of 2."""
    folder = tmp_path_factory.mktemp("manuals")
    manuals = sorted((shared_dir() / "corpus" / "policies" / "outdoor-manuals").glob("*.md"))
    for path in manuals[:MANUALS]:
        shutil.copy(path, folder / path.name)
    return folder


def manuals_source(folder: Path) -> dict[str, Any]:
    """Inline config of the manuals source."""
    return {"name": "manuals", "kind": "documents", "location": str(folder), "owner": "tests"}


def nodes_of(settings: Settings) -> list[WeaviateNode]:
    """The cluster's nodes."""
    return managed_nodes(settings, NODES)


def kill(node: WeaviateNode) -> None:
    """SIGKILL one node: no shutdown of its own, as when its host dies."""
    pid = server.node_process(node).read_pid()
    assert pid is not None, f"{node.name} is not running"
    os.kill(pid, signal.SIGKILL)
    server.node_process(node).stop(timeout=5)  # reaps it and forgets its pid file


def leader_node(settings: Settings) -> WeaviateNode:
    """The node that is the Raft leader."""
    for node in nodes_of(settings):
        name = raft_leader(node.url)
        if name:
            return next(each for each in nodes_of(settings) if each.name == name)
    raise AssertionError("no node names a Raft leader")


def query_vector(text: str) -> list[float]:
    """The configured model's vector of `text`."""
    from freshkb.embeddings.embedder import get_embedder

    settings = Settings()
    return list(get_embedder(settings.embedding_model, settings.embedding_device).embed([text])[0])


def count_at_one(node: WeaviateNode, collection: str) -> int:
    """Objects of `collection` read through `node` at consistency ONE: its own copy (a node
    back from the dead answers its stale count here until it has caught up; measured)."""
    client = weaviate.connect_to_local(port=node.http_port, grpc_port=node.grpc_port)
    try:
        handle = client.collections.get(collection).with_consistency_level(ConsistencyLevel.ONE)
        return sum(1 for _ in handle.iterator(return_properties=[]))
    finally:
        client.close()


def supervise(settings: Settings, delay: float = 2.0, attempts: int = 5) -> None:
    """Start the stopped nodes again after `delay` s, again if one fails to start, as systemd's
    Restart=always would (the test ports lie in Linux's ephemeral range, so a client socket
    can hold a dead node's port for a moment)."""
    time.sleep(delay)
    for attempt in range(attempts):
        try:
            server.up(settings, NODES)
            return
        except TransientError:
            if attempt == attempts - 1:
                raise  # a node that will not come back fails loudly, not the next test
            time.sleep(2.0)


def live_collection(settings: Settings) -> str:
    """The physical collection behind the documents alias."""
    with open_store(settings) as store:
        name = store.live_collection(SourceKind.DOCUMENTS)
    assert name is not None
    return name


def wait_until_every_node_holds(settings: Settings, expected: int) -> float:
    """Restart every stopped node, then wait until each one answers `expected` objects of the
    live documents collection at consistency ONE; the seconds it took."""
    started = time.monotonic()
    supervise(settings, delay=0.0)
    name = live_collection(settings)
    counts: dict[str, int] = {}
    while time.monotonic() - started < CATCH_UP_SECONDS:
        counts = {node.name: count_at_one(node, name) for node in nodes_of(settings)}
        if all(count == expected for count in counts.values()):
            return time.monotonic() - started
        time.sleep(1.0)
    raise AssertionError(f"nodes never all held {expected} objects of {name}: {counts}")


class KillAfterFirstWrite(threading.Thread):
    """SIGKILLs `victim` as soon as the documents alias shows objects through `watch`."""

    def __init__(self, watch: WeaviateNode, victim: WeaviateNode):
        super().__init__(daemon=True)
        self.watch, self.victim = watch, victim
        self.objects_at_kill: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        """Poll the object count every 50 ms; kill once it is above zero."""
        client = weaviate.connect_to_local(
            port=self.watch.http_port, grpc_port=self.watch.grpc_port
        )
        try:
            while not self.done.is_set():
                try:
                    total = client.collections.get(POLICY_ALIAS).aggregate.over_all().total_count
                except Exception:  # no alias before the first batch creates it
                    total = 0
                if total and not self.done.is_set():  # the test may have ended meanwhile
                    kill(self.victim)
                    self.objects_at_kill = int(total)
                    return
                time.sleep(0.05)
        finally:
            client.close()


@pytest.mark.integration
@pytest.mark.timeout(300)  # the first test pays for the fixtures: Prefect's server, the cluster
def test_cluster_up_reports_every_node_ready_with_its_ports_and_a_leader(cluster: Settings):
    shown = CliRunner().invoke(cli(), ["weaviate", "status", "--json"])
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)
    assert status["running"] is True
    assert [node["name"] for node in status["nodes"]] == [
        "freshkb-node1",
        "freshkb-node2",
        "freshkb-node3",
    ]
    assert all(node["ready"] and node["pid"] for node in status["nodes"])
    assert [node["http_port"] for node in status["nodes"]] == [
        CLUSTER_HTTP_PORT + 10 * i for i in range(NODES)
    ]
    assert status["leader"] in {node["name"] for node in status["nodes"]}


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_node_killed_mid_ingest_the_ingest_completes_and_the_node_catches_up(
    cluster: Settings, manuals: Path
):
    from freshkb.flows.ingest import ingest_source

    nodes = nodes_of(cluster)
    leader = leader_node(cluster)
    # Neither the node the flow's clients talk to first nor the leader: this is about copies.
    victim = next(node for node in nodes[1:] if node != leader)
    killer = KillAfterFirstWrite(watch=nodes[0], victim=victim)
    killer.start()
    started = time.monotonic()
    try:
        report = ingest_source(source_config=manuals_source(manuals))
    finally:
        killer.done.set()
        killer.join(timeout=10)
    ingest_seconds = time.monotonic() - started
    assert killer.objects_at_kill is not None, "the node was never killed"
    assert report.status == "completed", report.error
    assert report.objects_failed == [] and report.documents_failed == 0
    assert 0 < killer.objects_at_kill < report.objects_written == report.chunks_embedded
    assert not server.node_process(victim).is_alive()

    with open_store(cluster) as store:
        hits = store.search("How do I set up the tent?", query_vector("set up the tent"), k=3)
        assert hits, "a search with one node down found nothing"
    # Counts are read through each node below: an aggregate sent in the seconds before the
    # cluster notices a death can wait for the dead node until the client's 30 s deadline.

    seconds = wait_until_every_node_holds(cluster, report.objects_written)
    print(
        f"\ningest of {report.objects_written} objects in {ingest_seconds:.1f}s, {victim.name} "
        f"killed at {killer.objects_at_kill}; every node caught up {seconds:.1f}s after restart"
    )


@pytest.mark.integration
@pytest.mark.timeout(200)
def test_client_node_killed_between_runs_answers_and_ingests_keep_coming(
    cluster: Settings, manuals: Path
):
    from freshkb.flows.ingest import ingest_source

    nodes = nodes_of(cluster)
    vector = query_vector("set up the tent")
    # Held across the kill, as the answer service holds its store for its whole life.
    store = WeaviateStore.connected(cluster)
    try:
        before = store.count(SourceKind.DOCUMENTS)
        assert store.search("How do I set up the tent?", vector, k=3)
        kill(nodes[0])  # the node the store talks to
        started = time.monotonic()
        hits = store.search("How do I set up the tent?", vector, k=3)
        failover_seconds = time.monotonic() - started
        assert hits and failover_seconds < 10

        manual = sorted((shared_dir() / "corpus" / "policies" / "outdoor-manuals").glob("*.md"))
        shutil.copy(manual[MANUALS], manuals / manual[MANUALS].name)
        report = ingest_source(source_config=manuals_source(manuals))
        assert report.status == "completed", report.error
        assert report.documents_new == 1 and report.objects_written > 0
        expected = before + report.objects_written
        # Read back by id at QUORUM, with one node of three still down: every chunk is there.
        stored = store.stored_documents("manuals", SourceKind.DOCUMENTS).values()
        chunks = [ExpectedDocument(doc.document_id, doc.chunk_count) for doc in stored]
        assert sum(doc.chunk_count for doc in chunks) == expected
        assert store.missing(SourceKind.DOCUMENTS, chunks) == []
        assert store.search("How do I set up the tent?", vector, k=3)

        with pytest.raises(ConfigError, match="FRESHKB_WEAVIATE_REPLICATION_FACTOR"):
            store.create_version(SourceKind.DOCUMENTS, "any-model", 3, "too-many-copies")
    finally:
        store.close()
    seconds = wait_until_every_node_holds(cluster, expected)
    print(
        f"\nsearch failed over in {failover_seconds:.2f}s; {nodes[0].name} back in {seconds:.1f}s"
    )


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_raft_leader_killed_a_rebuild_creates_and_switches_after_the_election(
    cluster: Settings, manuals: Path, monkeypatch: pytest.MonkeyPatch
):
    from freshkb.flows.rebuild import rebuild_index
    from freshkb.store import cluster as cluster_module

    retried: list[str] = []
    real = cluster_module.during_election

    def seen(exc: Exception) -> bool:
        if real(exc):
            retried.append(str(exc)[:200])
            return True
        return False

    monkeypatch.setattr(cluster_module, "during_election", seen)
    previous = live_collection(cluster)
    with open_store(cluster) as store:
        expected = store.count(SourceKind.DOCUMENTS)
        model_id, dimension = store.collection_model(previous)
    assert model_id and dimension
    leader = leader_node(cluster)
    kill(leader)
    started = time.monotonic()
    # A supervisor (systemd, Kubernetes) starts a crashed node again. It has to here: with
    # replication factor 3 on 3 nodes a new collection needs every node (test above).
    restart = threading.Thread(target=supervise, args=(cluster,), daemon=True)
    restart.start()
    try:
        # A rebuild's first schema change, sent at once: the cluster has no leader yet. The
        # survivor holds a request until a leader answers (up to the client's timeout, 30 s by
        # default): a 3 s timeout makes every wait longer than that an error the retry meets.
        survivor = next(node for node in nodes_of(cluster) if node != leader)
        client = weaviate.connect_to_local(
            port=survivor.http_port,
            grpc_port=survivor.grpc_port,
            additional_config=AdditionalConfig(timeout=Timeout(init=5, query=3, insert=3)),
        )
        store = WeaviateStore(client, Replication.from_settings(cluster))
        try:
            version = store.create_version(SourceKind.DOCUMENTS, model_id, dimension, "test")
            elected = time.monotonic() - started
            store.drop_version(version)
        finally:
            store.close()
    finally:
        restart.join()
    assert retried, "the create never met the election, so it proved nothing about the retry"
    # A whole rebuild then creates, fills and switches the alias on the new leader.
    report = rebuild_index(kind="documents", sources=[manuals_source(manuals)])
    assert report.promoted, report.error
    assert report.previous == previous and report.version != previous
    with open_store(cluster) as store:
        assert store.live_collection(SourceKind.DOCUMENTS) == report.version
        assert store.count(SourceKind.DOCUMENTS) == expected
        assert store.search("How do I set up the tent?", query_vector("set up the tent"), k=3)
    seconds = time.monotonic() - started
    print(
        f"\n{leader.name} (leader) killed; create succeeded after {elected:.1f}s "
        f"({len(retried)} election errors retried); rebuild done {seconds:.1f}s after the kill"
    )
