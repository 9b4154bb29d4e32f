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
    assert pngs == ["curves_lm_tiny.png", "lr_lm_tiny.png", "training_lm_tiny.png"]
    assert "(plots/training_lm_tiny.png)" in report  # the curves' gradient norms and stability proxies, plotted
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


def test_skip_nonfinite_grads_reaches_the_runs_and_the_study_identity(tmp_path):
    args = ["arena", "--workloads", "quadratic", "--optimizers", "sgd", "--trials", "1", "--seeds", "1",
            "--steps", "3"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "plain")])
    skipping = runner.invoke(app, [*args, "--skip-nonfinite-grads", "--out", str(tmp_path / "skip")])
    assert plain.exit_code == 0 and skipping.exit_code == 0, plain.output + skipping.output
    with sqlite3.connect(tmp_path / "skip" / "results.db") as db:
        [(config, metrics)] = db.execute("select config, metrics from optarena_runs").fetchall()
        [skip_study] = db.execute("select name from optarena_study").fetchone()
    with sqlite3.connect(tmp_path / "plain" / "results.db") as db:
        [plain_study] = db.execute("select name from optarena_study").fetchone()
    assert '"skip_nonfinite_grads": true' in config and '"skipped_steps": 0' in metrics
    assert skip_study != plain_study


def test_ctrl_c_ends_the_arena_with_one_line_on_how_to_resume(tmp_path, monkeypatch):
    import optarena.arena.runner as runner_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "run_arena", interrupted)
    result = runner.invoke(app, ["arena", "--workloads", "quadratic", "--out", str(tmp_path)])
    assert result.exit_code == 130
    assert "rerun the same command to resume" in result.output and "Traceback" not in result.output


QUICK = ["--workloads", "quadratic", "--optimizers", "adamw", "--trials", "1", "--seeds", "1", "--steps", "2"]


@pytest.mark.parametrize("args,message", [
    (["arena", *QUICK, "--schedule", "wsd:decay_fraction=abc"], "decay_fraction must be a finite number in [0, 1]"),
    (["arena", *QUICK, "--schedule", "wsd:decay_fraction=2"], "got decay_fraction=2"),
    (["arena", *QUICK, "--schedule", "wsd:decay_fraction=-1"], "got decay_fraction=-1"),
    (["arena", *QUICK, "--schedule", "wsd:decay_fraction=nan"], "got decay_fraction=nan"),
    (["arena", *QUICK, "--schedule", "wsd:bogus=1"], "has no option 'bogus'"),
    (["arena", *QUICK, "--schedule", "wsd:decay_fraction=0.1,decay_fraction=0.2"], "is given twice"),
    (["arena", *QUICK, "--parametrization", "mup"], "quadratic has none"),
    (["arena", *QUICK, "--storage", "notaurl"], "invalid storage URL 'notaurl'"),
    (["arena", *QUICK, "--storage", "postgresql+nosuchdriver://u@h/db"], "no database driver"),
    (["arena", *QUICK, "--storage", "postgresql+psycopg://u@127.0.0.1:1/db"], "cannot reach the database"),
    (["arena", *QUICK, "--seed", "-1"], "seed"),
    (["arena", *QUICK, "--seed", str(2**40)], "seed"),
    (["arena", *QUICK, "--workers", "0"], "workers"),
    (["arena", *QUICK, "--steps", str(10**12)], "steps"),
    (["arena", *QUICK, "--optimizers", "adamw,lionn"], "Did you mean 'lion'"),
    (["run", "--workload", "quadratic", "--scale", "huge"], "unknown quadratic scale 'huge'; valid scales: default"),
    (["run", "--workload", "quadratic", "--seed", "-1"], "--seed must be an integer from 0"),
    (["run", "--workload", "quadratic", "--schedule", "wsd:decay_fraction=2"], "got decay_fraction=2"),
    (["run", "--workload", "quadratic", "--hparams", "{lr: 1"], "--hparams must be a JSON object"),
    (["run", "--workload", "quadratic", "--storage", "notaurl"], "invalid storage URL"),
    (["run", "--workload", "quadratic", "--hparams", '{"lr": -1}'], "lr"),
    (["run", "--workload", "quadratic", "--optimizer", "drop_muon"], "DropMuon needs at least one layer"),
    (["coord-check", "--include", "(["], "--include must be a regular expression"),
    (["coord-check", "--optimizer", "adamx"], "unknown optimizer 'adamx'"),
    (["coord-check", "--widths", "16,x"], "--widths takes comma-separated integers"),
])
def test_bad_options_end_in_one_line_before_anything_trains(tmp_path, args, message):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / ("x.png" if args[0] == "coord-check" else "out"))])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "out" / "results.db").exists() or args[0] == "run"


def test_out_naming_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    for args in (["arena", *QUICK], ["run", "--workload", "quadratic"]):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "file")])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert "must be a folder" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def no_hidden_matrix(tmp_path_factory):
    """adamw, mkor (its AdamW rule only) and drop_muon (which refuses) on quadratic, a problem with no hidden matrix."""
    out = tmp_path_factory.mktemp("flat")
    result = runner.invoke(app, ["arena", "--workloads", "quadratic", "--optimizers", "adamw,mkor,drop_muon",
                                 "--trials", "2", "--seeds", "1", "--steps", "3", "--out", str(out)])
    return out, result


def test_a_cell_with_only_failed_trials_fails_the_arena_and_says_why(no_hidden_matrix):
    out, result = no_hidden_matrix
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert text.count("drop_muon: 2 runs failed: ValueError: DropMuon needs at least one layer") == 1
    assert "quadratic/default/drop_muon@3: no finished trial (2 of 2 trials failed, 0 diverged)" in text
    report = (out / "report.md").read_text()
    assert report.count("Failed: drop_muon, 2 runs: `ValueError: DropMuon needs at least one layer") == 1
    assert "all failed" in report


def test_a_matrix_optimizer_without_hidden_matrices_is_labelled(no_hidden_matrix):
    out, _ = no_hidden_matrix
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")]
    mkor = next(r for r in rows if "| mkor |" in r and "±" in r)
    adamw = next(r for r in rows if "| adamw |" in r and "±" in r)
    assert "no hidden matrix: ran its AdamW rule" in mkor and "no hidden matrix" not in adamw


def test_report_shows_failure_reasons_again(no_hidden_matrix):
    out, _ = no_hidden_matrix
    result = runner.invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "drop_muon: 2 runs failed: ValueError: DropMuon" in " ".join(result.output.split())


def test_predict_refuses_a_folder_as_its_plot(tmp_path):
    result = runner.invoke(app, ["predict", "--out", str(tmp_path), "--fit", "1", "--plot", str(tmp_path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "is a folder; name a PNG file" in " ".join(result.output.split())
