"""The command line end to end: `optarena arena --budget smoke` writes the database, report and plots."""

import sqlite3

import pytest
from typer.testing import CliRunner

from optarena.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("arena")
    result = runner.invoke(app, ["arena", "--budget", "smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_smoke_arena_writes_database_report_and_plots(smoke):
    out, output = smoke
    assert (out / "results.db").exists() and (out / "report.md").exists()
    report = (out / "report.md").read_text()
    for name in ("adamw", "sgd", "muon", "lion"):
        assert f"| {name} |" in report
        assert name in output
    assert "2 trials" in report and "2 seeds" in report  # the budget stands next to the numbers
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["curves_lm_tiny.png", "lr_lm_tiny.png"]
    assert all((out / "plots" / p).stat().st_size > 10_000 for p in pngs)
    with sqlite3.connect(out / "results.db") as db:
        statuses = dict(db.execute("select status, count(*) from optarena_runs group by status").fetchall())
        points = db.execute("select count(*) from optarena_curve").fetchone()[0]
    assert sum(statuses.values()) == 4 * (2 + 1) and statuses.get("failed", 0) == 0
    assert points >= 12 * 31
    assert not any((out / "checkpoints").glob("*.pt"))  # finished runs leave no checkpoint


def test_rerunning_the_arena_reuses_every_finished_run(smoke):
    out, _ = smoke
    again = runner.invoke(app, ["arena", "--budget", "smoke", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert again.output.count("reused") == 12
    with sqlite3.connect(out / "results.db") as db:
        assert db.execute("select count(*) from optarena_runs").fetchone()[0] == 12


def test_report_rerenders_from_the_database(smoke):
    out, _ = smoke
    (out / "report.md").unlink()
    result = runner.invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| adamw |" in (out / "report.md").read_text()
    for name in ("adamw", "sgd", "muon", "lion"):  # the tables write_report computed, printed once
        assert f"  {name}: " in result.output and "lr=" in result.output.split(f"  {name}: ", 1)[1]


def test_run_trains_one_configuration(tmp_path):
    result = runner.invoke(app, ["run", "--workload", "quadratic", "--optimizer", "sgd", "--hparams",
                                 '{"lr": 0.01}', "--steps", "20", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "ok: final eval loss" in result.output


@pytest.mark.parametrize("args,message", [
    (["arena", "--optimizers", "adamw,muonn"], "unknown optimizer 'muonn'"),
    (["arena", "--workloads", "lmm"], "unknown workload 'lmm'"),
    (["arena", "--budget", "huge"], "budget must be one of"),
    (["arena", "--scales", "giant"], "scales ['giant'] belong to none of"),
    (["run", "--optimizer", "lion", "--hparams", '{"momentum": 0.9}'], "unknown hyperparameters ['momentum']"),
    (["report", "--out", "/nonexistent/dir"], "no results database"),
])
def test_bad_input_gets_a_clear_message(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_list_shows_every_optimizer():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("adamw", "sgd", "muon", "lion"):
        assert name in result.output


def test_arena_parametrization_switch_reaches_the_runs(tmp_path):
    result = runner.invoke(app, ["arena", "--budget", "smoke", "--optimizers", "adamw", "--scales", "small",
                                 "--trials", "1", "--seeds", "1", "--steps", "4", "--parametrization", "mup",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(tmp_path / "results.db") as db:
        [config] = db.execute("select config from optarena_runs").fetchone()
    assert '"parametrization": "mup"' in config and '"attn_scale": "mup"' in config
    bad = runner.invoke(app, ["arena", "--parametrization", "mu"])
    assert bad.exit_code == 2 and "parametrization" in bad.output
