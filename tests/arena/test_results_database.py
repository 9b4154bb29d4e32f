"""The results database under damage: every command answers one line, a dropped table is rebuilt,
a read-only folder still gives a report, and ``results.db`` alone is complete after an arena."""

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optarena.arena.store import ResultStore, StoreError
from optarena.cli import app

runner = CliRunner()
ARENA = ["arena", "--workloads", "quadratic", "--optimizers", "adamw", "--trials", "2", "--seeds", "1",
         "--steps", "3"]


@pytest.fixture(scope="module")
def arena_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arena")
    result = runner.invoke(app, [*ARENA, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _copy(arena_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(arena_dir, out)
    return out


def _runs(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from optarena_runs where status = 'ok'").fetchone()[0]


def _random_bytes(out: Path) -> None:
    (out / "results.db").write_bytes(os.urandom(8192))


def _truncated(out: Path) -> None:
    db = out / "results.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in ("results.db-wal", "results.db-shm"):
        (out / extra).unlink(missing_ok=True)
    with db.open("r+b") as handle:
        handle.truncate(db.stat().st_size // 2)


def _foreign(out: Path) -> None:
    for extra in ("results.db", "results.db-wal", "results.db-shm"):
        (out / extra).unlink(missing_ok=True)
    with sqlite3.connect(out / "results.db") as conn:
        conn.execute("create table invoices (id integer primary key, total real)")


@pytest.mark.parametrize("damage", [_random_bytes, _truncated, _foreign], ids=["random", "truncated", "foreign"])
@pytest.mark.parametrize("command", [
    ARENA,
    ["run", "--workload", "quadratic", "--steps", "2"],
    ["report"],
    ["predict"],
    ["predict", "--fit", "1"],
], ids=["arena", "run", "report", "predict-list", "predict-fit"])
def test_every_command_names_an_unusable_database(arena_dir, tmp_path, damage, command):
    out = _copy(arena_dir, tmp_path)
    damage(out)
    before = (out / "results.db").read_bytes()
    result = runner.invoke(app, [*command, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(out / "results.db") in lines[0], result.output
    assert "--out" in lines[0]  # what to do
    assert (out / "results.db").read_bytes() == before  # left as it was: nothing written into someone's file


def test_a_foreign_database_is_refused_by_the_library_too(tmp_path):
    _foreign(tmp_path)
    with pytest.raises(StoreError, match="tables of another application"):
        ResultStore(f"sqlite:///{tmp_path / 'results.db'}")


def test_a_dropped_runs_table_is_recreated_and_the_arena_finishes(arena_dir, tmp_path):
    out = _copy(arena_dir, tmp_path)
    with sqlite3.connect(out / "results.db") as conn:
        conn.execute("drop table optarena_runs")
    first = runner.invoke(app, [*ARENA, "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "recreated the missing tables optarena_runs" in " ".join(first.output.split())
    again = runner.invoke(app, [*ARENA, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert again.output.count("reused") == 2  # the retrained runs are whole: nothing left to redo
    assert _runs(out / "results.db") == 2


def test_report_reads_a_read_only_folder(arena_dir, tmp_path, monkeypatch):
    out = _copy(arena_dir, tmp_path)
    for name in ("report.md", "report.html"):
        (out / name).unlink()
    shutil.rmtree(out / "plots")
    real_access = os.access

    def access(path, mode, **kwargs):  # as a user without write permission sees the folder (root ignores chmod)
        if mode & os.W_OK and Path(path).resolve() == out.resolve():
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    listing = sorted(p.name for p in out.iterdir())
    db_before = (out / "results.db").read_bytes()
    out.chmod(0o555)
    try:
        result = runner.invoke(app, ["report", "--out", str(out)])
    finally:
        out.chmod(0o755)
    assert result.exit_code == 0, result.output
    assert "adamw" in result.output and "read-only" in result.output
    assert sorted(p.name for p in out.iterdir()) == listing  # no report, plots, -wal or -shm written
    assert (out / "results.db").read_bytes() == db_before
    store = ResultStore(f"sqlite:///{out / 'results.db'}")
    assert store.read_only and len(store.runs()) == 2
    with pytest.raises(Exception, match="readonly"):
        store.save_study("x", {})


def test_results_db_alone_holds_every_run_after_an_arena(tmp_path):
    out = tmp_path / "arena"
    result = runner.invoke(app, [*ARENA, "--out", str(out)])
    assert result.exit_code == 0, result.output
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "results.db", alone / "results.db")  # without results.db-wal
    assert _runs(alone / "results.db") == 2
