"""Mass-deletion circuit breaker: a pull that would wipe much of a source is refused.

An emptied folder, a mount that came back empty or a SQL query gone wrong looks exactly like a
real clean-up to a sync; deleting is the one step that cannot be undone by the next run, so a
pull that would delete more than `max_delete_share` of the source's live documents, or that
returned nothing at all, stops the run before anything is deleted. An operator who means it
reruns with `--allow-mass-delete`.
"""

from __future__ import annotations

from freshkb.core.errors import DataError
from freshkb.core.records import SyncPlan


class MassDeletionRefused(DataError):
    """The pull would delete too much of the source; nothing was deleted."""


def check_deletions(
    source: str, plan: SyncPlan, live_documents: int, max_share: float, allow: bool
) -> None:
    """Raise MassDeletionRefused unless the plan's deletions are within bounds or allowed."""
    if allow or live_documents == 0:
        return
    pulled = len(plan.new) + len(plan.changed) + len(plan.unchanged) + len(plan.kept_after_failure)
    fix = (
        "nothing was deleted and the live index is unchanged; check the source, or rerun "
        "with --allow-mass-delete if the clean-up is real"
    )
    if pulled == 0:
        raise MassDeletionRefused(
            f"source {source!r} returned nothing at all while {live_documents} of its documents "
            f"are live; {fix}"
        )
    share = len(plan.deleted) / live_documents
    if share > max_share:
        raise MassDeletionRefused(
            f"source {source!r}: this pull would delete {len(plan.deleted)} of its "
            f"{live_documents} live documents ({share:.0%}, more than the {max_share:.0%} "
            f"allowed by `expectations.max_delete_share`); {fix}"
        )
