"""The training loop: records runs, survives divergence, resumes exactly, reuses finished runs."""

import math

import pytest
import torch

from optarena.arena.store import ResultStore
from optarena.arena.trainer import RunConfig, train


@pytest.fixture
def store(tmp_path):
    return ResultStore(f"sqlite:///{tmp_path / 'r.db'}")


def _config(**kw) -> RunConfig:
    base = dict(workload="quadratic", scale="default", optimizer="adamw", hparams={"lr": 0.05}, steps=40,
                eval_every=10)
    return RunConfig(**{**base, **kw})


def test_run_is_recorded_with_curve_and_timing(store):
    result = train(_config(), store)
    assert result.status == "ok" and not result.reused
    initial = result.curve[0].eval_loss
    assert result.final_eval_loss < 0.5 * initial  # measured: about 0.2x on this problem
    record = store.get_run(_config().key())
    assert record.status == "ok" and record.final_eval_loss == pytest.approx(result.final_eval_loss)
    curve = store.curve(record.id)
    assert [p.step for p in curve] == list(range(41))
    assert [p.step for p in curve if p.eval_loss is not None] == [0, 10, 20, 30, 40]
    assert curve[-1].tokens == 40 * 128
    assert all(record.__dict__[k] > 0 for k in ("time_forward_backward", "time_optimizer", "wall_time"))
    assert record.config["task"]  # workload facts recorded with the run
    assert record.config["versions"]["torch"]


def test_finished_run_is_reused_not_rerun(store):
    first = train(_config(), store)
    again = train(_config(), store)
    assert again.reused and again.final_eval_loss == first.final_eval_loss and len(again.curve) == len(first.curve)


def test_divergence_is_recorded_and_does_not_raise(store):
    result = train(_config(optimizer="sgd", hparams={"lr": 50.0, "momentum": 0.9}), store)
    assert result.status == "diverged" and result.final_eval_loss is None
    assert 1 <= result.diverged_step < 40
    assert store.get_run(_config(optimizer="sgd", hparams={"lr": 50.0, "momentum": 0.9}).key()).status == "diverged"


def test_a_failing_configuration_is_recorded_as_failed(store):
    result = train(_config(hparams={"lr": -1.0}), store)
    assert result.status == "failed" and "lr must be a finite number >= 0, got lr=-1.0" in result.error


class _Killed(BaseException):
    """Stands for SIGKILL: escapes the trainer's error handling, leaving the checkpoint behind."""


@pytest.mark.parametrize("optimizer,hparams", [("adamw", {"lr": 0.05}), ("muon", {"lr": 0.05})])
def test_resume_after_a_kill_continues_the_exact_trajectory(tmp_path, optimizer, hparams):
    config = _config(workload="lm", scale="tiny", optimizer=optimizer, hparams=hparams, steps=12, eval_every=4)
    straight = train(config, ResultStore(f"sqlite:///{tmp_path / 'a.db'}"))

    store = ResultStore(f"sqlite:///{tmp_path / 'b.db'}")

    def kill_at_9(done: int, total: int) -> None:
        if done == 9:
            raise _Killed

    with pytest.raises(_Killed):
        train(config, store, checkpoint_dir=tmp_path / "ckpt", on_step=kill_at_9)
    assert (tmp_path / "ckpt" / f"{config.key()}.pt").exists()  # saved at step 8
    resumed = train(config, store, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.status == "ok"
    assert resumed.final_eval_loss == straight.final_eval_loss  # bit-exact on CPU
    assert [(p.step, p.train_loss, p.eval_loss) for p in resumed.curve] == [
        (p.step, p.train_loss, p.eval_loss) for p in straight.curve]
    assert not (tmp_path / "ckpt" / f"{config.key()}.pt").exists()


def test_same_seed_same_numbers(store, tmp_path):
    config = _config(workload="lm", scale="tiny", steps=6, eval_every=3)
    a = train(config)
    b = train(config)
    assert a.final_eval_loss == b.final_eval_loss
    assert [p.train_loss for p in a.curve] == [p.train_loss for p in b.curve]


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        _config(schedule="cosin")
    with pytest.raises(ValueError, match="steps"):
        _config(steps=0)


def test_mup_parametrization_builds_a_mup_model_and_records_stability_stats(store):
    config = _config(workload="lm", scale="small", steps=4, eval_every=2, parametrization="mup",
                     workload_options={"track_stats": True})
    result = train(config, store)
    assert result.status == "ok", result.error
    record = store.get_run(config.key())
    assert record.config["task"]["config"]["output_mult"] == pytest.approx(64 / 128)  # base tiny, width 128
    assert record.config["task"]["config"]["attn_scale"] == "mup"
    points = store.curve(record.id)[1:]
    assert all(p.max_attn_logit is not None and p.logit_rms > 0 for p in points)
    with pytest.raises(ValueError):
        _config(parametrization="muq")
    failed = train(_config(parametrization="mup"), store)  # quadratic has no width
    assert failed.status == "failed" and "needs a workload with a width" in failed.error


@pytest.mark.parametrize("averaging", ["ema", "uniform"])
def test_weight_averaging_is_what_gets_evaluated_and_resumes_exactly(tmp_path, averaging):
    config = _config(workload="lm", scale="tiny", steps=12, eval_every=4, averaging=averaging, ema_decay=0.9,
                     average_last=2)
    plain = train(config.model_copy(update={"averaging": "none"}))
    straight = train(config)
    assert straight.status == "ok"
    assert straight.final_eval_loss != plain.final_eval_loss
    assert [p.train_loss for p in straight.curve] == [p.train_loss for p in plain.curve]  # training untouched
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")

    def kill_at_10(done: int, total: int) -> None:
        if done == 10:
            raise _Killed

    with pytest.raises(_Killed):
        train(config, store, checkpoint_dir=tmp_path / "ckpt", on_step=kill_at_10)
    resumed = train(config, store, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.final_eval_loss == straight.final_eval_loss


def test_averaging_matches_a_hand_computed_ema(tmp_path):
    import torch
    from optarena.arena.averaging import WeightAverager

    model = torch.nn.Linear(2, 1, bias=False)
    averager = WeightAverager(model, "ema", ema_decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    averager.update()
    with averager.swapped_in():
        assert torch.allclose(model.weight, start + 1.0)
    assert torch.allclose(model.weight, start + 2.0)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        WeightAverager(model, "ema", ema_decay=1.0)


def test_wsd_s_evaluates_and_saves_a_model_per_budget(tmp_path):
    config = _config(steps=40, eval_every=40, schedule="wsd_s", schedule_options={"budgets": [20, 40]},
                     warmup_fraction=0.0)
    result = train(config, checkpoint_dir=tmp_path)
    evaluated = [p.step for p in result.curve if p.eval_loss is not None]
    assert evaluated == [0, 20, 40]
    assert sorted(f.name for f in tmp_path.glob("*.pt")) == [f"{config.key()}-budget20.pt",
                                                              f"{config.key()}-budget40.pt"]
    lrs = {p.step: p.lr for p in result.curve}
    # point s logs the lr of update s: linear decay over updates 17..20, then the peak resumes at update 21
    assert [lrs[s] / 0.05 for s in (16, 17, 18, 19, 20, 21)] == pytest.approx([1, 1, 0.75, 0.5, 0.25, 1])


def test_run_key_ignores_settings_left_at_their_defaults():
    assert _config().key() == _config(averaging="none", ema_decay=0.99).key()
    assert _config().key() != _config(averaging="ema").key()
    assert _config(steps=None).key() == _config(steps=300).key()  # quadratic's default budget


@pytest.mark.parametrize("optimizer", ["sophia_g", "sophia_h", "schedule_free_adamw", "drop_muon", "mkor_h"])
def test_optimizers_with_hooks_train_in_the_loop(store, optimizer):
    config = _config(workload="lm", scale="tiny", optimizer=optimizer, hparams={}, steps=30, eval_every=10)
    result = train(config, store)
    assert result.status == "ok", result.error
    assert result.final_eval_loss < result.curve[0].eval_loss - 0.3  # measured drops: 0.58 (sophia_g) to 2.4 nats
    if optimizer == "schedule_free_adamw":
        assert store.get_run(config.key()).config["effective_schedule"].startswith("constant")


def test_no_clipping_records_the_same_norms_and_trajectory_as_a_clip_never_reached():
    unclipped = train(_config(grad_clip=None, steps=20))
    never_reached = train(_config(grad_clip=1e12, steps=20))
    assert [(p.train_loss, p.grad_norm) for p in unclipped.curve] == [
        (p.train_loss, p.grad_norm) for p in never_reached.curve]
    assert unclipped.curve[1].grad_norm > 1.0


def test_final_metrics_are_recorded_and_reused(store):
    config = _config(workload="digits", scale="small", hparams={"lr": 3e-3}, steps=20, eval_every=10)
    result = train(config, store)
    assert result.status == "ok", result.error
    assert set(result.metrics) == {"loss", "accuracy"} and 0.5 < result.metrics["accuracy"] <= 1.0
    assert result.metrics["loss"] == result.final_eval_loss == result.curve[-1].eval_loss
    assert store.get_run(config.key()).metrics == result.metrics
    assert train(config, store).metrics == result.metrics  # a reused run reads them from the store
    exploding = _config(optimizer="sgd", hparams={"lr": 50.0, "momentum": 0.9})
    assert train(exploding, store).metrics == {} and store.get_run(exploding.key()).metrics == {}


def _poison_gradient_at(monkeypatch, step: int) -> dict:
    """Make one gradient element NaN in update ``step`` (a finite loss); capture the run around it."""
    import copy

    from optarena.arena.trainer import _Run

    seen: dict = {"calls": 0}
    forward_backward = _Run.forward_backward

    def snapshot(run):  # the schedule moves the lr on: every other setting and all state must stay
        state = copy.deepcopy(run.optimizer.state_dict())
        groups = [{k: v for k, v in group.items() if k != "lr"} for group in state["param_groups"]]
        return [p.detach().clone() for p in run.params], state["state"], groups

    def poisoned(run, batch):
        seen["calls"] += 1
        if seen["calls"] == step + 1:  # the update after the poisoned one is about to start
            seen["after"] = snapshot(run)
        loss = forward_backward(run, batch)
        if seen["calls"] == step:
            seen["before"] = snapshot(run)
            run.params[0].grad.view(-1)[0] = float("nan")
        return loss

    monkeypatch.setattr(_Run, "forward_backward", poisoned)
    return seen


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.filterwarnings("ignore:SophiaG got no sampled-label loss")
@pytest.mark.parametrize("optimizer,hparams", [("adamw", {"lr": 0.05}),  # Sophia: a Hessian refresh due every step
                                               ("sophia_g", {"lr": 0.05, "hessian_interval": 1})])
def test_skip_nonfinite_grads_leaves_parameters_and_state_untouched(store, monkeypatch, optimizer, hparams):
    config = _config(optimizer=optimizer, hparams=hparams, steps=12, eval_every=4, skip_nonfinite_grads=True)
    seen = _poison_gradient_at(monkeypatch, 5)
    result = train(config, store)
    assert result.status == "ok", result.error
    assert result.skipped_steps == 1 and result.metrics["skipped_steps"] == 1
    assert _same(seen["before"], seen["after"])  # parameters, moments, step counts and Hessian as before the step
    assert not math.isfinite(result.curve[5].grad_norm) and math.isfinite(result.curve[6].grad_norm)
    record = store.get_run(config.key())
    assert record.metrics["skipped_steps"] == 1 and record.config["skip_nonfinite_grads"] is True


def test_without_skip_nonfinite_grads_a_nan_gradient_diverges_the_run(store, monkeypatch):
    _poison_gradient_at(monkeypatch, 5)
    config = _config(steps=12, eval_every=4)
    result = train(config, store)
    assert result.status == "diverged" and result.diverged_step == 6 and result.skipped_steps == 0
    assert store.get_run(config.key()).status == "diverged"


def test_skip_nonfinite_grads_keeps_the_trajectory_and_key_of_a_clean_run():
    assert _config(skip_nonfinite_grads=False).key() == _config().key()
    assert _config(skip_nonfinite_grads=True).key() != _config().key()
    plain, guarded = train(_config(steps=12)), train(_config(steps=12, skip_nonfinite_grads=True))
    assert _points(plain) == _points(guarded) and guarded.skipped_steps == 0


def _points(result):
    return [(p.step, p.train_loss, p.eval_loss, p.grad_norm) for p in result.curve]


def test_a_resumed_run_keeps_its_count_of_skipped_steps(tmp_path, store, monkeypatch):
    config = _config(steps=12, eval_every=4, skip_nonfinite_grads=True)
    _poison_gradient_at(monkeypatch, 5)
    straight = train(config)
    _poison_gradient_at(monkeypatch, 5)

    def kill_at_9(done: int, total: int) -> None:
        if done == 9:
            raise _Killed

    with pytest.raises(_Killed):
        train(config, store, checkpoint_dir=tmp_path, on_step=kill_at_9)
    resumed = train(config, store, checkpoint_dir=tmp_path)
    assert resumed.skipped_steps == straight.skipped_steps == 1
    assert [(p.step, p.train_loss, p.eval_loss) for p in resumed.curve] == [
        (p.step, p.train_loss, p.eval_loss) for p in straight.curve]
