"""Claims: which worker trains which run, as leases on run keys in the results database.

A run is trained only by the worker that holds its claim, a row keyed by the run's content key
(:meth:`optarena.arena.trainer.RunConfig.key`), with a lease renewed while the run trains. A
worker that dies leaves a claim that goes stale (at once for a dead process on the same host,
after the lease elsewhere), and the next worker to need the run takes it over and resumes it
from its checkpoint. Keys are shared by every study in the database, so a run that two studies
need is trained once.

Why not Optuna's heartbeat (``RDBStorage(heartbeat_interval=...)``, ``fail_stale_trials``,
``RetryFailedTrialCallback``)? Each cell is an Optuna study (:mod:`optarena.arena.studies`), but
Optuna's liveness is per *trial of one study*, while a run is shared by every study that needs
its key; a stale trial is marked failed and retried as a *new* trial number, which would break
the replayed protocols (trial ``i`` is a function of the settings and ``i``) and the equal
trial budget; staleness is only a timeout, with no same-host dead-process check, so a killed
worker's run waits out the whole grace period; nothing stops a stalled-but-alive holder from
finishing and recording a run another worker took over (a claim's compare-and-swap token does);
and the heartbeat thread is driven by ``Study.optimize``, while a worker here interleaves many
cells one run at a time.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid
from typing import Any, Callable

import sqlalchemy as sa

__all__ = ["ClaimLost", "Claims", "claims_table", "retry_on_race"]

_claims_metadata = sa.MetaData()
claims_table = sa.Table(
    "optarena_claim",
    _claims_metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # the run's content key (RunConfig.key)
    sa.Column("worker", sa.String(200), nullable=False),  # "host:pid:nonce" of the holder
    sa.Column("token", sa.String(32), nullable=False),  # changes on every take-over: compare-and-swap
    sa.Column("heartbeat", sa.DateTime, nullable=False),  # renewed while the run trains
)


class ClaimLost(BaseException):
    """Our claim was taken over (we stalled past the lease): stop training without recording anything.

    A ``BaseException`` so that it passes through the trainer's handler, which would record the run as failed.
    """


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def retry_on_race(action: Callable[[], Any], attempts: int = 6) -> Any:
    """Run ``action``, retrying when a concurrent worker wins a create/insert race (unique or DDL conflicts)."""
    for attempt in range(attempts):
        try:
            return action()
        except (sa.exc.IntegrityError, sa.exc.OperationalError, sa.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    return None


class Claims:
    """Leases on run keys in the results database; safe under concurrency on SQLite and PostgreSQL.

    - ``try_claim(key)``: insert the claim row (``INSERT .. ON CONFLICT DO NOTHING``: exactly one
      inserter wins). If a row exists and its holder is stale (a dead process on this host, or no
      heartbeat for ``lease_seconds``), take it over with a compare-and-swap ``UPDATE .. WHERE
      token = <the stale token>``: of several workers racing for it, exactly one updates the row.
    - ``heartbeat(key)``: renew the lease; ``False`` if the claim was taken over meanwhile.
    - ``release(key)``: delete our claim once the run is recorded (finished runs need no claim).
    """

    def __init__(self, engine: sa.Engine, *, lease_seconds: float = 120.0, worker: str | None = None) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self.engine = engine
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.host = socket.gethostname()
        self.worker = worker or f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tokens: dict[str, str] = {}
        retry_on_race(lambda: _claims_metadata.create_all(engine))

    def _insert(self, key: str, token: str, now: dt.datetime) -> bool:
        """Insert our claim unless one exists; True if the row now holds our token."""
        values = dict(key=key, worker=self.worker, token=token, heartbeat=now)
        dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            if dialect in ("sqlite", "postgresql"):
                module = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
                conn.execute(module.insert(claims_table).values(**values).on_conflict_do_nothing())
            else:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(claims_table).values(**values))
                except sa.exc.IntegrityError:
                    pass
            # Not the insert's rowcount: drivers disagree on it (psycopg 3 reports -1 here).
            held = conn.execute(sa.select(claims_table.c.token).where(claims_table.c.key == key)).scalar()
        return held == token

    def holder(self, key: str) -> tuple[str, str, dt.datetime] | None:
        """``(worker, token, heartbeat)`` of the claim on ``key``, if any."""
        query = sa.select(claims_table.c.worker, claims_table.c.token, claims_table.c.heartbeat).where(
            claims_table.c.key == key)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return tuple(row) if row else None

    def is_stale(self, worker: str, heartbeat: dt.datetime) -> bool:
        if _now() - heartbeat > self.lease:
            return True
        host, _, rest = worker.partition(":")
        pid = rest.partition(":")[0]
        return host == self.host and pid.isdigit() and worker != self.worker and not _pid_alive(int(pid))

    def try_claim(self, key: str) -> bool:
        token, now = uuid.uuid4().hex, _now()
        if self._insert(key, token, now):
            self._tokens[key] = token
            return True
        current = self.holder(key)
        if current is None:  # released between our insert and our read: try once more
            if self._insert(key, token, now):
                self._tokens[key] = token
                return True
            return False
        worker, old_token, heartbeat = current
        if worker == self.worker and self._tokens.get(key) == old_token:
            return True
        if not self.is_stale(worker, heartbeat):
            return False
        with self.engine.begin() as conn:
            taken = conn.execute(
                sa.update(claims_table)
                .where((claims_table.c.key == key) & (claims_table.c.token == old_token))
                .values(worker=self.worker, token=token, heartbeat=now)
            ).rowcount == 1
        if taken:
            self._tokens[key] = token
        return taken

    def heartbeat(self, key: str) -> bool:
        token = self._tokens.get(key)
        if token is None:
            return False
        with self.engine.begin() as conn:
            return conn.execute(
                sa.update(claims_table)
                .where((claims_table.c.key == key) & (claims_table.c.token == token))
                .values(heartbeat=_now())
            ).rowcount == 1

    def release(self, key: str) -> None:
        token = self._tokens.pop(key, None)
        if token is not None:
            with self.engine.begin() as conn:
                conn.execute(sa.delete(claims_table).where(
                    (claims_table.c.key == key) & (claims_table.c.token == token)))

    def clear_if_stale(self, key: str) -> None:
        """Drop a stale claim on ``key`` (its holder died after recording the run, before releasing it)."""
        current = self.holder(key)
        if current is not None and current[0] != self.worker and self.is_stale(current[0], current[2]):
            with self.engine.begin() as conn:
                conn.execute(sa.delete(claims_table).where(
                    (claims_table.c.key == key) & (claims_table.c.token == current[1])))
