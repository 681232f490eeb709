"""The benchmarks' shared set-up: freshkb, Prefect and the model hub pointed at a throw-away
directory and at Weaviate ports of their own, so a user's index and cache are never touched."""

from __future__ import annotations

import os
from pathlib import Path

WEAVIATE_HTTP_PORT = "28080"
WEAVIATE_GRPC_PORT = "25051"


def use_throwaway_environment(work: Path, config: Path | None = None) -> None:
    """Set the environment for a benchmark run in `work` (and the sources file, if given)."""
    os.environ.update(
        {
            "FRESHKB_DATA_DIR": str(work / "data"),
            "FRESHKB_WEAVIATE_HTTP_PORT": WEAVIATE_HTTP_PORT,
            "FRESHKB_WEAVIATE_GRPC_PORT": WEAVIATE_GRPC_PORT,
            "FRESHKB_PROGRESS": os.environ.get("FRESHKB_PROGRESS", "0"),
            "HF_HUB_OFFLINE": "1",
            "PREFECT_HOME": str(work / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # a new Prefect home's database is created at the ephemeral server's first start:
            # past Prefect's 20 s on a busy 2-core machine (flows run in-process then fail)
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        }
    )
    if config is not None:
        os.environ["FRESHKB_CONFIG"] = str(config)
    os.environ.pop("WEAVIATE_URL", None)  # always the managed server, on the ports above
