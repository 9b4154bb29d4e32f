"""The results store: every run, its configuration and its curves, written as they happen.

SQLAlchemy Core over any database URL (:func:`storage_url`); a SQLite file by default.

- ``runs``: one row per run: the full configuration (JSON), a content key that makes a
  finished run reusable, status (``running``, ``ok``, ``diverged``, ``failed``), final
  losses, the task's final metrics (JSON) and the wall-time split into data /
  forward+backward / optimizer step / evaluation.
- ``curve``: one row per logged step of a run (step, tokens, train loss, eval loss where
  evaluated, learning rate, gradient norm, wall time).
- ``study`` / ``study_run``: an arena invocation (its budget and settings) and the runs it
  uses, with each run's role (``trial`` number or ``seed`` rerun). A finished run can serve
  several studies with the same settings without being rerun.

A :class:`Cell` (workload, scale, steps, optimizer) is the unit the arena tunes; every run
belongs to the cell its configuration names (:attr:`RunRecord.cell`). A run in status
``running`` whose process died is simply restarted under the same key.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import sqlalchemy as sa

__all__ = [
    "Cell", "CurvePoint", "ResultStore", "RunRecord", "default_storage_url", "normalize_storage_url", "open_store",
    "storage_url",
]

_metadata = sa.MetaData()

runs_table = sa.Table(
    "optarena_runs",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("workload", sa.String(64), nullable=False),
    sa.Column("scale", sa.String(64), nullable=False),
    sa.Column("optimizer", sa.String(64), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("hparams", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("diverged_step", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("final_eval_loss", sa.Float, nullable=True),
    sa.Column("final_train_loss", sa.Float, nullable=True),
    sa.Column("metrics", sa.Text, nullable=True),  # JSON: every final metric the task evaluates (accuracy, ...)
    sa.Column("time_data", sa.Float, nullable=True),
    sa.Column("time_forward_backward", sa.Float, nullable=True),
    sa.Column("time_optimizer", sa.Float, nullable=True),
    sa.Column("time_eval", sa.Float, nullable=True),
    sa.Column("wall_time", sa.Float, nullable=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
)

curve_table = sa.Table(
    "optarena_curve",
    _metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("optarena_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("train_loss", sa.Float, nullable=True),
    sa.Column("eval_loss", sa.Float, nullable=True),
    sa.Column("lr", sa.Float, nullable=True),
    sa.Column("grad_norm", sa.Float, nullable=True),
    sa.Column("wall_time", sa.Float, nullable=True),
    # stability proxies (Wortsman et al., arXiv:2309.14322), where the model records them
    sa.Column("max_attn_logit", sa.Float, nullable=True),
    sa.Column("logit_rms", sa.Float, nullable=True),
)

study_table = sa.Table(
    "optarena_study",
    _metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

study_run_table = sa.Table(
    "optarena_study_run",
    _metadata,
    sa.Column("study", sa.String(200), sa.ForeignKey("optarena_study.name", ondelete="CASCADE"), primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("optarena_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # "trial" | "seed"
    sa.Column("trial", sa.Integer, nullable=True),
)

FINISHED = ("ok", "diverged")


def default_storage_url(out_dir: str | Path) -> str:
    """A SQLite file ``results.db`` in ``out_dir``."""
    return f"sqlite:///{Path(out_dir).resolve() / 'results.db'}"


def storage_url(storage: str | None, out_dir: str | Path) -> str:
    """``storage`` (any SQLAlchemy URL), else :func:`default_storage_url`; normalized."""
    return normalize_storage_url(storage or default_storage_url(out_dir))


def normalize_storage_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 (our ``postgres`` extra) unless psycopg2 is what is installed."""
    if url.startswith("postgresql://"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return url
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def open_store(url: str) -> "ResultStore":
    """The store at ``url``; several workers may create its tables at once (their races are retried)."""
    from optarena.arena.claims import retry_on_race

    return retry_on_race(lambda: ResultStore(url))


@dataclass(frozen=True)
class Cell:
    """The unit the arena tunes: one optimizer on one workload, scale and step budget.

    The cells of all optimizers that share (workload, scale, steps) form one *problem*:
    they are ranked against each other and scored together.
    """

    workload: str
    scale: str
    steps: int
    optimizer: str

    @property
    def label(self) -> str:
        return f"{self.workload}/{self.scale}/{self.optimizer}@{self.steps}"

    @property
    def problem(self) -> tuple[str, str, int]:
        return self.workload, self.scale, self.steps


@dataclass
class CurvePoint:
    step: int
    tokens: int
    train_loss: float | None
    eval_loss: float | None
    lr: float | None
    grad_norm: float | None
    wall_time: float | None
    max_attn_logit: float | None = None
    logit_rms: float | None = None


@dataclass
class RunRecord:
    id: int
    key: str
    workload: str
    scale: str
    optimizer: str
    seed: int
    steps: int
    hparams: dict[str, Any]
    config: dict[str, Any]
    status: str
    diverged_step: int | None
    error: str | None
    final_eval_loss: float | None
    final_train_loss: float | None
    metrics: dict[str, float | None]
    time_data: float | None
    time_forward_backward: float | None
    time_optimizer: float | None
    time_eval: float | None
    wall_time: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def cell(self) -> Cell:
        return Cell(self.workload, self.scale, self.steps, self.optimizer)


def _finite_or_none(x: float | None) -> float | None:
    """Databases disagree on NaN/inf; store them as NULL (the status says what happened)."""
    if x is None:
        return None
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


class ResultStore:
    """Thin access layer over the two tables; safe to share between processes via the database."""

    def __init__(self, url: str) -> None:
        self.url = normalize_storage_url(url)
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(self.url, future=True)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            _metadata.create_all(self.engine)
        except sa.exc.ArgumentError as err:
            raise ValueError(f"invalid storage URL {url!r}: {err}") from None

    # -- runs -----------------------------------------------------------------
    def get_run(self, key: str) -> RunRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.key == key)).mappings().first()
        return _to_record(row) if row else None

    def finished_run(self, key: str) -> RunRecord | None:
        """The run ``key`` if it has finished (``ok`` or ``diverged``): how results are read back, never retrained."""
        record = self.get_run(key)
        return record if record is not None and record.finished else None

    def start_run(self, key: str, *, config: dict[str, Any]) -> int:
        """Create (or reset, if a previous attempt did not finish) the run row; returns its id."""
        values = dict(
            workload=config["workload"], scale=config["scale"],
            optimizer=config["optimizer"], seed=config["seed"], steps=config["steps"],
            hparams=json.dumps(config["hparams"], sort_keys=True, default=str),
            config=json.dumps(config, sort_keys=True, default=str), status="running", diverged_step=None,
            error=None, final_eval_loss=None, final_train_loss=None, started_at=_now(), finished_at=None,
        )
        with self.engine.begin() as conn:
            existing = conn.execute(sa.select(runs_table.c.id).where(runs_table.c.key == key)).scalar()
            if existing is None:
                return int(conn.execute(sa.insert(runs_table).values(key=key, **values)).inserted_primary_key[0])
            conn.execute(sa.delete(curve_table).where(curve_table.c.run_id == existing))
            conn.execute(sa.update(runs_table).where(runs_table.c.id == existing).values(**values))
            return int(existing)

    def finish_run(self, run_id: int, *, status: str, diverged_step: int | None = None, error: str | None = None,
                   final_eval_loss: float | None = None, final_train_loss: float | None = None,
                   timing: dict[str, float] | None = None, metrics: dict[str, float] | None = None) -> None:
        """Record how a run ended; ``metrics`` holds the task's final evaluation (non-finite values become null)."""
        if status not in ("ok", "diverged", "failed"):
            raise ValueError(f"status must be ok, diverged or failed, got {status!r}")
        timing = timing or {}
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs_table).where(runs_table.c.id == run_id).values(
                    status=status, diverged_step=diverged_step, error=error,
                    final_eval_loss=_finite_or_none(final_eval_loss),
                    final_train_loss=_finite_or_none(final_train_loss),
                    metrics=json.dumps({k: _finite_or_none(v) for k, v in (metrics or {}).items()}, sort_keys=True),
                    time_data=timing.get("data"), time_forward_backward=timing.get("forward_backward"),
                    time_optimizer=timing.get("optimizer"), time_eval=timing.get("eval"),
                    wall_time=timing.get("wall"), finished_at=_now(),
                )
            )

    def runs(self, *, workload: str | None = None, status: Sequence[str] | None = None) -> list[RunRecord]:
        query = sa.select(runs_table).order_by(runs_table.c.id)
        if workload is not None:
            query = query.where(runs_table.c.workload == workload)
        if status is not None:
            query = query.where(runs_table.c.status.in_(list(status)))
        with self.engine.connect() as conn:
            return [_to_record(r) for r in conn.execute(query).mappings()]

    # -- studies --------------------------------------------------------------
    def save_study(self, name: str, config: dict[str, Any]) -> None:
        """Create or update the study ``name`` (an arena invocation's settings)."""
        blob = json.dumps(config, sort_keys=True, default=str)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(study_table.c.name).where(study_table.c.name == name)).first():
                conn.execute(sa.update(study_table).where(study_table.c.name == name).values(config=blob))
            else:
                conn.execute(sa.insert(study_table).values(name=name, config=blob, created_at=_now()))

    def studies(self) -> list[tuple[str, dict[str, Any]]]:
        """All studies, oldest first."""
        query = sa.select(study_table).order_by(study_table.c.created_at, study_table.c.name)
        with self.engine.connect() as conn:
            return [(r.name, json.loads(r.config)) for r in conn.execute(query)]

    def link(self, study: str, run_id: int, *, role: str, trial: int | None) -> None:
        """Record that ``study`` uses run ``run_id`` (idempotent; creates an empty study if needed)."""
        with self.engine.begin() as conn:
            if not conn.execute(sa.select(study_table.c.name).where(study_table.c.name == study)).first():
                conn.execute(sa.insert(study_table).values(name=study, config="{}", created_at=_now()))
            found = conn.execute(sa.select(study_run_table.c.run_id).where(
                (study_run_table.c.study == study) & (study_run_table.c.run_id == run_id))).first()
            if found is None:
                conn.execute(sa.insert(study_run_table).values(study=study, run_id=run_id, role=role, trial=trial))

    def study_runs(self, study: str) -> list[tuple[str, int | None, RunRecord]]:
        """``(role, trial, run)`` for every run linked to ``study``, in link order."""
        query = (
            sa.select(study_run_table.c.role, study_run_table.c.trial, runs_table)
            .join(runs_table, runs_table.c.id == study_run_table.c.run_id)
            .where(study_run_table.c.study == study)
            .order_by(runs_table.c.id)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).mappings())
        out = []
        for r in rows:
            data = dict(r)
            role, trial = data.pop("role"), data.pop("trial")
            out.append((role, trial, _to_record(data)))
        return out

    # -- curves ---------------------------------------------------------------
    def add_curve(self, run_id: int, points: Iterable[CurvePoint]) -> None:
        rows = [
            dict(run_id=run_id, step=p.step, tokens=p.tokens, train_loss=_finite_or_none(p.train_loss),
                 eval_loss=_finite_or_none(p.eval_loss), lr=p.lr, grad_norm=_finite_or_none(p.grad_norm),
                 wall_time=p.wall_time, max_attn_logit=_finite_or_none(p.max_attn_logit),
                 logit_rms=_finite_or_none(p.logit_rms))
            for p in points
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(curve_table), rows)

    def truncate_curve(self, run_id: int, after_step: int) -> None:
        """Drop points logged after ``after_step`` (a resumed run re-logs them)."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(curve_table).where(
                (curve_table.c.run_id == run_id) & (curve_table.c.step > after_step)))

    def curve(self, run_id: int) -> list[CurvePoint]:
        query = sa.select(curve_table).where(curve_table.c.run_id == run_id).order_by(curve_table.c.step)
        with self.engine.connect() as conn:
            return [
                CurvePoint(r.step, r.tokens, r.train_loss, r.eval_loss, r.lr, r.grad_norm, r.wall_time,
                           r.max_attn_logit, r.logit_rms)
                for r in conn.execute(query)
            ]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (parallel workers)
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _to_record(row: Any) -> RunRecord:
    data = dict(row)
    data.pop("started_at", None)
    data.pop("finished_at", None)
    data["hparams"] = json.loads(data["hparams"])
    data["config"] = json.loads(data["config"])
    data["metrics"] = json.loads(data["metrics"]) if data.get("metrics") else {}
    return RunRecord(**data)
