"""Shared hyperparameter validation: the checks themselves, and every registered optimizer refusing bad values."""

import inspect
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from optarena.optim import create_optimizer, get_spec, list_optimizers
from optarena.optim.matrix_family import MatrixOptimizer
from optarena.optim.registry import constructor_arguments, registered_name
from optarena.validation import (
    check_betas, check_choice, check_hparams, check_int, check_number, describe_range,
)

OPTIM_DIR = Path(__file__).resolve().parents[1] / "src" / "optarena" / "optim"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)


# ---- the checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, True, "0.1", None, [0.1]])
def test_check_number_refuses_non_finite_out_of_range_and_non_numbers(value):
    with pytest.raises(ValueError, match=re.escape(f"X lr must be a finite number >= 0, got lr={value!r}")):
        check_number("X", "lr", value, 0.0)


def test_ranges_are_described_as_the_message_states_them():
    assert describe_range(0.0) == ">= 0"
    assert describe_range(0.0, low_open=True) == "> 0"
    assert describe_range(0.0, 1.0, high_open=True) == "in [0, 1)"
    assert describe_range(0.0, 1.0, low_open=True) == "in (0, 1]"
    check_number("X", "a", 1, 0.0, 1.0)  # ints are numbers; closed ends are inclusive
    with pytest.raises(ValueError, match=r"a must be a finite number in \(0, 1\], got a=0"):
        check_number("X", "a", 0, 0.0, 1.0, low_open=True)


def test_int_choice_and_betas_checks():
    check_int("X", "k", 3, 1, 5)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=re.escape(f"X k must be an int in [1, 5], got k={bad!r}")):
            check_int("X", "k", bad, 1, 5)
    with pytest.raises(ValueError, match=r"must be one of \('a', 'b'\), got mode='c'"):
        check_choice("X", "mode", "c", ("a", "b"))
    check_betas("X", "betas", (0.9, 0.0))
    for bad in ((0.9, 1.0), (0.9, math.nan), (0.9,), 0.9, (0.9, True)):
        with pytest.raises(ValueError, match="X betas must be a pair of finite numbers in \\[0, 1\\)"):
            check_betas("X", "betas", bad)
    with pytest.raises(ValueError, match="3 numbers"):
        check_betas("X", "betas", (0.9, 0.9), count=3)


def test_check_hparams_knows_the_conventional_names_only():
    check_hparams("X", lr=0.1, betas=(0.9, 0.99), eps=0.0, weight_decay=0.0, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="X momentum must be a finite number in \\[0, 1\\), got momentum=1.0"):
        check_hparams("X", momentum=1.0)
    with pytest.raises(TypeError, match="no convention for 'rho'"):
        check_hparams("X", rho=0.1)


# ---- every registered optimizer ----------------------------------------------------------------

def _argument_default(cls, key):
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is not None:
            parameter = inspect.signature(init).parameters.get(key)
            if parameter is not None and parameter.default is not inspect.Parameter.empty:
                return parameter.default
    return None


def _bad_values():
    """(optimizer, hyperparameter, bad value) for every optimizer and each conventional argument it takes."""
    cases = []
    for name in list_optimizers():
        spec = get_spec(name)
        arguments = set(spec.defaults) | constructor_arguments(spec.cls)
        for value in (math.nan, math.inf, -1.0):
            cases.append((name, "lr", value))
        for key in ("betas", "adamw_betas"):
            if key in arguments:
                default = spec.defaults.get(key, _argument_default(spec.cls, key))
                for bad in (1.0, math.nan):
                    cases.append((name, key, (*default[:-1], bad)))
        for key in ("eps", "adamw_eps"):
            if key in arguments:
                cases.append((name, key, math.nan))
        if "weight_decay" in arguments:
            cases.append((name, "weight_decay", math.inf))
        if "momentum" in arguments:
            cases.append((name, "momentum", math.nan))
    return [pytest.param(*case, id=f"{case[0]}-{case[1]}={case[2]}") for case in cases]


@pytest.mark.parametrize(("name", "key", "value"), _bad_values())
def test_every_optimizer_refuses_bad_conventional_hyperparameters(name, key, value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=rf"\b{key} must be .*got {key}="):
            create_optimizer(name, Net(), **{key: value})


@pytest.mark.parametrize("name", list_optimizers())
def test_bad_lr_in_a_param_group_of_a_matrix_optimizer_is_refused(name):
    cls = get_spec(name).cls
    if not issubclass(cls, MatrixOptimizer):
        pytest.skip("element-wise optimizers check their constructor arguments")
    weight = torch.zeros(4, 4, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="lr must be a finite number >= 0, got lr=inf"):
            cls([{"params": [weight], "lr": math.inf}])


# ---- one name per optimizer -------------------------------------------------------------------

def test_each_class_is_registered_under_one_name():
    classes = [get_spec(name).cls for name in list_optimizers()]
    assert len(set(classes)) == len(classes)
    assert all(registered_name(get_spec(name).cls) == name for name in list_optimizers())


def test_optimizer_names_quoted_in_the_source_are_registered():
    """Any ``create_optimizer('x')`` / ``get_spec('x')`` in optim/'s code, messages or docstrings names a real optimizer."""
    quoted = re.compile(r"""(?:create_optimizer|get_spec)\(\s*["']([^"']+)["']""")
    found = {}
    for path in OPTIM_DIR.glob("*.py"):
        for match in quoted.finditer(path.read_text()):
            found.setdefault(match.group(1), path.name)
    assert found, "the pattern should find the usage examples"
    unknown = {name: where for name, where in found.items() if name not in list_optimizers()}
    assert not unknown, f"names that are not registered: {unknown}"


@pytest.mark.parametrize("name", list_optimizers())
def test_hints_in_errors_name_the_registered_optimizer(name):
    cls = get_spec(name).cls
    if not issubclass(cls, MatrixOptimizer) or cls.vector_ok:
        pytest.skip("only the matrix family refuses vectors with a hint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=re.escape(f"create_optimizer({name!r}, model)")):
            cls([torch.zeros(3, requires_grad=True)])


def test_mkor_without_a_model_names_its_registered_name():
    with pytest.warns(UserWarning, match=re.escape("create_optimizer('mkor_h', model)")):
        get_spec("mkor_h").cls([torch.zeros(3, 3, requires_grad=True)])


def test_constructor_arguments_follow_kwargs_to_the_base():
    """Arguments a subclass passes on with ``**kwargs`` are valid for create_optimizer too."""
    assert {"foreach", "adamw_betas", "adamw_eps", "momentum", "scale"} <= constructor_arguments(get_spec("muon_spectral").cls)
    assert "defaults" not in constructor_arguments(get_spec("auon").cls)
    optimizer = create_optimizer("muon_spectral", Net(), foreach=False)
    assert all(group["foreach"] is False for group in optimizer.param_groups)
