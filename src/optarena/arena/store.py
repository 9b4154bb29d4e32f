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

Opening a store checks it first: a database that cannot be read (not SQLite, truncated,
corrupt) or that holds another application's tables raises :class:`StoreError`, naming it and
what to do; one of our tables dropped by hand is recreated (with the rows that pointed into it)
and said so in :attr:`ResultStore.notes`. A SQLite file in a folder we cannot write is opened
read-only (``read_only``), so reports can be rebuilt from an archived results folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import sqlalchemy as sa

__all__ = [
    "Cell", "CurvePoint", "ResultStore", "RunRecord", "StoreError", "damaged", "default_storage_url", "is_damaged",
    "normalize_storage_url", "open_store", "sqlite_path", "storage_url",
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

# Optuna's tables share the database (see optarena.arena.studies); anything else belongs to someone else.
_OPTUNA_TABLES = frozenset({
    "alembic_version", "studies", "study_directions", "study_system_attributes", "study_user_attributes",
    "trial_heartbeats", "trial_intermediate_values", "trial_params", "trial_system_attributes", "trials",
    "trial_user_attributes", "trial_values", "version_info",
})


class StoreError(ValueError):
    """The results database cannot be used as it is; the message names it and what to do."""


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


def open_store(url: str, *, read_only: bool | None = None) -> "ResultStore":
    """The store at ``url``; several workers may create its tables at once (their races are retried)."""
    from optarena.arena.claims import retry_on_race

    return retry_on_race(lambda: ResultStore(url, read_only=read_only))


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other databases and in-memory SQLite)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _describe(error: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's statement and background link."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def damaged(where: str, error: BaseException) -> str:
    """What to tell the user about a results database that cannot be read."""
    return (f"cannot read the results database {where} ({_describe(error)}); it is not an intact optarena database: "
            f"move it away (a new one is created) or pass another --out/--storage")


def is_damaged(error: BaseException) -> bool:
    """Whether ``error`` says a SQLite file is not a (whole) database."""
    orig = getattr(error, "orig", error)
    return isinstance(orig, sqlite3.DatabaseError) and getattr(orig, "sqlite_errorname", "") in (
        "SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CANTOPEN", "SQLITE_IOERR_SHORT_READ")


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

    def __init__(self, url: str, *, read_only: bool | None = None) -> None:
        self.url = normalize_storage_url(url)
        self.notes: list[str] = []  # what opening had to repair, for the caller to show
        try:
            parsed = sa.engine.make_url(self.url)
            dialect = parsed.get_dialect()
        except sa.exc.NoSuchModuleError as err:
            raise StoreError(f"storage URL {url!r}: no database driver for {err.args[0].rpartition(':')[2]!r}; "
                             f"valid: sqlite:///PATH, postgresql://USER@HOST/DB (pip install 'optarena[postgres]')"
                             ) from None
        except (sa.exc.ArgumentError, ValueError) as err:
            raise StoreError(f"invalid storage URL {url!r}: {_describe(err)}; give an SQLAlchemy URL such as "
                             f"sqlite:///results.db or postgresql://USER@HOST/DB") from None
        path = sqlite_path(self.url)
        self.where = str(path) if path is not None else parsed.render_as_string(hide_password=True)
        if path is not None and path.is_dir():
            raise StoreError(f"the results database {path} is a directory; pass the folder that holds it as --out")
        if read_only is None:
            read_only = path is not None and path.exists() and not os.access(path.parent, os.W_OK)
        self.read_only = read_only
        try:
            dialect.import_dbapi()
        except ImportError as err:
            raise StoreError(f"storage URL {url!r}: the database driver is not installed ({err}); install it or "
                             f"use sqlite:///PATH") from None
        if path is not None and read_only:
            self.engine = sa.create_engine("sqlite://", creator=lambda: _read_only_sqlite(path))
        else:
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise StoreError(f"cannot create the folder of the results database {path}: {err}") from None
            self.engine = sa.create_engine(self.url)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._check_tables()

    def _check_tables(self) -> None:
        """Refuse an unreadable or foreign database; recreate our tables that are missing."""
        try:
            with self.engine.connect() as conn:
                present = set(sa.inspect(conn).get_table_names())
        except sa.exc.DBAPIError as err:
            if self.engine.dialect.name != "sqlite":
                raise StoreError(f"cannot reach the database {self.where} ({_describe(err)}); check the URL and "
                                 f"that the server is running") from None
            if not is_damaged(err):
                raise  # e.g. a lock held past the busy timeout: the caller may retry
            wal = Path(self.where + "-wal")
            if self.read_only and wal.exists() and wal.stat().st_size > 0:
                raise StoreError(f"the read-only results database {self.where} has results still in {wal.name} "
                                 f"({_describe(err)}); open the folder once where it can be written (e.g. a copy) "
                                 f"to fold them in") from None
            raise StoreError(damaged(self.where, err)) from None
        ours = {t for t in present if t.startswith("optarena_")}
        foreign = sorted(present - ours - _OPTUNA_TABLES)
        if foreign and not ours:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise StoreError(f"{self.where} holds tables of another application ({shown}), not optarena results; "
                             f"pass another --out or --storage")
        missing = sorted(t.name for t in _metadata.sorted_tables if t.name not in present)
        if self.read_only:
            if missing and ours:
                raise StoreError(f"the read-only results database {self.where} lacks tables {missing}; "
                                 f"open it where it can be written to recreate them")
            return
        if self.engine.dialect.name == "sqlite":  # stored in the file: readers do not block the writer (workers)
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        _metadata.create_all(self.engine)
        if missing and ours:  # some of ours were dropped by hand: drop the rows that pointed into them
            with self.engine.begin() as conn:
                runs = sa.select(runs_table.c.id)
                conn.execute(sa.delete(curve_table).where(curve_table.c.run_id.not_in(runs)))
                studies = sa.select(study_table.c.name)
                conn.execute(sa.delete(study_run_table).where(
                    study_run_table.c.run_id.not_in(runs) | study_run_table.c.study.not_in(studies)))
            self.notes.append(f"{self.where}: recreated the missing tables {', '.join(missing)}; the runs they "
                              f"held will be trained again")

    def checkpoint(self) -> None:
        """Move SQLite's write-ahead log into the database file, so that the file alone holds every result."""
        if self.engine.dialect.name == "sqlite" and not self.read_only:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

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


def _read_only_sqlite(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path``; immutable (no lock or log files) unless a write-ahead log holds data."""
    wal = path.with_name(path.name + "-wal")
    immutable = "" if wal.exists() and wal.stat().st_size > 0 else "&immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{immutable}", uri=True, check_same_thread=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
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
