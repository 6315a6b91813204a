"""The job registry: one SQLAlchemy table of jobs (SQLite file by default, PostgreSQL works too)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Index, String, Text, UniqueConstraint, create_engine, event,
                        inspect, text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.states import QUEUED, TERMINAL_STATES


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """One slwtune job as the service knows it; Ray and MLflow hold the live truth."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("principal", "idempotency_key", name="uq_jobs_principal_idempotency_key"),
        Index("ix_jobs_principal_created", "principal", "created_at"),
        Index("ix_jobs_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    phase: Mapped[str | None] = mapped_column(String(16), default=None)
    progress: Mapped[str | None] = mapped_column(Text, default=None)
    chosen: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    ray_submission_id: Mapped[str | None] = mapped_column(String(64), default=None)
    ray_status: Mapped[str | None] = mapped_column(String(16), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    mlflow_tracking_uri: Mapped[str | None] = mapped_column(Text, default=None)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64), default=None)
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # What the driver's report says once the job ended (slwtune.metrics.OUTCOME_*), and the report's
    # fields the job view shows (full_run, control, baseline_wins, message, warnings, disk_bytes).
    outcome: Mapped[str | None] = mapped_column(String(32), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Each time this service resubmitted a lost driver: {at, reason, ray_submission_id, resumed}.
    restarts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and cross-thread connections."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Routes run in a thread pool: allow as many pooled connections as busy threads.
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                           pool_size=20, max_overflow=20)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def create_tables(engine: Engine) -> None:
    """The tables, and any column a newer version added to an existing registry (all nullable)."""
    Base.metadata.create_all(engine)
    add_missing_columns(engine)


def add_missing_columns(engine: Engine) -> None:
    """`ALTER TABLE ... ADD COLUMN` for the model's columns a registry made by an older version lacks.

    The registry outlives API upgrades (a SQLite file, a compose PostgreSQL volume); new columns are
    nullable, so adding them is all an upgrade needs.
    """
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspect(engine).get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have]
        with engine.begin() as conn:
            for column in missing:
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite drops the timezone of stored datetimes; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
