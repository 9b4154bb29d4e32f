"""The tuner: the same number of trials for every optimizer, drawn from its registered space.

Protocols (``PROTOCOLS``):

- ``random``: scrambled Halton points (:func:`optarena.arena.search.halton_trials`), AlgoPerf's
  external tuning (arXiv:2306.07179).
- ``coordinate``: coordinate descent over per-hyperparameter grids
  (:func:`optarena.arena.search.coordinate_trials`), the protocol of Wen et al., "Fantastic
  Pretraining Optimizers and Where to Find Them" (arXiv:2509.02046).
- ``tpe``: Optuna's TPE sampler in the cell's Optuna study.

``random`` and ``coordinate`` are *replayed* from the store: the trial sequence is a pure
function of the settings and of the results already recorded, so a rerun, a killed and
restarted arena, or a second worker computes the same sequence and runs only what is
missing. After tuning, the best configuration (:func:`optarena.arena.search.select_best`)
is rerun on ``seeds - 1`` further seeds. Every cell's trials end up in its Optuna study
(:mod:`optarena.arena.studies`), whatever the protocol.

A run is trained only by the worker holding its claim (:class:`optarena.arena.claims.Claims`);
finished runs are read back from the store (:meth:`ResultStore.finished_run`), never retrained.
:class:`CellTuner` advances one cell by at most one run per call, so a worker can interleave
many cells while others hold the runs it waits for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import optuna

from optarena.arena.claims import ClaimLost, Claims, retry_on_race
from optarena.arena.search import coordinate_trials, config_id, halton_trials, select_best
from optarena.arena.store import Cell, ResultStore, RunRecord
from optarena.arena.studies import from_optuna, optuna_storage, record_trials, study_name, suggest
from optarena.arena.trainer import RunConfig, RunResult, train
from optarena.optim import get_spec

__all__ = ["DONE", "PROTOCOLS", "RAN", "WAITING", "CellResult", "CellTuner", "tune_cell"]

PROTOCOLS = ("random", "coordinate", "tpe")
RAN, WAITING, DONE = "ran", "waiting", "done"


@dataclass
class CellResult:
    """The outcome of tuning one cell: its trials in order, the best configuration and its seed runs."""

    cell: Cell
    trials: list[tuple[dict[str, Any], RunResult]]
    best_hparams: dict[str, Any] | None
    seed_runs: list[RunResult]  # the best trial's run first, then one run per further seed


def _loss(result: RunResult) -> float | None:
    """What tuning minimizes: the end-of-training eval loss of a run that finished ``ok``."""
    return result.final_eval_loss if result.status == "ok" else None


def _from_record(record: RunRecord) -> RunResult:
    return RunResult(record.id, record.status, record.final_eval_loss, record.final_train_loss,
                     diverged_step=record.diverged_step, error=record.error, reused=True)


@dataclass
class _Proposal:
    hparams: dict[str, Any]
    role: str  # "trial" | "seed"
    trial: int | None
    seed: int

    @property
    def label(self) -> str:
        return f"{self.role} {self.trial if self.role == 'trial' else self.seed}"


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
        self.cell = Cell(base.workload, base.scale, base.resolved_steps(), base.optimizer)
        self._results: dict[str, RunResult] = {}  # run key -> final result (this process ran it or saw it finished)
        self._unseen: set[str] = set()  # keys that were unfinished when first looked up
        self._linked: set[tuple[str, int | None, int]] = set()
        self._halton: list[dict[str, Any]] | None = None
        self._optuna: optuna.Study | None = None
        self._in_optuna = False  # the trials of a replayed protocol are in the cell's Optuna study
        self._result: CellResult | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def result(self) -> CellResult:
        if self._result is None:
            raise RuntimeError(f"{self.cell.label} is not tuned yet; call advance() until it returns 'done'")
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
        record = self.store.finished_run(key)
        if record is None:
            self._unseen.add(key)
            return None
        self.claims.clear_if_stale(key)
        return self._record(proposal, key, _from_record(record), by_other=key in self._unseen)

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
            record = self.store.finished_run(key)  # finished since we looked: its last holder died before releasing
            if record is not None:
                result = _from_record(record)
            else:
                result = train(config, self.store, checkpoint_dir=self.checkpoint_dir, on_step=self._heartbeat(key))
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
            if state != DONE:
                return state
        else:
            if self.protocol == "random":
                self._halton = self._halton or halton_trials(self.spec.search_space, self.n_trials, self.base.seed)
                proposals = [_Proposal(h, "trial", i, self.base.seed) for i, h in enumerate(self._halton)]
                pending = [p for p in proposals if self._lookup(p) is None]
            else:
                defaults = {**self.spec.defaults, **self.spec.builder_defaults}
                index: dict[tuple, int] = {}  # coordinate descent scores each new trial once, in trial order

                def score(h: dict[str, Any]) -> float | None:
                    i = index.setdefault(config_id(h), len(index))
                    result = self._lookup(_Proposal(h, "trial", i, self.base.seed))
                    if result is None:
                        return None  # not run yet
                    loss = _loss(result)
                    return math.inf if loss is None else loss

                plan = coordinate_trials(self.spec.search_space, defaults, self.n_trials, score)
                proposals = [_Proposal(h, "trial", i, self.base.seed) for i, h in enumerate(plan.trials)]
                pending = [proposals[i] for i in plan.pending]
            if pending:
                return self._run_first_free(pending)
            trials = [(p.hparams, self._lookup(p)) for p in proposals]
            if not self._in_optuna:
                if not self._record_in_optuna(trials):
                    return WAITING
                self._in_optuna = True
        best = select_best([_loss(r) for _, r in trials])
        seed_runs: list[RunResult] = []
        if best is not None:
            hparams, first = trials[best]
            extra = [_Proposal(hparams, "seed", None, self.base.seed + k) for k in range(1, self.seeds)]
            pending = [p for p in extra if self._lookup(p) is None]
            if pending:
                return self._run_first_free(pending)
            seed_runs = [first] + [self._lookup(p) for p in extra]
        self._result = CellResult(self.cell, trials, trials[best][0] if best is not None else None, seed_runs)
        return DONE

    def _study(self) -> optuna.Study:
        """This cell's Optuna study (created on first use; TPE samples in it)."""
        if self._optuna is None:
            name = study_name(self.cell, self.protocol, self.base.seed, self.base.key())
            storage = optuna_storage(self.store.url)
            self._optuna = retry_on_race(lambda: optuna.create_study(
                study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=self.base.seed),
                direction="minimize", load_if_exists=True))
        return self._optuna

    def _record_in_optuna(self, trials: list[tuple[dict[str, Any], RunResult]]) -> bool:
        """Add the finished trials of a replayed protocol to the cell's Optuna study, once.

        The worker holding the study's claim writes them; others wait for it (False) and then
        find every trial present.
        """
        study = self._study()
        key = "optuna:" + hashlib.sha256(study.study_name.encode()).hexdigest()[:48]
        if not self.claims.try_claim(key):
            return False
        try:
            runs = [(i, h, self.store.get_run(self._config(_Proposal(h, "trial", i, self.base.seed)).key()))
                    for i, (h, _) in enumerate(trials)]
            retry_on_race(lambda: record_trials(study, self.spec.search_space, runs))
        finally:
            self.claims.release(key)
        return True

    def _tpe_hparams(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return {n: from_optuna(self.spec.search_space[n], v) for n, v in trial.params.items()}

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
        study = self._study()
        running = optuna.trial.TrialState.RUNNING
        all_trials = study.get_trials(deepcopy=False)
        valid = sorted((t for t in all_trials if _tpe_valid(t)), key=lambda t: t.number)[: self.n_trials]
        waiting = False
        for t in valid:
            if t.state != running:
                continue
            if not t.user_attrs.get("ready"):  # asked; its worker has not claimed a run (yet, or died first)
                if _utcnow() - t.datetime_start.replace(tzinfo=None) > self.claims.lease:
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
            study.sampler = optuna.samplers.TPESampler(seed=(self.base.seed * 1_000_003 + trial.number) % 2**32)
            before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and _tpe_valid(t)]
            if len(before) >= self.n_trials:  # other workers filled the budget meanwhile
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return RAN, []
            hparams = {name: suggest(trial, name, dim) for name, dim in sorted(self.spec.search_space.items())}
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


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _tpe_valid(trial: optuna.trial.FrozenTrial) -> bool:
    """Running, or finished after its run was claimed."""
    if trial.state == optuna.trial.TrialState.RUNNING:
        return True
    return trial.state.is_finished() and bool(trial.user_attrs.get("ready"))


def _tell(study: optuna.Study, number: int, result: RunResult) -> None:
    """Report ``result`` for trial ``number``, unless its previous holder told it before letting go of the claim."""
    def finished() -> bool:
        return any(t.number == number and t.state.is_finished() for t in study.get_trials(deepcopy=False))

    if finished():
        return
    loss = _loss(result)
    try:
        study.tell(number, loss, state=None if loss is not None else optuna.trial.TrialState.FAIL)
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
