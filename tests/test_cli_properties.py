"""Property: whatever its arguments, every command either succeeds or ends with a short message and a
non-zero exit code, never a traceback.

Arguments mix valid values, near misses and garbage for every option. Training is replaced by
:class:`Reached` (a draw valid enough to train stops there), so a draw costs what the command's
checks cost; ``report`` and ``predict`` read a small real arena.
"""

import importlib
import json
import os
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from optarena.cli import app

runner = CliRunner()
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Reached(Exception):
    """The command passed its checks and got to the work itself."""


def _reached(*args, **kwargs):
    raise Reached


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """An arena's results, a damaged database, an empty folder, a file and a path that does not exist."""
    root = tmp_path_factory.mktemp("folders")
    arena = root / "arena"
    result = runner.invoke(app, ["arena", "--workloads", "quadratic", "--optimizers", "adamw,muon", "--trials", "2",
                                 "--seeds", "1", "--steps", "4", "--schedule", "constant", "--out", str(arena)])
    assert result.exit_code == 0, result.output
    (root / "damaged").mkdir()
    (root / "damaged" / "results.db").write_bytes(os.urandom(4096))
    (root / "empty").mkdir()
    (root / "file").write_text("not a folder")
    return {"arena": arena, "damaged": root / "damaged", "empty": root / "empty", "file": root / "file",
            "missing": root / "missing" / "deeper"}


def _garbage(*valid: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(valid), st.text(max_size=12))


def _ints(*valid: str) -> st.SearchStrategy[str]:
    extremes = ("-1", "0", "99999999999999999999", str(2**31), "1.5", "abc", "")
    return st.one_of(st.sampled_from(valid), st.sampled_from(extremes), st.integers(-10, 10).map(str))


def _numbers(*valid: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(valid), st.sampled_from(("nan", "inf", "-inf", "-1", "0", "1e400", "x")),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr))


SCHEDULES = ("cosine", "constant", "wsd", "wsd:decay_fraction=0.2", "wsd:decay_fraction=abc",
             "wsd:decay_fraction=2", "wsd:decay_fraction=-1", "wsd:decay_fraction=nan", "wsd:bogus=1",
             "wsd:decay_fraction=0.1,decay_fraction=0.2", "wsd_s:budgets=2/9999", "nosuch", "cosine:", ":", "wsd:=1")
STORAGE = ("notaurl", "postgresql+nosuchdriver://u@h/db", "mysql://u@h/db", "sqlite://", "sqlite:///{tmp}/s.db",
           "sqlite:///{arena}/results.db", "sqlite:///{damaged}/results.db", "sqlite:///{file}")


def _options(draw, spec: dict[str, st.SearchStrategy[str]]) -> list[str]:
    args = []
    for flag, values in spec.items():
        value = draw(st.none() | values)
        if value is not None:
            args += [flag, value]
    return args


def _path(folders: dict[str, Path], *names: str) -> st.SearchStrategy[str]:
    return st.sampled_from(names).map(lambda n: str(folders[n]) if n in folders else n)


def _check(args: list[str], tmp: Path, folders: dict[str, Path]) -> None:
    args = [a.format(tmp=tmp, **folders) if a.startswith("sqlite:///{") else a for a in args]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        patch.setattr("optarena.arena.runner.run_arena", _reached)
        patch.setattr("optarena.arena.trainer.train", _reached)
        patch.setattr(importlib.import_module("optarena.scaling.coord_check"), "coord_check", _reached)
        result = runner.invoke(app, args)
    if isinstance(result.exception, Reached):
        return
    shown = "".join(traceback.format_exception(result.exception)) if result.exception else ""
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{args}\n{shown}"
    assert "Traceback" not in result.output, args
    if result.exit_code != 0:
        assert result.exit_code in (1, 2) and result.output.strip(), (args, result.output)
        assert len(result.output.strip().splitlines()) <= 12, (args, result.output)  # a message, not a dump


@st.composite
def arena_args(draw, folders):
    return ["arena", *_options(draw, {
        "--workloads": _garbage("quadratic", "logreg", "quadratic,logreg", "quadratc", "quadratic,quadratic", ","),
        "--scales": _garbage("default", "isotropic", "huge", "default,isotropic"),
        "--optimizers": _garbage("adamw", "sgd,lion", "muon", "adamww", "adamw,adamw", "mkor,namo"),
        "--budget": _garbage("smoke", "default", "full", "huge"),
        "--trials": _ints("1", "2"),
        "--seeds": _ints("1", "2"),
        "--steps": _ints("1", "3"),
        "--protocol": _garbage("random", "coordinate", "tpe", "grid"),
        "--horizons": _garbage("1", "0.5,1", "0", "nan", "inf", "1,1", "-1", "0.01,0.02"),
        "--workers": _ints("1", "2", "100000"),
        "--parametrization": _garbage("standard", "mup", "mu"),
        "--schedule": _garbage(*SCHEDULES),
        "--seed": _ints("0", "7", str(2**31 - 1)),
        "--out": st.one_of(_path(folders, "empty", "file", "damaged", "missing", "out"), st.text(max_size=8)),
        "--storage": _garbage(*STORAGE),
    })]


@st.composite
def run_args(draw, folders):
    return ["run", *_options(draw, {
        "--optimizer": _garbage("adamw", "sgd", "muon", "adamww"),
        "--workload": _garbage("quadratic", "logreg", "quadratc"),
        "--scale": _garbage("default", "isotropic", "huge"),
        "--hparams": st.one_of(st.sampled_from(('{"lr": 0.01}', "{}", "[]", "{lr", '{"momentum": 1}', '"x"')),
                               st.dictionaries(st.sampled_from(["lr", "weight_decay", "zzz"]),
                                               st.floats(allow_nan=True) | st.text(max_size=3)).map(json.dumps)),
        "--steps": _ints("1", "2"),
        "--schedule": _garbage(*SCHEDULES),
        "--seed": _ints("0", "3"),
        "--out": _path(folders, "empty", "file", "damaged", "missing", "out"),
        "--storage": _garbage(*STORAGE),
    })]


@st.composite
def report_args(draw, folders):
    return ["report", *_options(draw, {
        "--out": _path(folders, "arena", "arena", "empty", "file", "damaged", "missing"),
        "--storage": _garbage(*STORAGE),
        "--study": _garbage("nosuch"),
    })]


@st.composite
def predict_args(draw, folders):
    return ["predict", *_options(draw, {
        "--fit": _garbage("1", "1,2", "2", "abc", "999", "-1", "1,1"),
        "--schedule": _garbage(*SCHEDULES),
        "--observed": _garbage("2", "x", "999"),
        "--loss": _garbage("eval", "train"),
        "--decay-factor": _garbage("0.999", "0.9,0.99", "abc", "2", "-1", "nan", "0"),
        "--fit-from": _ints("0", "1"),
        "--out": _path(folders, "arena", "arena", "empty", "file", "damaged", "missing"),
        "--storage": _garbage(*STORAGE),
        "--plot": _path(folders, "p.png", "empty", "missing", "file"),
    })]


@st.composite
def coord_check_args(draw, folders):
    return ["coord-check", *_options(draw, {
        "--widths": _garbage("16,32", "32,64", "16", "15,32", "0,16", "a,b", "-16,16", "16,99999999"),
        "--steps": _ints("1", "2"),
        "--optimizer": _garbage("adamw", "muon", "adamww"),
        "--lr": _numbers("0.01", "1e-3"),
        "--parametrization": _garbage("mup", "standard", "both"),
        "--base-width": _ints("16", "32", "15"),
        "--n-layer": _ints("1", "2"),
        "--include": _garbage("attn", "([", ".*", "*"),
        "--seed": _ints("0"),
        "--out": _path(folders, "c.png", "empty", "missing", "file"),
        "--csv": _path(folders, "c.csv", "empty", "missing", "file"),
    })]


@st.composite
def suggest_args(draw, folders):
    return ["suggest", *_options(draw, {
        "--params": _garbage("125M", "1.2e9", "0", "-1", "abc", "nan", "1e400"),
        "--tokens": _garbage("25B", "2.5e10", "0", "inf", "x"),
        "--seq-len": _ints("2048", "1"),
        "--batch-size": _numbers("256"),
        "--base-width": _ints("256"),
        "--width": _ints("1024"),
        "--base-lr": _numbers("0.01"),
        "--base-weight-decay": _numbers("0.1"),
        "--wd-exponent": _numbers("0.5", "1"),
        "--fit": _path(folders, "fits.csv", "empty", "missing", "file"),
    })]


@st.composite
def list_args(draw, folders):
    return ["list", draw(_garbage("optimizers", "schedules", "workloads"))]


@pytest.mark.parametrize("command", [arena_args, run_args, report_args, predict_args, coord_check_args,
                                     suggest_args, list_args],
                         ids=["arena", "run", "report", "predict", "coord-check", "suggest", "list"])
def test_any_arguments_give_success_or_a_short_message(command, folders, tmp_path):
    @SETTINGS
    @given(args=command(folders))
    def check(args):
        _check(args, tmp_path, folders)

    check()
