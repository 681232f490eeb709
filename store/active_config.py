"""The active configuration of the answer path, and the audit log of every promotion attempt.

What the answer service runs (LLM endpoint and model, prompt version, embedding model) is the
configuration last made active by `freshkb promote`, which only activates a change that passed
the SLO gate (or an operator forced, giving a reason). Both live in the operational database
beside the freshness ledger: `active_configurations` keeps every activation in order (the
newest is the active one, each names the one it replaced, so a rollback walks back), and
`promotion_audit` keeps every attempt, refused ones included.

With nothing promoted yet, the settings (config file and environment) are used as they are; the
first activation records them as a baseline, so rolling back the first promotion returns there.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError
from freshkb.core.sql import as_utc, sql_engine

log = logging.getLogger(__name__)

# refused: an SLO failed; invalid: the candidate did not validate (a missing prompt file, a model
# that does not load); failed: the evaluation itself could not run; forced: activated despite a
# failed SLO; rolled_back: an operator's `promote --rollback`; reverted: an activation undone
# because its index rebuild failed.
Outcome = Literal["promoted", "forced", "refused", "invalid", "failed", "rolled_back", "reverted"]
ACTIVATING: frozenset[str] = frozenset({"promoted", "forced"})
RESTORING: frozenset[str] = frozenset({"rolled_back", "reverted"})

metadata = sa.MetaData()

active_table = sa.Table(
    "active_configurations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("llm_base_url", sa.String(512), nullable=False),
    sa.Column("llm_model", sa.String(256), nullable=False),
    sa.Column("prompt_version", sa.String(64), nullable=False),
    sa.Column("embedding_model", sa.String(512), nullable=False),
    sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("activated_by", sa.String(128), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # baseline | promoted | forced | ...
    sa.Column("previous_id", sa.Integer, nullable=True),  # what a rollback returns to
    sa.Column("audit_id", sa.Integer, nullable=True),
    sa.Column("eval_summary", sa.Text, nullable=True),  # JSON: the gate's verdict that allowed it
)

audit_table = sa.Table(
    "promotion_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("operator", sa.String(128), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # promote | rollback
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("from_config", sa.Text, nullable=False),  # JSON AnswerPathConfig
    sa.Column("to_config", sa.Text, nullable=False),
    sa.Column("eval_passed", sa.Boolean, nullable=True),  # None: no evaluation ran
    sa.Column("failed_slos", sa.Text, nullable=False),  # JSON list of "name: measured vs target"
    sa.Column("eval_summary", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=False),  # the operator's words with --force
    sa.Column("detail", sa.Text, nullable=False),  # why it was refused, reverted, ...
)


@dataclass(frozen=True)
class AnswerPathConfig:
    """What a promotion changes: the LLM endpoint and model, the prompt, the embedding model."""

    llm_base_url: str
    llm_model: str
    prompt_version: str
    embedding_model: str

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerPathConfig:
        """The configuration the settings describe."""
        return cls(
            settings.llm_base_url,
            settings.llm_model,
            settings.prompt_version,
            settings.embedding_model,
        )

    def changes_from(self, other: AnswerPathConfig) -> dict[str, tuple[str, str]]:
        """Field -> (other's value, this one's), for the fields that differ."""
        mine, theirs = asdict(self), asdict(other)
        return {name: (theirs[name], new) for name, new in mine.items() if theirs[name] != new}

    def describe_changes(self, before: AnswerPathConfig) -> str:
        """'llm_model a -> b; prompt_version v1 -> v2', or 'no change'."""
        changed = self.changes_from(before).items()
        return "; ".join(f"{name} {old} -> {new}" for name, (old, new) in changed) or "no change"


@dataclass(frozen=True)
class SloResult:
    """One SLO as the gate judged it; `measured` and `passed` are None when the evaluation did
    not measure it (listed, not failed)."""

    name: str
    bound: str  # min | max
    target: float
    measured: float | None
    passed: bool | None

    def describe(self) -> str:
        """'name: measured 0.12, max 0.05' (or 'not measured')."""
        seen = "not measured" if self.measured is None else f"measured {self.measured:.4g}"
        return f"{self.name}: {seen}, {self.bound} {self.target:.4g}"


@dataclass(frozen=True)
class EvalSummary:
    """What the gate's evaluation found: pass or fail, each SLO, the headline metrics."""

    passed: bool
    checks: tuple[SloResult, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    cases: str = ""

    @property
    def failed(self) -> list[str]:
        """The failed SLOs, each described."""
        return [check.describe() for check in self.checks if check.passed is False]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSummary:
        """Back from `to_dict`."""
        checks = tuple(SloResult(**check) for check in data.get("checks", ()))
        return cls(data["passed"], checks, data.get("metrics", {}), data.get("cases", ""))


@dataclass(frozen=True)
class ActiveConfig:
    """One activation: the configuration, who made it active when and how, what it replaced."""

    id: int
    config: AnswerPathConfig
    activated_at: datetime
    activated_by: str
    outcome: str  # baseline | promoted | forced | rolled_back | reverted
    previous_id: int | None
    eval_summary: EvalSummary | None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        summary = self.eval_summary.to_dict() if self.eval_summary else None
        when = self.activated_at.isoformat()
        return {**asdict(self), "activated_at": when, "eval_summary": summary}


@dataclass(frozen=True)
class PromotionAttempt:
    """One line of the promotion audit log."""

    operator: str
    action: Literal["promote", "rollback"]
    outcome: Outcome
    from_config: AnswerPathConfig
    to_config: AnswerPathConfig
    eval_summary: EvalSummary | None = None
    reason: str = ""
    detail: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int | None = None  # given by the audit log

    @property
    def failed_slos(self) -> list[str]:
        """The SLOs its evaluation failed."""
        return self.eval_summary.failed if self.eval_summary else []

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        summary = self.eval_summary.to_dict() if self.eval_summary else None
        return {
            **asdict(self),
            "at": self.at.isoformat(),
            "eval_summary": summary,
            "eval_passed": None if self.eval_summary is None else self.eval_summary.passed,
            "failed_slos": self.failed_slos,
        }


class PromotionLedger:
    """Reads and writes the active configuration and the promotion audit log."""

    def __init__(self, url: str):
        self.engine = sql_engine(url, metadata)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def active(self) -> ActiveConfig | None:
        """The active configuration, or None when nothing was ever promoted."""
        with self.engine.connect() as connection:
            return _newest(connection)

    def previous(self) -> ActiveConfig | None:
        """The configuration the active one replaced, which a rollback returns to."""
        with self.engine.connect() as connection:
            current = _newest(connection)
            if current is None or current.previous_id is None:
                return None
            return _read_active(connection, current.previous_id)

    def record(self, attempt: PromotionAttempt) -> ActiveConfig | None:
        """Keep an attempt in the audit log; a promoted or forced one becomes active (returned).

        Audit line and activation are one transaction: no configuration is active without the
        attempt that made it so.
        """
        if attempt.outcome in RESTORING:
            raise ValueError("a rollback goes through restore(), which finds its target")
        with self.engine.begin() as connection:
            audit_id = _insert_attempt(connection, attempt)
            if attempt.outcome not in ACTIVATING:
                return None
            current = _newest(connection)
            # The configured settings become the baseline, so the first promotion can be undone.
            previous_id = (
                current.id
                if current
                else _insert_active(
                    connection, attempt.from_config, "configuration file", "baseline", None, None
                )
            )
            new_id = _insert_active(
                connection,
                attempt.to_config,
                attempt.operator,
                attempt.outcome,
                previous_id,
                attempt.eval_summary,
                audit_id,
            )
            return _read_active(connection, new_id)

    def restore(
        self, operator: str, outcome: Outcome = "rolled_back", reason: str = "", detail: str = ""
    ) -> ActiveConfig:
        """Make the configuration the active one replaced active again, with its own history
        (so a second rollback goes one further back), and log it."""
        if outcome not in RESTORING:
            raise ValueError(f"restore() records a rollback or a revert, not {outcome!r}")
        with self.engine.begin() as connection:
            current = _newest(connection)
            target = None
            if current is not None and current.previous_id is not None:
                target = _read_active(connection, current.previous_id)
            if current is None or target is None:
                raise ConfigError(
                    "no previous configuration to return to: nothing was promoted before the "
                    "active one (see `freshkb promotions`)"
                )
            attempt = PromotionAttempt(
                operator, "rollback", outcome, current.config, target.config,
                target.eval_summary, reason, detail,
            )  # fmt: skip
            audit_id = _insert_attempt(connection, attempt)
            new_id = _insert_active(
                connection,
                target.config,
                operator,
                outcome,
                target.previous_id,
                target.eval_summary,
                audit_id,
            )
            return _read_active(connection, new_id)

    def attempts(self, limit: int = 50) -> list[PromotionAttempt]:
        """The latest attempts, newest first."""
        query = sa.select(audit_table).order_by(audit_table.c.id.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [_attempt(row) for row in connection.execute(query).mappings()]


def apply_active_config(settings: Settings, active: ActiveConfig | None) -> Settings:
    """The settings with the active configuration over them; unchanged when nothing is active."""
    if active is None:
        return settings
    return settings.model_copy(update=asdict(active.config))


def active_settings(settings: Settings) -> Settings:
    """The settings the answer service runs: the promoted configuration over `settings`.

    If the operational database cannot be read, the settings are used as configured (with a
    warning): the answer service keeps its availability, as it does when the ledger is down.
    """
    try:
        ledger = PromotionLedger(settings.ledger_database_url)
        try:
            return apply_active_config(settings, ledger.active())
        finally:
            ledger.close()
    except sa.exc.SQLAlchemyError as exc:
        log.warning("active configuration unreadable (%s); running the configured settings", exc)
        return settings


def _newest(connection: sa.Connection) -> ActiveConfig | None:
    query = sa.select(active_table).order_by(active_table.c.id.desc()).limit(1)
    row = connection.execute(query).mappings().first()
    return None if row is None else _active(row)


def _read_active(connection: sa.Connection, active_id: int | None) -> ActiveConfig:
    query = sa.select(active_table).where(active_table.c.id == active_id)
    return _active(connection.execute(query).mappings().one())


def _insert_active(
    connection: sa.Connection,
    config: AnswerPathConfig,
    by: str,
    outcome: str,
    previous_id: int | None,
    summary: EvalSummary | None,
    audit_id: int | None = None,
) -> int:
    values = {
        **asdict(config),
        "activated_at": datetime.now(UTC),
        "activated_by": by,
        "outcome": outcome,
        "previous_id": previous_id,
        "audit_id": audit_id,
        "eval_summary": None if summary is None else json.dumps(summary.to_dict()),
    }
    inserted = connection.execute(sa.insert(active_table).values(values))
    return int(inserted.inserted_primary_key[0])  # type: ignore[index]


def _insert_attempt(connection: sa.Connection, attempt: PromotionAttempt) -> int:
    summary = attempt.eval_summary
    values = {
        "at": attempt.at,
        "operator": attempt.operator,
        "action": attempt.action,
        "outcome": attempt.outcome,
        "from_config": json.dumps(asdict(attempt.from_config)),
        "to_config": json.dumps(asdict(attempt.to_config)),
        "eval_passed": None if summary is None else summary.passed,
        "failed_slos": json.dumps(attempt.failed_slos),
        "eval_summary": None if summary is None else json.dumps(summary.to_dict()),
        "reason": attempt.reason,
        "detail": attempt.detail,
    }
    inserted = connection.execute(sa.insert(audit_table).values(values))
    return int(inserted.inserted_primary_key[0])  # type: ignore[index]


def _summary(text: str | None) -> EvalSummary | None:
    return None if text is None else EvalSummary.from_dict(json.loads(text))


def _active(row: sa.RowMapping) -> ActiveConfig:
    return ActiveConfig(
        id=int(row["id"]),
        config=AnswerPathConfig(
            row["llm_base_url"], row["llm_model"], row["prompt_version"], row["embedding_model"]
        ),
        activated_at=as_utc(row["activated_at"]),
        activated_by=row["activated_by"],
        outcome=row["outcome"],
        previous_id=row["previous_id"],
        eval_summary=_summary(row["eval_summary"]),
    )


def _attempt(row: sa.RowMapping) -> PromotionAttempt:
    return PromotionAttempt(
        operator=row["operator"],
        action=row["action"],
        outcome=row["outcome"],
        from_config=AnswerPathConfig(**json.loads(row["from_config"])),
        to_config=AnswerPathConfig(**json.loads(row["to_config"])),
        eval_summary=_summary(row["eval_summary"]),
        reason=row["reason"],
        detail=row["detail"],
        at=as_utc(row["at"]),
        id=int(row["id"]),
    )
