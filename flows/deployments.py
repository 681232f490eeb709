"""The Prefect deployments of freshkb, derived from the sources of freshkb.yaml.

One deployment per declared source (flow `ingest-source`, deployment named after the source),
scheduled by the source's `schedule:` or, by default, at half its freshness SLA; a nightly
refresh of every source; and a freshness check every ten minutes. The same plans are either
registered through Prefect's API (`freshkb deploy`) or written out as a prefect.yaml for
`prefect deploy --all` (`freshkb deploy --write-prefect-yaml`), so the schedules and the
config cannot disagree.

Each source deployment allows one active run (collision strategy ENQUEUE: a second run waits
as AwaitingConcurrencySlot instead of occupying a worker process), and every ingest, from any
deployment or caller, also holds the source's global concurrency limit of one slot
(flows/deployed.py `source_slot`), which this module creates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from freshkb.core.sources import AnySource, SourceSchedule
from freshkb.flows.deployed import SOURCE_FLOW, source_limit_name
from freshkb.flows.prefect_server import POOL, api_client

MODULE = "freshkb.flows.deployed"
NIGHTLY = SourceSchedule(cron="30 2 * * *")
FRESHNESS_CHECK = SourceSchedule(interval_seconds=600)
# Interval schedules count from a fixed moment, so an hourly source runs on the hour and the
# generated prefect.yaml is the same on every machine.
ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)
TIMEZONE = "UTC"
JOB_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment to register: which flow, with which parameters, when."""

    flow_name: str
    name: str
    entrypoint: str
    description: str
    schedule: SourceSchedule
    # Where the run starts (a pull step): without one, Prefect 3.8 copies the deployment's
    # folder, a whole checkout and its virtualenv, into a temporary workspace for every run.
    working_directory: str
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ("freshkb",)
    one_run_at_a_time: bool = False

    @property
    def full_name(self) -> str:
        """`flow/deployment`, as `prefect deployment run` takes it."""
        return f"{self.flow_name}/{self.name}"


@dataclass(frozen=True)
class RegisteredDeployment:
    """A deployment the server now holds."""

    name: str
    id: str
    schedule: str


def deployment_plans(
    sources: Sequence[AnySource], config_file: str, working_directory: str
) -> list[DeploymentPlan]:
    """The deployments of these sources, each run started in `working_directory` and reading
    `config_file` (relative to it, or absolute)."""
    plans = [
        DeploymentPlan(
            flow_name=SOURCE_FLOW,
            name=source.name,
            entrypoint=f"{MODULE}.ingest_source_deployed",
            description=f"Ingest {source.name} ({source.kind.value}, owner {source.owner}).",
            schedule=source.run_schedule,
            working_directory=working_directory,
            parameters={"source": source.name, "config_file": config_file},
            tags=("freshkb", f"source:{source.name}"),
            one_run_at_a_time=True,
        )
        for source in sources
    ]
    plans.append(
        DeploymentPlan(
            flow_name="ingest-all-sources",
            name="nightly",
            entrypoint=f"{MODULE}.ingest_all_deployed",
            description="Every declared source, once a night, as a safety net.",
            schedule=NIGHTLY,
            working_directory=working_directory,
            parameters={"config_file": config_file},
        )
    )
    plans.append(
        DeploymentPlan(
            flow_name="check-freshness",
            name="every-10-minutes",
            entrypoint=f"{MODULE}.check_freshness",
            description="Emit freshkb.source.stale for every source past its freshness SLA.",
            schedule=FRESHNESS_CHECK,
            working_directory=working_directory,
            parameters={"config_file": config_file},
        )
    )
    return plans


def register(
    plans: Sequence[DeploymentPlan],
    sources: Sequence[AnySource],
    api_url: str,
    pool: str = POOL,
) -> list[RegisteredDeployment]:
    """Create or update every planned deployment, and each source's concurrency limit."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import RunnerDeployment
    from prefect.runner.storage import LocalStorage
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with api_client(api_url) as client:
        for source in sources:
            client.upsert_global_concurrency_limit_by_name(source_limit_name(source.name), 1)
    one_at_a_time = ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
    )
    registered = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for plan in plans:
            deployment = RunnerDeployment.from_entrypoint(
                plan.entrypoint,
                name=plan.name,
                schedules=[_prefect_schedule(plan.schedule)],
                concurrency_limit=one_at_a_time if plan.one_run_at_a_time else None,
                parameters=plan.parameters,
                description=plan.description,
                tags=list(plan.tags),
                work_pool_name=pool,
                job_variables={"env": JOB_ENV},
            )
            deployment.storage = LocalStorage(plan.working_directory)  # its pull step
            deployment_id = deployment.apply(work_pool_name=pool)
            registered.append(
                RegisteredDeployment(plan.full_name, str(deployment_id), describe(plan.schedule))
            )
    return registered


def describe(schedule: SourceSchedule) -> str:
    """A schedule in words: `cron 30 2 * * *` or `every 3600s`."""
    if schedule.cron:
        return f"cron {schedule.cron}"
    return f"every {schedule.interval_seconds:.0f}s"


def _prefect_schedule(schedule: SourceSchedule) -> Any:
    from prefect.schedules import Cron, Interval

    if schedule.cron:
        return Cron(schedule.cron, timezone=TIMEZONE)
    seconds = schedule.interval_seconds or 0.0
    return Interval(timedelta(seconds=seconds), anchor_date=ANCHOR, timezone=TIMEZONE)


def prefect_yaml(plans: Sequence[DeploymentPlan], prefect_version: str) -> str:
    """The prefect.yaml declaring these deployments, for `prefect deploy --all`."""
    spec = {
        "name": "freshkb",
        "prefect-version": prefect_version,
        "build": None,
        "push": None,
        "deployments": [_yaml_deployment(plan) for plan in plans],
    }
    header = (
        "# Generated from freshkb.yaml by `freshkb deploy --write-prefect-yaml`: edit the sources\n"
        "# (their `schedule:` and `freshness:`) there and regenerate; tests check the two agree.\n"
        "# `freshkb deploy` registers the same deployments without this file. With it instead:\n"
        "#   freshkb prefect up   # server, UI, worker on pool freshkb-local\n"
        "#   FRESHKB_REPO_DIR=$PWD PREFECT_API_URL=http://127.0.0.1:4200/api prefect deploy --all\n"
        "# (`prefect deploy` does not create the per-source concurrency limits; `freshkb deploy`\n"
        "# does.)\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False, width=100)


def _yaml_deployment(plan: DeploymentPlan) -> dict[str, Any]:
    schedule: dict[str, Any]
    if plan.schedule.cron:
        schedule = {"cron": plan.schedule.cron, "timezone": TIMEZONE}
    else:
        seconds = plan.schedule.interval_seconds or 0.0
        schedule = {
            "interval": int(seconds) if seconds.is_integer() else seconds,
            "anchor_date": ANCHOR.isoformat(),
            "timezone": TIMEZONE,
        }
    entry: dict[str, Any] = {
        "name": plan.name,
        "description": plan.description,
        "entrypoint": plan.entrypoint,
        "parameters": plan.parameters,
        "tags": list(plan.tags),
        "work_pool": {
            "name": POOL,
            "work_queue_name": "default",
            "job_variables": {"env": dict(JOB_ENV)},
        },
        "schedules": [schedule],
        "pull": [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": plan.working_directory
                }
            }
        ],
    }
    if plan.one_run_at_a_time:
        entry["concurrency_limit"] = {"limit": 1, "collision_strategy": "ENQUEUE"}
    return entry
