"""`freshkb` command line: run the managed Weaviate, ingest sources, search the index.

This module only wires the commands; each group lives in its own module. The command modules
import Prefect, torch, the Weaviate client and FastAPI inside the commands that use them, so
`freshkb --help` and the light commands start in a second instead of fifteen.
"""

from __future__ import annotations

import os

# Set before the command modules import Hugging Face and Prefect, which read them on import.
# Models are read from installed packages or local paths; never reach for a hub implicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Prefect's local server would otherwise try to send usage telemetry from every run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import typer

from freshkb.cli import answers, evaluation, ingestion, monitoring, promotion, uploads, versions
from freshkb.cli.escalations import escalations_app
from freshkb.cli.prefect_ops import PREFECT, deploy
from freshkb.cli.prefect_runs import allow_slow_prefect_start
from freshkb.cli.review import drift, review_app
from freshkb.cli.servers import LLM, WEAVIATE, server_commands
from freshkb.cli.workers import workers_app

allow_slow_prefect_start()  # before any command imports Prefect

app = typer.Typer(
    help="Keep a customer-service knowledge base fresh and answerable.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# In the order `freshkb --help` has always listed them.
app.add_typer(server_commands(WEAVIATE), name="weaviate")
app.command("ingest")(ingestion.ingest)
app.command("search")(answers.search)
app.command("status")(ingestion.status)
app.command("versions")(versions.versions)
app.command("rollback")(versions.rollback)
app.command("rebuild")(versions.rebuild)
app.add_typer(escalations_app, name="escalations")
app.add_typer(server_commands(LLM), name="llm")
app.command("serve")(answers.serve)
app.command("ask")(answers.ask)
app.command("sources")(ingestion.sources)
app.command("upload")(uploads.upload)
app.add_typer(server_commands(PREFECT), name="prefect")
app.command("deploy")(deploy)
app.add_typer(workers_app, name="workers")
app.add_typer(monitoring.answers_app, name="answers")
app.command("cost")(monitoring.cost)
app.add_typer(review_app, name="review")
app.command("drift")(drift)
app.command("promote")(promotion.promote)
app.command("promotions")(promotion.promotions)
app.command("eval")(evaluation.evaluate)
