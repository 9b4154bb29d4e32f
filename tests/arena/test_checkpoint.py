"""Checkpoints run no code, and a damaged or foreign one is discarded with one warning; the run restarts."""

import warnings

import pytest
import torch

from optarena.arena.checkpoint import CheckpointWarning, read_checkpoint, write_checkpoint
from optarena.arena.store import ResultStore
from optarena.arena.trainer import RunConfig, train
from optarena.optim import list_optimizers


class _Killed(BaseException):
    """Stands for SIGKILL: escapes the trainer's error handling, leaving the checkpoint behind."""


def _kill_at(step: int):
    def on_step(done: int, total: int) -> None:
        if done == step:
            raise _Killed
    return on_step


def _config(**kw) -> RunConfig:
    base = dict(workload="quadratic", scale="default", optimizer="adamw", hparams={"lr": 0.05}, steps=40,
                eval_every=10)
    return RunConfig(**{**base, **kw})


def _points(result):
    return [(p.step, p.train_loss, p.eval_loss, p.grad_norm) for p in result.curve]


def _killed_run(tmp_path, config, at=25):
    """A store and checkpoint folder as a run of ``config`` killed after ``at`` steps leaves them."""
    store, directory = ResultStore(f"sqlite:///{tmp_path / 'r.db'}"), tmp_path / "ckpt"
    with pytest.raises(_Killed):
        train(config, store, checkpoint_dir=directory, on_step=_kill_at(at))
    path = directory / f"{config.key()}.pt"
    assert path.exists()
    return store, directory, path


def _rerun(config, store, directory):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config, store, checkpoint_dir=directory)
    return result, [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]


def _flip_a_weight_byte(path, key):
    """Change one byte inside the stored model weights, leaving the file's structure intact."""
    data = bytearray(path.read_bytes())
    weight = next(iter(read_checkpoint(path, key)["model"].values()))
    at = bytes(data).find(weight.numpy().tobytes())
    assert at >= 0
    data[at + 1] ^= 0x40
    path.write_bytes(bytes(data))


def _plain_torch_file(path, key):
    torch.save({"step": 20, "model": {}}, path)


def _another_runs_checkpoint(path, key):
    other = _config(hparams={"lr": 0.01})
    state = read_checkpoint(path, key)
    write_checkpoint(path, other.key(), state)  # a valid checkpoint, but of another run


DAMAGE = {
    "truncated": (lambda path, key: path.write_bytes(path.read_bytes()[:-300]), "checksum mismatch"),
    "zero-byte": (lambda path, key: path.write_bytes(b""), "empty file"),
    "garbled tensor bytes": (_flip_a_weight_byte, "checksum mismatch"),
    "not an optarena checkpoint": (_plain_torch_file, "not an optarena checkpoint"),
    "another run's": (_another_runs_checkpoint, "belongs to another run"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_checkpoint_is_discarded_and_the_run_restarts(tmp_path, damage):
    config = _config()
    straight = train(config)
    store, directory, path = _killed_run(tmp_path, config)
    spoil, why = DAMAGE[damage]
    spoil(path, config.key())
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(b"a write cut short by a kill")
    result, warned = _rerun(config, store, directory)
    assert len(warned) == 1 and str(path) in warned[0] and why in warned[0] and "\n" not in warned[0]
    assert result.status == "ok" and result.final_eval_loss == straight.final_eval_loss
    assert _points(result) == _points(straight)
    assert [(p.step, p.train_loss) for p in store.curve(result.run_id)] == [
        (p.step, p.train_loss) for p in straight.curve]
    assert not path.exists() and not partial.exists()


def test_an_unreadable_checkpoint_is_discarded(tmp_path, monkeypatch):
    config = _config()
    straight = train(config)
    store, directory, path = _killed_run(tmp_path, config)
    real_read = type(path).read_bytes

    def denied(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(type(path), "read_bytes", denied)  # chmod 000 does not stop root
    result, warned = _rerun(config, store, directory)
    assert len(warned) == 1 and str(path) in warned[0] and "unreadable (Permission denied)" in warned[0]
    assert result.status == "ok" and _points(result) == _points(straight)


def test_a_verified_checkpoint_that_does_not_fit_the_run_is_discarded_and_the_run_rebuilt(tmp_path):
    config = _config()
    straight = train(config)
    store, directory, path = _killed_run(tmp_path, config)
    state = read_checkpoint(path, config.key())
    del state["scheduler"]  # model and optimizer load, then the state proves incomplete
    write_checkpoint(path, config.key(), state)
    result, warned = _rerun(config, store, directory)
    assert len(warned) == 1 and "does not fit this run (KeyError" in warned[0]
    assert result.status == "ok" and _points(result) == _points(straight)


class _Plant:
    """Unpickling it creates ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("disguise", ["bare pickle", "with a valid header and checksum"])
def test_a_planted_pickle_runs_no_code(tmp_path, disguise):
    config = _config()
    straight = train(config)
    store, directory, path = _killed_run(tmp_path, config)
    marker = tmp_path / "marker"
    if disguise == "bare pickle":
        torch.save({"step": 20, "model": _Plant(marker)}, path)
        why = "not an optarena checkpoint"
    else:
        write_checkpoint(path, config.key(), {"step": 20, "model": _Plant(marker)})
        why = "refused by torch.load(weights_only=True): unsupported global io.open"
    result, warned = _rerun(config, store, directory)
    assert not marker.exists()
    assert len(warned) == 1 and why in warned[0]
    assert result.status == "ok" and _points(result) == _points(straight)


@pytest.mark.parametrize("optimizer", list_optimizers())
def test_every_optimizer_s_checkpoint_loads_with_weights_only(tmp_path, optimizer):
    config = _config(workload="lm", scale="tiny", optimizer=optimizer, hparams={}, steps=6, eval_every=2,
                     averaging="uniform", average_last=2)
    with pytest.raises(_Killed):
        train(config, checkpoint_dir=tmp_path, checkpoint_every=1, on_step=_kill_at(3))
    state = read_checkpoint(tmp_path / f"{config.key()}.pt", config.key())  # raises if weights_only refuses
    assert state["step"] == 3 and state["optimizer"]["state"]


def test_the_checkpoint_of_a_schedule_and_an_ema_loads_with_weights_only(tmp_path):
    config = _config(schedule="wsd_s", schedule_options={"budgets": [20, 40]}, averaging="ema")
    with pytest.raises(_Killed):
        train(config, checkpoint_dir=tmp_path, on_step=_kill_at(25))
    state = read_checkpoint(tmp_path / f"{config.key()}.pt", config.key())
    assert state["scheduler"]["schedule_types"] and state["averager"]["ema"]
    budget_model = torch.load(tmp_path / f"{config.key()}-budget20.pt", weights_only=True)
    assert set(budget_model) == set(state["model"])
    assert not list(tmp_path.glob("*.tmp"))



def test_a_checkpoint_of_another_torch_version_is_discarded(tmp_path):
    config = _config()
    straight = train(config)
    store, directory, path = _killed_run(tmp_path, config)
    state = read_checkpoint(path, config.key())
    state["versions"] = {**state["versions"], "torch": "1.0.0"}
    write_checkpoint(path, config.key(), state)
    result, warned = _rerun(config, store, directory)
    assert len(warned) == 1 and "does not fit this run (ValueError: saved by" in warned[0] and "1.0.0" in warned[0]
    assert result.status == "ok" and _points(result) == _points(straight)
