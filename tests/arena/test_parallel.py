"""Scaling out stays correct: exclusive claims, shared studies on PostgreSQL, killed workers and arenas.

The PostgreSQL tests start a throw-away cluster (``initdb`` + ``pg_ctl``) on a free localhost
port in a temporary directory; as root the server runs as the ``postgres`` user (it refuses
to run as root). They skip only where the server binaries are not installed.
"""

import datetime as dt
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from optarena.arena.report import ranking_rows
from optarena.arena.runner import ArenaConfig, horizon_steps, run_arena
from optarena.arena.store import ResultStore
from optarena.arena.trainer import RunConfig
from optarena.arena.claims import Claims, claims_table
from optarena.arena.summaries import summarize_study
from optarena.arena.tuner import tune_cell

CLI = [sys.executable, "-c", "from optarena.cli import app; app()"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same numerics as this process


# -- a throw-away PostgreSQL cluster -----------------------------------------------------------

def _postgres_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [found] if found else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    for candidate in candidates:
        if candidate and Path(candidate).with_name("initdb").exists():
            return Path(candidate).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_server():
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the psycopg driver is in the [test] extra: pip install 'psycopg[binary]'")
    root = Path(tempfile.mkdtemp(prefix="optarena-pg-"))
    user: dict = {}
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as an unprivileged user
        account = next((pwd.getpwnam(n) for n in ("postgres", "nobody") if n in {p.pw_name for p in pwd.getpwall()}))
        os.chown(root, account.pw_uid, account.pw_gid)
        user = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[], cwd=root)
    port, data = _free_port(), root / "data"
    subprocess.run([bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, **user)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-t", "60", "-o", options, "start"],
                   check=True, capture_output=True, **user)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, **user)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh database on the throw-away server for each test."""
    name = "t_" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40] + f"_{random.randrange(10**6)}"
    engine = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{postgres_server}/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def any_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    return request.getfixturevalue("postgres_url")


# -- claims ------------------------------------------------------------------------------------

def test_claims_are_exclusive_when_workers_race(any_url):
    store = ResultStore(any_url)
    workers = [Claims(store.engine, worker=f"thread-{i}") for i in range(6)]
    for key in ("k1", "k2", "k3"):
        barrier, won = threading.Barrier(len(workers)), []

        def race(claims: Claims) -> None:
            barrier.wait()
            if claims.try_claim(key):
                won.append(claims.worker)

        threads = [threading.Thread(target=race, args=(c,)) for c in workers]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(won) == 1, won
        holder = next(c for c in workers if c.worker == won[0])
        assert all(not c.try_claim(key) for c in workers if c is not holder)  # a live holder keeps it
        assert holder.try_claim(key) and holder.heartbeat(key)  # re-entrant for the holder
    holder.release("k3")
    assert workers[0].try_claim("k3")  # released keys are free again


def test_stale_claims_are_taken_over_once(any_url):
    store = ResultStore(any_url)
    mine = Claims(store.engine, lease_seconds=60)
    remote = Claims(store.engine, lease_seconds=60, worker="other-host:4242:abcd")  # another machine
    assert remote.try_claim("a") and not mine.try_claim("a")  # fresh heartbeat from elsewhere: wait
    with store.engine.begin() as conn:  # its heartbeat is older than the lease: the machine is gone
        conn.execute(sa.update(claims_table).values(heartbeat=dt.datetime(2000, 1, 1)))
    assert mine.try_claim("a")
    assert not remote.heartbeat("a")  # the old holder learns it lost the claim (ClaimLost in training)

    dead = subprocess.Popen(["true"])
    dead.wait()
    local = Claims(store.engine, worker=f"{socket.gethostname()}:{dead.pid}:dead")  # a killed worker here
    assert local.try_claim("b")
    assert mine.try_claim("b")  # taken over at once: its process is gone, no need to wait for the lease
    contenders = [Claims(store.engine, worker=f"{socket.gethostname()}:{os.getpid()}:{i}") for i in range(4)]
    local.try_claim("c")
    with store.engine.begin() as conn:
        conn.execute(sa.update(claims_table).where(claims_table.c.key == "c").values(
            worker=f"{socket.gethostname()}:{dead.pid}:dead"))
    assert sum(c.try_claim("c") for c in contenders) == 1  # compare-and-swap: one of several wins


def test_tables_can_be_created_by_many_workers_at_once(postgres_url):
    errors = []

    def start() -> None:
        try:
            from optarena.arena.claims import retry_on_race

            store = retry_on_race(lambda: ResultStore(postgres_url))
            Claims(store.engine)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors


# -- workers sharing a study -------------------------------------------------------------------

def _settings(out: Path, storage: str | None = None, **kw) -> ArenaConfig:
    base = dict(workloads=["quadratic"], optimizers=["adamw", "sgd"], protocol="coordinate", trials=4, seeds=2,
                steps=30, out=out, storage=storage)
    return ArenaConfig(**{**base, **kw})


def _cli_args(config: ArenaConfig) -> list[str]:
    args = ["arena", "--workloads", ",".join(config.workloads), "--optimizers", ",".join(config.optimizers),
            "--protocol", config.protocol, "--trials", str(config.trials), "--seeds", str(config.seeds),
            "--steps", str(config.steps), "--out", str(config.out), "--workers", str(config.workers)]
    return args + (["--storage", config.storage] if config.storage else [])


def _table(store: ResultStore, study: str) -> list[list[dict]]:
    """The ranking tables without wall-time columns (the only numbers that differ between machines)."""
    cells = summarize_study(store, study)
    return [[{k: v for k, v in row.items() if "ms/" not in k and "time" not in k} for row in ranking_rows(c)]
            for c in cells]


def _outcomes(store: ResultStore, study: str) -> list[tuple]:
    return sorted((r.optimizer, role, trial, r.seed, r.key, r.status, r.final_eval_loss)
                  for role, trial, r in store.study_runs(study))


def _assert_each_run_once(store: ResultStore, config: ArenaConfig) -> None:
    links = store.study_runs(config.study_name())
    per_optimizer = {o: sorted((role, t if t is not None else -1) for role, t, r in links if r.optimizer == o)
                     for o in config.optimizers}
    expected = [("seed", -1)] * (config.seeds - 1) + [("trial", i) for i in range(config.trials)]
    assert all(v == expected for v in per_optimizer.values()), per_optimizer
    runs = store.runs()
    assert len(runs) == len(links) == len(config.optimizers) * (config.trials + config.seeds - 1)
    assert all(r.status == "ok" for r in runs)
    for r in runs:  # every curve complete, each step once
        assert [p.step for p in store.curve(r.id)] == list(range(r.steps + 1))
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(claims_table)).scalar() == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One worker, uninterrupted, in this process (one torch thread, like every parallel worker)."""
    out = tmp_path_factory.mktemp("reference")
    results = {}
    for protocol in ("coordinate", "random"):
        config = _settings(out / protocol, protocol=protocol)
        store, study, _ = run_arena(config)
        results[protocol] = (_outcomes(store, study), _table(store, study))
    return results


def test_two_workers_share_a_study_through_postgresql(postgres_url, tmp_path, reference):
    config = _settings(tmp_path / "here", postgres_url)
    other = subprocess.Popen(CLI + _cli_args(_settings(tmp_path / "there", postgres_url)), env=ONE_THREAD,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    engine = sa.create_engine(postgres_url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # start once the other worker is busy, so they surely overlap
        try:
            with engine.connect() as conn:
                if conn.execute(sa.select(sa.func.count()).select_from(claims_table)).scalar():
                    break
        except sa.exc.DBAPIError:
            pass
        assert other.poll() is None, other.communicate()[0]
        time.sleep(0.1)
    labels = []
    store, study, _ = run_arena(config, on_run=lambda cell, label, result: labels.append(label))
    output = other.communicate(timeout=300)[0]
    assert other.returncode == 0, output
    assert any("another worker" in label for label in labels)  # the other machine trained some runs
    assert any("another worker" not in label for label in labels)  # and this one trained others
    _assert_each_run_once(store, config)
    assert _outcomes(store, study) == reference["coordinate"][0]  # the same numbers as one worker alone
    assert _table(store, study) == reference["coordinate"][1]


@pytest.mark.parametrize("url_kind", ["sqlite", "postgres"])
def test_tpe_workers_share_one_optuna_study(url_kind, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'r.db'}" if url_kind == "sqlite" else request.getfixturevalue("postgres_url")
    store = ResultStore(url)
    base = RunConfig(workload="quadratic", scale="default", optimizer="adamw", steps=20, eval_every=10)
    results, errors = [], []

    def worker(i: int) -> None:
        try:
            results.append(tune_cell(base, store, study="s", n_trials=5, seeds=2, protocol="tpe", poll_seconds=0.05,
                                     claims=Claims(store.engine, worker=f"w{i}:{os.getpid()}:x")))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    a, b = results
    assert [h for h, _ in a.trials] == [h for h, _ in b.trials] and len(a.trials) == 5
    assert a.best_hparams == b.best_hparams
    trial_links = [t for role, t, _ in store.study_runs("s") if role == "trial"]
    assert len(trial_links) == len(set(trial_links)) == 5  # exactly the budget, each trial once
    assert len(store.runs()) == 6


def test_a_killed_worker_s_run_is_taken_over(tmp_path, reference):
    """SIGKILL the second worker in the middle of a run: the first picks the run up and the study completes."""
    config = _settings(tmp_path / "out", workers=2, lease_seconds=600)  # only the dead-pid check can help
    engine = sa.create_engine(config.storage_url())
    killed = []

    def kill_the_other_worker(done: int, total: int) -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    others = [w for (w,) in conn.execute(sa.select(claims_table.c.worker))
                              if int(w.split(":")[1]) != os.getpid()]
            except (sa.exc.DBAPIError, ValueError):
                others = []
            if others:
                time.sleep(0.3)  # let it train a few steps (and maybe checkpoint)
                os.kill(int(others[0].split(":")[1]), signal.SIGKILL)
                killed.append(others[0])
            else:
                time.sleep(0.1)

    store, study, _ = run_arena(config, on_step=kill_the_other_worker)
    assert killed
    _assert_each_run_once(store, config)
    assert _outcomes(store, study) == reference["coordinate"][0]


def test_sigkill_the_whole_arena_and_rerun(tmp_path, reference):
    """Kill `optarena arena --workers 2` (every process) at a random moment; the rerun completes it exactly."""
    config = _settings(tmp_path / "out", protocol="random", workers=2)
    seed = int.from_bytes(os.urandom(4), "little")
    delay = random.Random(seed).uniform(0.0, 4.0)
    arena = subprocess.Popen(CLI + _cli_args(config), env=ONE_THREAD, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = config.out / "results.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and arena.poll() is None:  # wait until training has begun
        try:
            with sqlite3.connect(db) as conn:
                if conn.execute("select count(*) from optarena_runs").fetchone()[0]:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(arena.pid, signal.SIGKILL)
    arena.wait()
    with sqlite3.connect(db) as conn:
        before = dict(conn.execute("select status, count(*) from optarena_runs group by status").fetchall())
    rerun = subprocess.run(CLI + _cli_args(config), env=ONE_THREAD, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, f"random seed {seed}, killed after {delay:.2f} s\n{rerun.stdout}\n{rerun.stderr}"
    store = ResultStore(config.storage_url())
    _assert_each_run_once(store, config)
    assert _outcomes(store, config.study_name()) == reference["random"][0], f"seed {seed}, statuses {before}"
    assert _table(store, config.study_name()) == reference["random"][1]
    assert not list((config.out / "checkpoints").glob("*.pt"))


# -- horizons ----------------------------------------------------------------------------------

def test_horizons_tune_each_budget_separately(tmp_path):
    config = ArenaConfig(workloads=["quadratic"], optimizers=["sgd"], trials=2, seeds=1, steps=20,
                         horizons=[0.5, 1, 2], out=tmp_path)
    assert horizon_steps(config, "quadratic", "default") == [10, 20, 40]
    assert config.study_settings()["horizons"] == [0.5, 1.0, 2.0]
    store, study, results = run_arena(config)
    assert [r.cell.steps for r in results] == [10, 20, 40]
    assert sorted(r.steps for _, _, r in store.study_runs(study)) == [10, 10, 20, 20, 40, 40]
    assert [r.cell.label for r in results] == [f"quadratic/default/sgd@{s}" for s in (10, 20, 40)]


def test_default_settings_keep_study_names_and_bad_values_are_named(tmp_path):
    settings = ArenaConfig(out=tmp_path).study_settings()
    assert "horizons" not in settings and "workers" not in settings and "lease_seconds" not in settings
    assert ArenaConfig(out=tmp_path, workers=4).study_name() == ArenaConfig(out=tmp_path).study_name()
    with pytest.raises(ValueError, match="horizons are listed twice"):
        ArenaConfig(horizons=[1, 1])
    with pytest.raises(ValueError, match=r"horizons must be finite multiples > 0"):
        ArenaConfig(horizons=[0.0, 1])
    with pytest.raises(ValueError, match="give the same number of steps twice"):
        ArenaConfig(workloads=["quadratic"], steps=3, horizons=[1, 1.1])
    with pytest.raises(ValueError, match="workers"):
        ArenaConfig(workers=0)
    from typer.testing import CliRunner

    from optarena.cli import app

    result = CliRunner().invoke(app, ["arena", "--horizons", "half,1"])
    assert result.exit_code == 2 and "--horizons must be comma-separated numbers" in " ".join(result.output.split())
