"""The results store: runs, curves and studies round-trip through SQLAlchemy."""

import math

import pytest

from optarena.arena.store import Cell, CurvePoint, ResultStore, normalize_storage_url, storage_url


def _config(seed: int = 0) -> dict:
    return {"workload": "quadratic", "scale": "default", "optimizer": "adamw", "seed": seed, "steps": 3,
            "hparams": {"lr": 0.1, "betas": [0.9, 0.95]}}


@pytest.fixture
def store(tmp_path):
    return ResultStore(f"sqlite:///{tmp_path / 'r.db'}")


def test_run_lifecycle_and_curve(store):
    run_id = store.start_run("k1", config=_config())
    assert store.get_run("k1").status == "running" and not store.get_run("k1").finished
    assert store.finished_run("k1") is None  # running: nothing to read back yet
    store.add_curve(run_id, [CurvePoint(0, 0, None, 2.0, 0.1, None, 0.0),
                             CurvePoint(1, 128, 1.9, None, 0.1, 3.0, 0.1),
                             CurvePoint(2, 256, math.nan, math.inf, 0.1, 2.0, 0.2)])
    store.finish_run(run_id, status="ok", final_eval_loss=1.5, final_train_loss=1.7,
                     timing={"data": 0.1, "forward_backward": 0.2, "optimizer": 0.3, "eval": 0.0, "wall": 0.7})
    record = store.get_run("k1")
    assert (record.status, record.final_eval_loss, record.time_optimizer) == ("ok", 1.5, 0.3)
    assert record.hparams == {"lr": 0.1, "betas": [0.9, 0.95]} and record.finished
    curve = store.curve(run_id)
    assert [p.step for p in curve] == [0, 1, 2]
    assert curve[2].train_loss is None and curve[2].eval_loss is None  # non-finite stored as NULL
    store.truncate_curve(run_id, after_step=1)
    assert [p.step for p in store.curve(run_id)] == [0, 1]


def test_restarting_a_key_resets_the_run(store):
    first = store.start_run("k", config=_config())
    store.add_curve(first, [CurvePoint(1, 1, 1.0, None, 0.1, 1.0, 0.0)])
    second = store.start_run("k", config=_config())
    assert first == second and store.curve(second) == [] and store.get_run("k").status == "running"


def test_studies_link_runs_once(store):
    run_id = store.start_run("k", config=_config())
    store.save_study("s", {"trials": 2})
    store.link("s", run_id, role="trial", trial=0)
    store.link("s", run_id, role="trial", trial=0)
    assert store.studies() == [("s", {"trials": 2})]
    [(role, trial, record)] = store.study_runs("s")
    assert (role, trial, record.id) == ("trial", 0, run_id)


def test_bad_inputs_are_named(store, tmp_path):
    with pytest.raises(ValueError, match="status must be"):
        store.finish_run(1, status="weird")
    with pytest.raises(ValueError, match="invalid storage URL 'nonsense'"):
        ResultStore("nonsense")


def test_finished_runs_are_read_back_with_their_cell_and_metrics(store):
    run_id = store.start_run("k", config=_config())
    store.finish_run(run_id, status="diverged", diverged_step=2, metrics={"accuracy": 0.5, "bad": math.nan})
    record = store.finished_run("k")
    assert record is not None and record.id == run_id and record.diverged_step == 2
    assert record.metrics == {"accuracy": 0.5, "bad": None}
    assert record.cell == Cell("quadratic", "default", 3, "adamw")
    assert record.cell.label == "quadratic/default/adamw@3" and record.cell.problem == ("quadratic", "default", 3)
    assert store.finished_run("unknown") is None


def test_storage_urls_are_resolved_in_one_place(tmp_path):
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'results.db'}"
    assert storage_url("sqlite:///x.db", tmp_path) == "sqlite:///x.db"
    assert normalize_storage_url("postgresql://u@h/db") in ("postgresql://u@h/db", "postgresql+psycopg://u@h/db")
