"""Fair tuning: the same number of trials for every optimizer, drawn from its registered space.

Protocols (``PROTOCOLS``):

- ``random``: quasirandom scrambled Halton points over the search space (AlgoPerf's external
  tuning, ARENA.md §1.3). Trial ``i`` of a cell is a fixed function of (space, seed, i).
- ``coordinate``: coordinate descent over per-hyperparameter grids, the protocol of Wen et al.,
  "Fantastic Pretraining Optimizers and Where to Find Them" (arXiv:2509.02046, ARENA.md §2.2);
  see :func:`coordinate_grids` and :func:`coordinate_trials`.
- ``tpe``: Optuna's TPE sampler in an Optuna study kept in the same database.

``random`` and ``coordinate`` are *replayed* from the store: the trial sequence is a pure
function of the settings and of the results already recorded, so a rerun, a killed and
restarted arena, or a second worker computes the same sequence and runs only what is
missing. After tuning, the best configuration (lowest end-of-training eval loss, ties to
the earlier trial) is rerun on ``seeds - 1`` further seeds.

Scaling out: a run is trained only by the worker that holds its *claim* (:class:`Claims`),
a row keyed by the run's content key in the same database, with a lease renewed while the
run trains. A worker that dies leaves a claim that goes stale (at once for a dead process
on the same host, after the lease elsewhere), and the next worker to need the run takes it
over and resumes it from its checkpoint. :class:`CellTuner` advances one cell by at most one
run per call, so a worker can interleave many cells while others hold the runs it waits for.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import optuna
import sqlalchemy as sa
from scipy.stats import qmc

from optarena.arena.store import ResultStore
from optarena.arena.trainer import RunConfig, RunResult, train
from optarena.optim import Categorical, FloatRange, get_spec
from optarena.optim.registry import SearchDim

__all__ = [
    "APPROX_BEST_TOLERANCE",
    "PROTOCOLS",
    "CellResult",
    "CellTuner",
    "Claims",
    "ClaimLost",
    "approximately_best",
    "coordinate_grids",
    "coordinate_trials",
    "halton_trials",
    "tune_cell",
]

PROTOCOLS = ("random", "coordinate", "tpe")
APPROX_BEST_TOLERANCE = 3e-3  # Fantastic's grab_best_run threshold: within 3e-3 loss of the best
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress bar reports trials


def halton_trials(space: Mapping[str, SearchDim], n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``n_trials`` scrambled-Halton points mapped onto ``space`` (keys in sorted order)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    names = sorted(space)
    points = qmc.Halton(d=len(names), scramble=True, seed=seed).random(n_trials)
    return [{name: _plain(space[name].from_unit(float(u))) for name, u in zip(names, row)} for row in points]


def _plain(value: Any) -> Any:
    """Round floats to 6 significant digits: readable configs, stable keys."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _suggest(trial: optuna.Trial, name: str, dim: SearchDim) -> Any:
    if isinstance(dim, FloatRange):
        return _plain(trial.suggest_float(name, dim.low, dim.high, log=dim.log))
    if isinstance(dim, Categorical):
        index = trial.suggest_categorical(name, list(range(len(dim.choices))))
        return dim.choices[index]
    raise TypeError(f"unsupported search dimension {dim!r}")


def _from_optuna(dim: SearchDim, value: Any) -> Any:
    return dim.choices[value] if isinstance(dim, Categorical) else _plain(value)


# -- coordinate descent ----------------------------------------------------------------------

LR_GRID_RATIO = 2.0  # learning rates: factor-2 steps, as Fantastic's grids (4e-3, 8e-3, 1.6e-2, ...)
LOG_GRID_RATIO = 4.0  # other log-scaled keys (weight decay, eps, ...): a few points per decade pair
LINEAR_GRID_STEPS = 4  # linear keys: the range in quarters (five points)
MAX_REFINEMENTS = 3  # grid halvings after a local optimum while trial budget is left


def _is_lr(name: str) -> bool:
    return name == "lr" or name.endswith("_lr")


def _key_order(names: list[str]) -> list[str]:
    """The order keys are swept in a round: ``lr`` first, then other learning rates, then the rest."""
    return sorted(names, key=lambda n: (n != "lr", not _is_lr(n), n))


def _anchor(dim: FloatRange, default: Any) -> float:
    """The registry default, or the nearest end of the range when the default lies outside it (e.g. wd=0)."""
    if isinstance(default, bool) or not isinstance(default, (int, float)) or not math.isfinite(default):
        return dim.low if dim.log else (dim.low + dim.high) / 2
    return min(max(float(default), dim.low), dim.high)


def _float_step(name: str, dim: FloatRange) -> float:
    """Grid spacing at level 0: a ratio for log-scaled keys, a width for linear ones."""
    if dim.log:
        return LR_GRID_RATIO if _is_lr(name) else LOG_GRID_RATIO
    return (dim.high - dim.low) / LINEAR_GRID_STEPS


def _inside(dim: FloatRange, value: float) -> bool:
    slack = 1e-9 * max(abs(dim.low), abs(dim.high))
    return dim.low - slack <= value <= dim.high + slack


def coordinate_grids(
    space: Mapping[str, SearchDim], defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The baseline configuration and one discrete grid per tuned key.

    The baseline is the registry default of each key (moved to the nearest end of the
    range where the default lies outside the registered space, e.g. weight decay 0 under a
    log range). Grids are anchored at the baseline: learning rates (``lr``, ``*_lr``) in
    factor-2 steps, other log-scaled keys in factor-4 steps, linear keys in steps of a
    quarter of the range, all inside the registered range; categoricals take every choice.
    """
    baseline: dict[str, Any] = {}
    grids: dict[str, list[Any]] = {}
    for name in sorted(space):
        dim, default = space[name], defaults.get(name)
        if isinstance(dim, Categorical):
            grids[name] = list(dim.choices)
            baseline[name] = default if default in dim.choices else dim.choices[0]
            continue
        anchor, step = _anchor(dim, default), _float_step(name, dim)
        if dim.log:
            lowest = math.ceil(math.log(dim.low / anchor) / math.log(step) - 1e-9)
            highest = math.floor(math.log(dim.high / anchor) / math.log(step) + 1e-9)
            grid = [_plain(anchor * step**k) for k in range(lowest, highest + 1)]
        else:
            lowest = math.ceil((dim.low - anchor) / step - 1e-9)
            highest = math.floor((dim.high - anchor) / step + 1e-9)
            grid = [_plain(anchor + k * step) for k in range(lowest, highest + 1)]
        grids[name] = grid
        baseline[name] = _plain(anchor)
    return baseline, grids


def _config_id(hparams: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in hparams.items()))


def _sweep(values: list[Any], current: Any) -> list[Any]:
    """``values`` other than ``current``, nearest (in grid position) first, the later one first on ties."""
    position = values.index(current)
    others = [i for i in range(len(values)) if i != position]
    return [values[i] for i in sorted(others, key=lambda i: (abs(i - position), i < position))]


def _round_candidates(space: Mapping[str, SearchDim], grids: Mapping[str, list[Any]], baseline: dict[str, Any],
                      level: int) -> list[dict[str, Any]]:
    """One round: each key swept in 1-D around ``baseline``.

    Level 0 sweeps each key's whole grid (Fantastic's ``create_configs``). Level ``l >= 1``
    (ours, used only when a local optimum is reached with trial budget left) tries the two
    points at 1/2**l of the level-0 spacing on either side of the baseline for float keys.
    """
    candidates = []
    for name in _key_order(list(space)):
        dim, current = space[name], baseline[name]
        if level == 0:
            values = _sweep(grids[name], current)
        elif isinstance(dim, Categorical):
            values = []
        else:
            step = _float_step(name, dim)
            if dim.log:
                factor = step ** (0.5**level)
                values = [current * factor, current / factor]
            else:
                values = [current + step * 0.5**level, current - step * 0.5**level]
            values = [_plain(v) for v in values if _inside(dim, v)]
        candidates += [{**baseline, name: value} for value in values]
    return candidates


@dataclass
class CoordinatePlan:
    """Where coordinate descent stands given the results known so far."""

    trials: list[dict[str, Any]]  # every trial proposed so far, in trial order
    pending: list[int]  # indices of ``trials`` whose results are needed before it can go on
    finished: bool
    stopped: str | None = None  # "budget" | "local optimum" once finished
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per round: level, baseline, trial indices


def coordinate_trials(
    space: Mapping[str, SearchDim],
    defaults: Mapping[str, Any],
    n_trials: int,
    score: Callable[[dict[str, Any]], float | None],
) -> CoordinatePlan:
    """Replay coordinate descent over ``space`` with ``score(hparams)`` (``None`` = not run yet).

    Round 1 runs the baseline plus every 1-D grid sweep around it; each later round sweeps
    every key around the best configuration so far (configurations already run are not
    run again and do not count twice). When a round does not improve on its baseline, the
    baseline is a local optimum of the grid. Fantastic stops there; with trial budget left
    we halve the grid spacing around it (at most ``MAX_REFINEMENTS`` times) so that every
    optimizer spends the same number of trials. It stops when ``n_trials`` trials are spent.
    Ties go to the earlier trial; a missing score (diverged, failed) counts as +inf.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    baseline, grids = coordinate_grids(space, defaults)
    trials: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    scores: list[float] = []
    rounds: list[dict[str, Any]] = []
    level, candidates = 0, [baseline] + _round_candidates(space, grids, baseline, 0)
    while True:
        fresh = []
        for hparams in candidates:
            if _config_id(hparams) not in seen and len(trials) + len(fresh) < n_trials:
                seen.add(_config_id(hparams))
                fresh.append(hparams)
        first = len(trials)
        trials += fresh
        if fresh:
            rounds.append({"level": level, "baseline": dict(baseline), "trials": list(range(first, len(trials)))})
        known = [score(h) for h in fresh]
        pending = [first + i for i, value in enumerate(known) if value is None]
        if pending:
            return CoordinatePlan(trials, pending, False, rounds=rounds)
        scores += [math.inf if v is None or not math.isfinite(v) else v for v in known]
        best = min(range(len(trials)), key=lambda i: (scores[i], i))
        if len(trials) >= n_trials:
            return CoordinatePlan(trials, [], True, "budget", rounds)
        if _config_id(trials[best]) != _config_id(baseline):
            baseline = dict(trials[best])  # the best run becomes the new baseline
        else:  # a local optimum at this spacing
            level += 1
            if level > MAX_REFINEMENTS:
                return CoordinatePlan(trials, [], True, "local optimum", rounds)
        candidates = _round_candidates(space, grids, baseline, level)


def approximately_best(losses: list[float | None], tolerance: float = APPROX_BEST_TOLERANCE) -> list[int]:
    """Indices of the runs whose final loss is within ``tolerance`` of the best (Fantastic's "approximately best")."""
    finite = [x for x in losses if x is not None and math.isfinite(x)]
    if not finite:
        return []
    best = min(finite)
    return [i for i, x in enumerate(losses) if x is not None and math.isfinite(x) and x <= best + tolerance]


# -- claims: who trains which run ------------------------------------------------------------

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

    def claimed_keys(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(claims_table.c.key))]


# -- one cell --------------------------------------------------------------------------------

@dataclass
class CellResult:
    """The outcome of tuning one (workload, scale, steps, optimizer) cell."""

    cell: str
    trials: list[tuple[dict[str, Any], RunResult]]
    best_hparams: dict[str, Any] | None
    seed_runs: list[RunResult]
    protocol: str = "random"
    steps: int | None = None
    approximately_best: list[int] = field(default_factory=list)  # trial indices within 3e-3 of the best
    stopped: str | None = None  # coordinate descent: "budget" or "local optimum"
    rounds: list[dict[str, Any]] = field(default_factory=list)  # coordinate descent: the rounds it ran


def _score(result: RunResult) -> float:
    return result.final_eval_loss if result.status == "ok" and result.final_eval_loss is not None else math.inf


@dataclass
class _Proposal:
    hparams: dict[str, Any]
    role: str  # "trial" | "seed"
    trial: int | None
    seed: int

    @property
    def label(self) -> str:
        return f"{self.role} {self.trial if self.role == 'trial' else self.seed}"


RAN, WAITING, DONE = "ran", "waiting", "done"
_optuna_storages: dict[str, optuna.storages.RDBStorage] = {}


def _optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """One Optuna RDB storage per URL and process (SQLite: wait on locks instead of failing)."""
    if url not in _optuna_storages:
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        _optuna_storages[url] = retry_on_race(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs))
    return _optuna_storages[url]


class CellTuner:
    """Tunes one cell, one run per :meth:`advance` call; any number of workers can share a cell.

    ``advance()`` returns ``"ran"`` after training (or taking over) one run, ``"waiting"``
    when every run the cell needs next is being trained by another live worker, and
    ``"done"`` when tuning and the seed reruns are all recorded; then :meth:`result` holds
    the :class:`CellResult`. Results from other workers are read from the store.
    """

    def __init__(
        self,
        base: RunConfig,
        store: ResultStore,
        claims: Claims,
        *,
        study: str,
        n_trials: int,
        seeds: int = 1,
        protocol: str = "random",
        checkpoint_dir: str | None = None,
        on_run: Callable[[str, RunResult], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        if n_trials < 1:
            raise ValueError(f"n_trials must be >= 1, got {n_trials}")
        self.base, self.store, self.claims = base, store, claims
        self.study, self.n_trials, self.seeds, self.protocol = study, n_trials, seeds, protocol
        self.checkpoint_dir, self.on_run, self.on_step = checkpoint_dir, on_run, on_step
        self.should_stop = should_stop
        self.spec = get_spec(base.optimizer)
        self.cell = f"{base.workload}/{base.scale}/{base.optimizer}"
        self.steps = base.resolved_steps()
        self._results: dict[str, RunResult] = {}  # run key -> final result (this process ran it or saw it finished)
        self._unseen: set[str] = set()  # keys that were unfinished when first looked up
        self._linked: set[tuple[str, int | None, int]] = set()
        self._halton: list[dict[str, Any]] | None = None
        self._optuna: optuna.Study | None = None
        self._result: CellResult | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def result(self) -> CellResult:
        if self._result is None:
            raise RuntimeError(f"{self.cell} is not tuned yet; call advance() until it returns 'done'")
        return self._result

    # -- runs ----------------------------------------------------------------------------
    def _config(self, proposal: _Proposal) -> RunConfig:
        return self.base.model_copy(update={"hparams": {**self.base.hparams, **proposal.hparams},
                                            "seed": proposal.seed})

    def _record(self, proposal: _Proposal, key: str, result: RunResult, *, by_other: bool = False) -> RunResult:
        if key not in self._results:
            self._results[key] = result
        if result.run_id is not None and (proposal.role, proposal.trial, result.run_id) not in self._linked:
            retry_on_race(lambda: self.store.link(self.study, result.run_id, role=proposal.role, trial=proposal.trial))
            self._linked.add((proposal.role, proposal.trial, result.run_id))
            if self.on_run is not None:
                label = proposal.label + (" (another worker)" if by_other else "")
                self.on_run(label, replace(result, reused=False) if by_other else result)
        return result

    def _lookup(self, proposal: _Proposal) -> RunResult | None:
        """The final result of ``proposal`` if it is recorded (by anyone) or this process ran it; else None."""
        config = self._config(proposal)
        key = config.key()
        if key in self._results:
            return self._record(proposal, key, self._results[key])
        record = self.store.get_run(key)
        if record is None or not record.finished:
            self._unseen.add(key)
            return None
        result = train(config, self.store, cell=self.cell)  # finished: read back from the store, never retrained
        self.claims.clear_if_stale(key)
        return self._record(proposal, key, result, by_other=key in self._unseen)

    def _heartbeat(self, key: str) -> Callable[[int, int], None]:
        interval = self.claims.lease.total_seconds() / 6
        last = [time.monotonic()]

        def on_step(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= interval:
                last[0] = now
                if not self.claims.heartbeat(key):
                    raise ClaimLost(key)
            if self.should_stop is not None and self.should_stop():
                raise ClaimLost(key)  # e.g. our parent process died: leave the run to the others
            if self.on_step is not None:
                self.on_step(done, total)

        return on_step

    def _run_first_free(self, proposals: list[_Proposal],
                        after: Callable[[RunResult], None] | None = None) -> str:
        """Claim and train the first of ``proposals`` no live worker holds; WAITING if there is none."""
        for proposal in proposals:
            if self.claims.try_claim(self._config(proposal).key()):
                return self._train_claimed(proposal, after)
        return WAITING

    def _train_claimed(self, proposal: _Proposal, after: Callable[[RunResult], None] | None = None) -> str:
        """Train ``proposal``, whose claim we hold (a finished run is read back), record it, release the claim."""
        config = self._config(proposal)
        key = config.key()
        try:
            result = train(config, self.store, cell=self.cell, checkpoint_dir=self.checkpoint_dir,
                           on_step=self._heartbeat(key))
            self._unseen.discard(key)
            self._record(proposal, key, result)
            if after is not None:
                after(result)  # e.g. tell Optuna, before the claim goes
        except ClaimLost:
            pass  # someone else owns the run now (or we must stop); nothing final was recorded
        finally:
            self.claims.release(key)
        return RAN

    # -- protocols -------------------------------------------------------------------------
    def advance(self) -> str:
        if self._result is not None:
            return DONE
        if self.protocol == "tpe":
            state, trials = self._advance_tpe()
            stopped, rounds = None, []
        else:
            if self.protocol == "random":
                self._halton = self._halton or halton_trials(self.spec.search_space, self.n_trials, self.base.seed)
                hparams_list = self._halton
                proposals = [_Proposal(h, "trial", i, self.base.seed) for i, h in enumerate(hparams_list)]
                pending = [p for p in proposals if self._lookup(p) is None]
                stopped, rounds = None, []
            else:
                defaults = {**self.spec.defaults, **self.spec.builder_defaults}
                index: dict[tuple, int] = {}  # coordinate descent scores each new trial once, in trial order

                def score(h: dict[str, Any]) -> float | None:
                    i = index.setdefault(_config_id(h), len(index))
                    result = self._lookup(_Proposal(h, "trial", i, self.base.seed))
                    return None if result is None else _score(result)

                plan = coordinate_trials(self.spec.search_space, defaults, self.n_trials, score)
                proposals = [_Proposal(h, "trial", i, self.base.seed) for i, h in enumerate(plan.trials)]
                pending = [proposals[i] for i in plan.pending]
                stopped, rounds = plan.stopped, plan.rounds
            if pending:
                return self._run_first_free(pending)
            state, trials = DONE, [(p.hparams, self._lookup(p)) for p in proposals]
        if state != DONE:
            return state
        ranked = sorted(range(len(trials)), key=lambda i: (_score(trials[i][1]), i))
        best = trials[ranked[0]] if trials and math.isfinite(_score(trials[ranked[0]][1])) else None
        seed_runs: list[RunResult] = []
        if best is not None:
            extra = [_Proposal(best[0], "seed", None, self.base.seed + k) for k in range(1, self.seeds)]
            pending = [p for p in extra if self._lookup(p) is None]
            if pending:
                return self._run_first_free(pending)
            seed_runs = [best[1]] + [self._lookup(p) for p in extra]
        losses = [r.final_eval_loss if r.status == "ok" else None for _, r in trials]
        self._result = CellResult(
            self.cell, trials, best[0] if best else None, seed_runs, protocol=self.protocol, steps=self.steps,
            approximately_best=approximately_best(losses), stopped=stopped, rounds=rounds,
        )
        return DONE

    def _tpe_study(self) -> optuna.Study:
        if self._optuna is None:
            name = f"optarena/{self.cell}/seed{self.base.seed}/{self.base.key()[:8]}"
            storage = _optuna_storage(self.store.url)
            self._optuna = retry_on_race(lambda: optuna.create_study(
                study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=self.base.seed),
                direction="minimize", load_if_exists=True))
        return self._optuna

    def _tpe_hparams(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return {n: _from_optuna(self.spec.search_space[n], v) for n, v in trial.params.items()}

    def _advance_tpe(self) -> tuple[str, list[tuple[dict[str, Any], RunResult]]]:
        """TPE: trials live in the Optuna study; the first ``n_trials`` valid ones (by number) count.

        A trial is valid while it runs, and once told if it was ``ready`` (its run was claimed;
        diverged runs are told FAIL and still count). A RUNNING trial whose claim is free or stale
        is taken over: its run is resumed (or read back if it finished) and told. A trial asked
        but never made ready, older than the lease, is told FAIL and void; so is a trial asked
        after other workers filled the budget. The sampler is reseeded from (seed, trial number)
        for each trial, so a killed and rerun single worker asks what an uninterrupted one
        would; with several workers the sequence depends on timing (as with any parallel TPE).
        """
        study = self._tpe_study()
        running = optuna.trial.TrialState.RUNNING
        all_trials = study.get_trials(deepcopy=False)
        valid = sorted((t for t in all_trials if _tpe_valid(t)), key=lambda t: t.number)[: self.n_trials]
        waiting = False
        for t in valid:
            if t.state != running:
                continue
            if not t.user_attrs.get("ready"):  # asked; its worker has not claimed a run (yet, or died first)
                if _now() - t.datetime_start.replace(tzinfo=None) > self.claims.lease:
                    retry_on_race(lambda: study.tell(t.number, state=optuna.trial.TrialState.FAIL))
                    return RAN, []
                waiting = True
                continue
            proposal = _Proposal(self._tpe_hparams(t), "trial", t.number, self.base.seed)
            if self._run_first_free([proposal], after=lambda r, n=t.number: _tell(study, n, r)) == RAN:
                return RAN, []
            waiting = True
        if len(valid) < self.n_trials:
            trial = study.ask()
            # Independent TPE samples at suggest time: seeding by the trial's own number makes trial n's
            # proposal a function of (seed, n, history), and concurrent asks never share a seed.
            study.sampler = optuna.samplers.TPESampler(seed=self.base.seed * 1_000_003 + trial.number)
            before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and _tpe_valid(t)]
            if len(before) >= self.n_trials:  # other workers filled the budget meanwhile
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return RAN, []
            hparams = {name: _suggest(trial, name, dim) for name, dim in sorted(self.spec.search_space.items())}
            proposal = _Proposal(hparams, "trial", trial.number, self.base.seed)
            claimed = self.claims.try_claim(self._config(proposal).key())
            trial.set_user_attr("ready", True)  # after the claim: others see a live trial, not a stale one
            if not claimed:  # the same configuration is being trained for another trial; tell it later
                return WAITING, []
            return self._train_claimed(proposal, after=lambda r: _tell(study, trial.number, r)), []
        if waiting:
            return WAITING, []
        trials = []
        for t in valid:
            proposal = _Proposal(self._tpe_hparams(t), "trial", t.number, self.base.seed)
            result = self._lookup(proposal)
            if result is None:  # told, but its run is not finished in this store: run it
                return self._run_first_free([proposal]), []
            trials.append((proposal.hparams, result))
        return DONE, trials


def _tpe_valid(trial: optuna.trial.FrozenTrial) -> bool:
    """Running, or finished after its run was claimed (``counted``: studies written before ``ready`` existed)."""
    if trial.state == optuna.trial.TrialState.RUNNING:
        return True
    return trial.state.is_finished() and bool(trial.user_attrs.get("ready") or trial.user_attrs.get("counted"))


def _tell(study: optuna.Study, number: int, result: RunResult) -> None:
    """Report ``result`` for trial ``number``, unless its previous holder told it before letting go of the claim."""
    def finished() -> bool:
        return any(t.number == number and t.state.is_finished() for t in study.get_trials(deepcopy=False))

    if finished():
        return
    score = _score(result)
    try:
        study.tell(number, score if math.isfinite(score) else None,
                   state=None if math.isfinite(score) else optuna.trial.TrialState.FAIL)
    except (ValueError, RuntimeError):
        if not finished():
            raise


def tune_cell(
    base: RunConfig,
    store: ResultStore,
    *,
    study: str,
    n_trials: int,
    seeds: int = 1,
    protocol: str = "random",
    checkpoint_dir: str | None = None,
    on_run: Callable[[str, RunResult], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    claims: Claims | None = None,
    poll_seconds: float = 0.5,
) -> CellResult:
    """Tune ``base.optimizer`` on ``base``'s workload with ``n_trials`` trials, then rerun the best on more seeds.

    Every run used is linked to ``study`` in the store (see :meth:`ResultStore.link`).
    ``base.hparams`` are fixed values applied under every trial's tuned ones. Other workers
    may tune the same cell at the same time; this call returns when the cell is complete.
    """
    tuner = CellTuner(base, store, claims or Claims(store.engine), study=study, n_trials=n_trials, seeds=seeds,
                      protocol=protocol, checkpoint_dir=checkpoint_dir, on_run=on_run, on_step=on_step)
    while (state := tuner.advance()) != DONE:
        if state == WAITING:
            time.sleep(poll_seconds)
    return tuner.result()
