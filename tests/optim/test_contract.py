"""The torch.optim contract, checked on every registered optimizer the way real training code uses one.

Each test runs over ``list_optimizers()`` (torch's AdamW and SGD included) on the battery's
models, built with ``create_optimizer(name, model)`` and driven by the battery's training loop:
``add_param_group`` with a plain group, zero-element parameters, ``copy.deepcopy`` of the
optimizer and of a model with hooks attached, non-contiguous parameters, ``torch.compile`` of
a function calling ``step()``, and non-finite gradients.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optarena.optim import get_spec
from optarena.optim.matrix_family import MatrixOptimizer
from optarena.optim.hooks import hooks_of
from test_battery import NAMES, Problem, TinyNet, build, each_optimizer, snapshot, train_steps

pytestmark = pytest.mark.filterwarnings("ignore:SophiaG")


def tiny_problem(model: nn.Module | None = None, dtype: torch.dtype = torch.float32,
                 extra: list[torch.Tensor] = ()) -> Problem:
    """The battery's classification problem on ``model`` (a fresh :class:`TinyNet` by default).

    ``extra`` tensors enter the loss through a small quadratic, so they get gradients.
    """
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 12, (48, 4), generator=gen)
    labels = torch.randint(0, 5, (48,), generator=gen)
    if model is None:
        torch.manual_seed(4)
        model = TinyNet().to(dtype)

    def loss() -> torch.Tensor:
        value = F.cross_entropy(model(tokens).float(), labels)
        for t in extra:
            value = value + 0.1 * t.float().square().sum()
        return value

    def sampled_loss() -> torch.Tensor:
        logits = model(tokens).float()
        drawn = torch.multinomial(logits.detach().softmax(-1), 1).squeeze(-1)
        return F.cross_entropy(logits, drawn)

    return Problem(model, loss, sampled_loss)


# --- add_param_group -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", each_optimizer("add_param_group"))
def test_a_plain_param_group_can_be_added_and_is_updated(name: str) -> None:
    torch.manual_seed(5)
    extra = nn.Parameter(torch.randn(4, 4))
    problem = tiny_problem(extra=[extra])
    opt = build(name, problem.model)
    opt.add_param_group({"params": [extra]})
    before = extra.detach().clone()
    train_steps(opt, problem, 3)
    assert not torch.equal(before, extra), f"{name}: the added group was never updated"
    assert torch.isfinite(extra).all()


@pytest.mark.parametrize("name", each_optimizer("add_param_group"))
def test_a_named_param_group_can_be_added_next_to_the_built_ones(name: str) -> None:
    torch.manual_seed(5)
    extra = nn.Parameter(torch.randn(4, 4))
    problem = tiny_problem(extra=[extra])
    opt = build(name, problem.model)
    opt.add_param_group({"params": [extra], "names": ["extra"]})
    before = extra.detach().clone()
    train_steps(opt, problem, 3)
    assert not torch.equal(before, extra), f"{name}: the added group was never updated"


MATRIX_FAMILY = [n for n in NAMES if issubclass(get_spec(n).cls, MatrixOptimizer)]


@pytest.mark.parametrize("name", MATRIX_FAMILY)
def test_a_group_added_to_the_matrix_family_gets_the_rule_its_matrix_key_says(name: str) -> None:
    problem = tiny_problem()
    opt = build(name, problem.model)
    with pytest.raises(ValueError, match=r"matrix groups take tensors with ndim >= 2, got shape \(3,\)"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})
    assert len(opt.param_groups) == len(build(name, tiny_problem().model).param_groups)
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "matrix": False, "lr": 1e-3})
    assert opt.param_groups[-1]["matrix"] is False


def test_drop_muon_turns_added_auto_matrices_into_new_top_layers() -> None:
    from optarena.optim import DropMuon

    first, second = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, 4))
    opt = DropMuon([first])
    opt.add_param_group({"params": [second]})
    assert opt.num_layers == 2
    fixed = DropMuon([{"params": [first], "layer": 0}], start_probs=[1.0])
    with pytest.raises(ValueError, match="start_probs"):
        fixed.add_param_group({"params": [second], "layer": 1})
    assert len(fixed.param_groups) == 1 and fixed.num_layers == 1


# --- zero-element parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("name", each_optimizer("empty"))
def test_zero_element_parameters_stay_empty_and_do_not_stop_the_others(name: str) -> None:
    torch.manual_seed(4)
    model = TinyNet()
    model.empty_matrix = nn.Parameter(torch.empty(0, 4))
    model.empty_vector = nn.Parameter(torch.empty(0))
    problem = tiny_problem(model, extra=[model.empty_matrix, model.empty_vector])
    opt = build(name, model)
    before = snapshot(model)
    train_steps(opt, problem, 3)
    assert model.empty_matrix.shape == (0, 4) and model.empty_vector.shape == (0,)
    assert not torch.equal(before["fc1.weight"], model.fc1.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- deepcopy --------------------------------------------------------------------------------------


def _configuration(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Everything but tensors: defaults, the groups' settings and the optimizer's own attributes."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    own = {k: v for k, v in vars(opt).items()
           if k not in ("defaults", "state", "param_groups") and not k.startswith("_") and not torch.is_tensor(v)}
    # torch's __setstate__ adds differentiable=False to the defaults of every unpickled optimizer
    defaults = {k: v for k, v in opt.defaults.items() if (k, v) != ("differentiable", False)}
    return {"defaults": defaults, "groups": groups, "attributes": own}


# attributes torch.optim sets lazily in step() and does not copy (warnings already given)
_TORCH_LAZY = {"_warned_capturable_if_run_uncaptured"}


@pytest.mark.parametrize("name", each_optimizer("deepcopy"))
def test_a_deep_copy_keeps_the_configuration_and_steps_like_the_original(name: str) -> None:
    problem = tiny_problem()
    opt = build(name, problem.model)
    train_steps(opt, problem, 2)
    model_copy, opt_copy = copy.deepcopy((problem.model, opt))
    assert _configuration(opt_copy) == _configuration(opt)
    assert set(vars(opt_copy)) >= set(vars(opt)) - _TORCH_LAZY, f"{name}: attributes lost in the copy"
    twin = tiny_problem(model_copy)
    train_steps(opt, problem, 3, first_step=2)
    train_steps(opt_copy, twin, 3, first_step=2)
    for (n, a), b in zip(problem.model.named_parameters(), model_copy.parameters()):
        assert torch.equal(a, b), f"{name}: {n} differs between the optimizer and its copy"


@pytest.mark.parametrize("name", each_optimizer("deepcopy"))
def test_a_deep_copy_of_the_model_alone_keeps_a_working_forward(name: str) -> None:
    problem = tiny_problem()
    opt = build(name, problem.model)
    train_steps(opt, problem, 2)
    tokens = torch.randint(0, 12, (3, 4))
    model_copy = copy.deepcopy(problem.model)
    torch.testing.assert_close(model_copy(tokens), problem.model(tokens))
    problem.loss().backward()  # the original still trains after the copy
    opt.step()


# --- non-contiguous parameters ---------------------------------------------------------------------


def _transposed_fc1(model: TinyNet) -> TinyNet:
    """``model`` with ``fc1.weight`` stored transposed (same values, non-contiguous)."""
    weight = model.fc1.weight.detach()
    model.fc1.weight = nn.Parameter(weight.t().contiguous().t())
    assert not model.fc1.weight.is_contiguous()
    return model


def _check_twins(name: str, **extra: Any) -> None:
    runs = []
    for transposed in (False, True):
        torch.manual_seed(4)
        model = TinyNet()
        if transposed:
            _transposed_fc1(model)
        problem = tiny_problem(model)
        opt = build(name, model, **extra)
        train_steps(opt, problem, 4)
        runs.append(snapshot(model))
    for n in runs[0]:
        torch.testing.assert_close(runs[1][n], runs[0][n], rtol=1e-5, atol=1e-6, msg=f"{name}: {n}")


@pytest.mark.parametrize("name", each_optimizer("non_contiguous"))
def test_a_non_contiguous_parameter_gets_its_contiguous_twins_update(name: str) -> None:
    _check_twins(name)


def test_sophia_h_draws_rademacher_probes_in_the_logical_order_too() -> None:
    _check_twins("sophia_h", distribution="rademacher")


# --- torch.compile ---------------------------------------------------------------------------------


def _compile_run(name: str, compiled: bool, steps: int = 4) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Parameters after ``steps`` (float64), and the compiled graphs counted after each step."""
    torch.manual_seed(4)
    problem = tiny_problem(TinyNet(width=8).double())
    opt = build(name, problem.model)

    def step() -> None:
        opt.step()

    run = torch.compile(step) if compiled else step
    graphs = []
    for t in range(steps):
        torch.manual_seed(1000 + t)
        hooks_of(opt).prepare_step()
        problem.loss().backward()
        run()
        if hooks_of(opt).hessian_step_due():
            opt.zero_grad(set_to_none=True)
            hooks_of(opt).update_hessian(problem.loss, problem.sampled_loss)
        opt.zero_grad(set_to_none=True)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return snapshot(problem.model), graphs


# Compiled steps that still recompile at every step: their step sizes are Python floats that
# change with the step count (bias corrections, schedule weights) and Dynamo specialises on
# them; Drop-Muon's active layers change with its draw. The others recompile once or twice
# (state created at the first step, the step count turning dynamic) and then run one graph.
RECOMPILE_EVERY_STEP = {
    "adan": "bias-corrected step sizes are Python floats",
    "schedule_free_adamw": "the averaging weight and bias correction are Python floats",
    "drop_muon": "each draw of the start layer updates a different set of layers",
    "namo_d": "its column clamp reads the mean scale back as a Python float",
}


@pytest.mark.parametrize("name", each_optimizer("compile"))
def test_compiled_step_equals_eager(name: str) -> None:
    """``torch.compile`` of a function calling ``step()`` gives eager's parameters (float64, 4 steps)."""
    eager, _ = _compile_run(name, compiled=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compiled, graphs = _compile_run(name, compiled=True)
    finally:
        torch._dynamo.reset()
    for n in eager:  # relative to the tensor's norm: torch's compiled AdamW keeps its step count in float32
        error = float((compiled[n] - eager[n]).norm() / eager[n].norm())
        assert error <= 1e-6, f"{name}: {n} differs from eager by {error:.3g} (relative)"
    if name not in RECOMPILE_EVERY_STEP:
        assert graphs[-1] == graphs[-2], f"{name}: compiled graphs per step {graphs}; the last step recompiled"


# --- non-finite gradients --------------------------------------------------------------------------


def _fused_variants() -> list[Any]:
    out = []
    for p in each_optimizer("non_finite"):
        name = p.values[0]
        out.append(pytest.param(name, False, marks=p.marks, id=name))
        if "fused" in inspect.signature(get_spec(name).cls.__init__).parameters:
            out.append(pytest.param(name, True, marks=p.marks, id=f"{name}-fused"))
    return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("first", [0, 2], ids=["first-step", "later-step"])
@pytest.mark.parametrize("where", ["fc2.weight", "embed.weight", "fc2.bias"])
@pytest.mark.parametrize(("name", "fused"), _fused_variants())
def test_a_non_finite_gradient_is_never_hidden(name: str, fused: bool, where: str, first: int, value: float,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """After a step with one NaN (or inf) gradient element: a non-finite parameter, or an error naming it.

    Never finite parameters over non-finite state (the NaN would stay invisible to the loss).
    The step runs as the trainer runs it, Hessian refresh included.
    """
    import optarena.optim.kernels.compiled as fused_module

    monkeypatch.setattr(fused_module, "FUSED_MIN_NUMEL", 0)
    problem = tiny_problem()
    torch_class = get_spec(name).cls.__module__.startswith("torch.")
    extra = {"fused": True, **({"foreach": False} if torch_class else {})} if fused else {}
    opt = build(name, problem.model, **extra)
    train_steps(opt, problem, first)
    params = dict(problem.model.named_parameters())
    poisoned = params[where]
    raised = None
    for t in range(first, first + 3):
        torch.manual_seed(1000 + t)
        hooks_of(opt).prepare_step()
        problem.loss().backward()
        if poisoned.grad is None:  # Drop-Muon froze the layer this step
            continue
        poisoned.grad.view(-1)[0] = value
        try:
            opt.step()
            if hooks_of(opt).hessian_step_due():
                opt.zero_grad(set_to_none=True)
                hooks_of(opt).update_hessian(problem.loss, problem.sampled_loss)
        except ValueError as error:
            raised = error
        break
    else:
        pytest.fail("the poisoned parameter never had a gradient")
    if raised is not None:
        assert "non-finite" in str(raised) and "gradient" in str(raised), str(raised)
        return
    parameters_finite = all(torch.isfinite(p).all() for p in problem.model.parameters())
    state_finite = all(torch.isfinite(v).all() for s in opt.state.values() for v in s.values()
                       if torch.is_tensor(v) and v.is_floating_point())
    assert not parameters_finite or state_finite, f"{name}: finite parameters over non-finite state"
    assert not parameters_finite, f"{name}: the {value} gradient of {where} reached no parameter"
