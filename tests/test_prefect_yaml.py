"""prefect.yaml: every deployment points at a real flow, with parameters it accepts and a valid
schedule, and names a declared source."""

from __future__ import annotations

import yaml
from conftest import REPO_ROOT
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from freshkb.core.sources import load_sources


def test_prefect_deployments_load_their_flows_with_valid_parameters_and_schedules():
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    declared = {source.name for source in load_sources(REPO_ROOT / "freshkb.yaml")}
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO_ROOT / deployment["entrypoint"]))
        flow.validate_parameters(deployment.get("parameters") or {})
        source = (deployment.get("parameters") or {}).get("source")
        assert source is None or source in declared, f"{deployment['name']}: unknown {source}"
        assert deployment["schedules"], f"{deployment['name']} has no schedule"
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
