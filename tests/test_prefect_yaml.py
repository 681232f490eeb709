"""prefect.yaml is generated from freshkb.yaml: the committed file is what the generator writes
today, every deployment points at a real flow with parameters it accepts and a valid schedule,
and a source's schedule comes from its config or, by default, from its freshness SLA."""

from __future__ import annotations

import os
import subprocess
import sys

import prefect
import pytest
import yaml
from conftest import REPO_ROOT
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.flows import load_flow_from_entrypoint
from pydantic import ValidationError

from freshkb.core.sources import SCHEDULE_FLOOR_SECONDS, SourceSchedule, load_sources, parse_source
from freshkb.flows.deployments import deployment_plans, prefect_yaml

REGENERATE = "freshkb deploy --write-prefect-yaml prefect.yaml"


def generated() -> str:
    """prefect.yaml as the generator writes it from the repository's freshkb.yaml."""
    sources = load_sources(REPO_ROOT / "freshkb.yaml")
    plans = deployment_plans(sources, "freshkb.yaml", "{{ $FRESHKB_REPO_DIR }}")
    return prefect_yaml(plans, prefect.__version__)


def test_committed_prefect_yaml_is_the_one_generated_from_freshkb_yaml():
    committed = (REPO_ROOT / "prefect.yaml").read_text()
    assert committed == generated(), f"prefect.yaml is out of date: run `{REGENERATE}`"


def test_every_declared_source_has_a_deployment_plus_nightly_and_freshness_check():
    spec = yaml.safe_load(generated())
    declared = {source.name for source in load_sources(REPO_ROOT / "freshkb.yaml")}
    per_source = {
        d["parameters"]["source"] for d in spec["deployments"] if "source" in d["parameters"]
    }
    assert per_source == declared
    entrypoints = {d["entrypoint"].rsplit(".", 1)[1] for d in spec["deployments"]}
    assert {"ingest_all_deployed", "check_freshness"} <= entrypoints
    for deployment in spec["deployments"]:
        if "source" in deployment["parameters"]:
            assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_prefect_deployments_load_their_flows_with_valid_parameters_and_schedules():
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        flow.validate_parameters(deployment.get("parameters") or {})
        assert deployment["schedules"], f"{deployment['name']} has no schedule"
        for schedule in deployment["schedules"]:
            if "cron" in schedule:
                CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
            else:
                IntervalSchedule(interval=schedule["interval"], timezone=schedule["timezone"])
        assert deployment["pull"], "a pull step keeps Prefect from copying the checkout"


def test_sample_schedules_derive_from_their_freshness_sla():
    schedules = {s.name: s.run_schedule for s in load_sources(REPO_ROOT / "freshkb.yaml")}
    assert schedules["sample-policies"] == SourceSchedule(interval_seconds=3600)  # SLA 2h
    assert schedules["sample-customers"] == SourceSchedule(interval_seconds=900)  # SLA 30m


@pytest.mark.parametrize(
    ("schedule", "max_age", "expected"),
    [
        ("*/5  * * * *", "24h", SourceSchedule(cron="*/5 * * * *")),
        ("10s", "24h", SourceSchedule(interval_seconds=10)),
        (None, "24h", SourceSchedule(interval_seconds=43200)),
        (None, "1m", SourceSchedule(interval_seconds=SCHEDULE_FLOOR_SECONDS)),
    ],
)
def test_schedule_is_cron_or_interval_else_half_the_sla_with_a_floor(schedule, max_age, expected):
    source = parse_source(
        {
            "name": "kb",
            "kind": "documents",
            "location": "/srv/kb",
            "schedule": schedule,
            "freshness": {"max_age": max_age},
        }
    )
    assert source.run_schedule == expected


@pytest.mark.parametrize("schedule", ["hourly", "0s", "* * *"])
def test_a_schedule_that_is_neither_cron_nor_interval_is_refused(schedule):
    with pytest.raises(ValidationError, match="schedule"):
        parse_source({"name": "kb", "kind": "documents", "location": "/x", "schedule": schedule})


@pytest.mark.timeout(120)
def test_cli_writes_the_same_prefect_yaml(tmp_path):
    """`freshkb deploy --write-prefect-yaml` from the repo root writes the committed file."""
    target = tmp_path / "prefect.yaml"
    env = {**os.environ, "FRESHKB_CONFIG": str(REPO_ROOT / "freshkb.yaml")}
    written = subprocess.run(
        [sys.executable, "-m", "freshkb.cli", "deploy", "--write-prefect-yaml", str(target)],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
        check=False,
    )
    assert written.returncode == 0, written.stderr[-2000:]
    # Written elsewhere, the config path is relative to where the file lands.
    spec = yaml.safe_load(target.read_text())
    expected = os.path.relpath(REPO_ROOT / "freshkb.yaml", tmp_path)
    assert {d["parameters"]["config_file"] for d in spec["deployments"]} == {expected}
