"""One test battery for every registered optimizer (in the spirit of torch's OptimizerInfo).

Every name in ``list_optimizers()`` runs every check below just by being registered. An
optimizer is built the way the arena builds it, ``create_optimizer(name, model)``, on tiny
models, and driven the way the arena's trainer drives it: ``train()``/``eval()`` around
evaluation, ``prepare_step()`` before the forward pass, and ``update_hessian()`` after
``step()`` when ``hessian_step_due()``. Per-optimizer needs live in ``CASES``: settings for
the tests (e.g. a learning rate that shows progress in 40 steps), extra invalid
hyperparameters, and strict xfails for known failures. An optimizer not in the table gets
the registry defaults, the generic ``lr=-1`` check and the default loss-drop thresholds.

The loss-drop thresholds are measured drops with a margin (the measured values are in
``CASES`` comments where they differ from the defaults).
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optarena.optim import create_optimizer, get_spec, list_optimizers
from optarena.optim.registry import FloatRange
from optarena.optim.hooks import hooks_of

# SophiaG warns that these problems give it no sampled labels / batch size; that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:SophiaG")


@dataclass(frozen=True)
class Case:
    settings: dict[str, Any] = field(default_factory=dict)  # hparam overrides used by every test
    bad: dict[str, Any] = field(default_factory=dict)  # invalid constructor values, besides lr in (-1, nan, inf)
    convex_drop: float = 0.05  # required relative drop of the convex loss in CONVEX_STEPS
    mlp_drop: float = 0.2  # required relative drop of the MLP loss in MLP_STEPS
    xfail: dict[str, str] = field(default_factory=dict)  # test name -> reason (strict)
    elementwise_state: bool | None = None  # state proportional to each parameter (None: family == elementwise)
    frozen_at_zero_lr: bool = True  # False where parameters legitimately move at lr=0


# Drops are measured values (convex / MLP, 40 steps each) with a margin; see each comment.
CASES: dict[str, Case] = {
    # torch.optim baselines
    "adamw": Case(settings=dict(lr=1e-2), bad=dict(betas=(0.9, 1.5), eps=-1.0, weight_decay=-0.1),
                  convex_drop=0.4, mlp_drop=0.9),  # 0.57 / 0.99
    "sgd": Case(settings=dict(lr=0.05), bad=dict(momentum=-0.5, weight_decay=-0.1),
                convex_drop=0.9, mlp_drop=0.9),  # 0.997 / 0.989
    # this family
    "lion": Case(settings=dict(lr=3e-3),
                 bad=dict(betas=(0.9, 1.2), weight_decay=-1.0, kappa="cube", kappa_eps=0.0),
                 convex_drop=0.15, mlp_drop=0.5),  # 0.22 / 0.76
    "adan": Case(settings=dict(lr=1e-2),
                 bad=dict(betas=(0.98, 0.92, 1.5), eps=-1.0, weight_decay=-0.5, max_grad_norm=-2.0),
                 convex_drop=0.4, mlp_drop=0.9),  # 0.58 / 0.988
    "adamp": Case(settings=dict(lr=1e-2), bad=dict(betas=(0.9, 1.5), delta=-0.1, wd_ratio=2.0, eps=0.0),
                  convex_drop=0.4, mlp_drop=0.9),  # 0.56 / 0.99
    "sgdp": Case(settings=dict(lr=0.05), bad=dict(momentum=1.5, dampening=-0.5, delta=0.0, wd_ratio=-1.0),
                 convex_drop=0.9, mlp_drop=0.9),  # 0.997 / 0.989
    "sophia_g": Case(settings=dict(lr=3e-3, hessian_interval=3),
                     bad=dict(rho=-0.04, betas=(0.965, 1.2), hessian_interval=0, eps=-1.0, batch_size=0),
                     convex_drop=0.15, mlp_drop=0.5, elementwise_state=True),  # 0.22 / 0.69
    "sophia_h": Case(settings=dict(lr=3e-3, hessian_interval=3),
                     bad=dict(rho=0.0, distribution="uniform", hessian_clip=-1.0, hessian_interval=2.5),
                     convex_drop=0.15, mlp_drop=0.5, elementwise_state=True),  # 0.22 / 0.69
    "am_sgd": Case(settings=dict(lr=0.05), bad=dict(model_lambda=-0.1, beta_max=1.0, weight_decay=-1.0),
                   convex_drop=0.8, mlp_drop=0.3),  # 0.92 / 0.44
    "am_adamw": Case(settings=dict(lr=1e-2), bad=dict(betas=(0.89, 1.0), model_lambda=-1.0, eps=0.0),
                     convex_drop=0.4, mlp_drop=0.9),  # 0.565 / 0.99
    "classp": Case(settings=dict(lr=3e-2), bad=dict(power=0.0, threshold=-0.5, eps=-1e-5),
                   convex_drop=0.15, mlp_drop=0.6),  # 0.23 / 0.85
    "scale": Case(settings=dict(lr=1e-2, adamw_lr=1e-2), bad=dict(momentum=1.0, weight_decay=-1.0),
                  convex_drop=0.45, mlp_drop=0.9),  # 0.65 / 0.99
    "schedule_free_adamw": Case(settings=dict(lr=1e-2, warmup_steps=5),
                                bad=dict(betas=(0.9, 1.0), warmup_steps=-5, weight_lr_power=-2.0),
                                convex_drop=0.22, mlp_drop=0.8,  # 0.325 / 0.96
                                frozen_at_zero_lr=False),  # y keeps averaging towards z at lr=0, by design
    # other families get the defaults; a known failure of theirs is listed here as
    # Case(xfail={"<test>": "<reason>"}), strict, so that a fix shows up as XPASS
}

NAMES = list_optimizers()
CONVEX_STEPS = 40
MLP_STEPS = 40


def case_of(name: str) -> Case:
    return CASES.get(name, Case())


def params_for(name: str, test: str) -> Any:
    """A pytest param for (name), marked xfail(strict) where the table says so."""
    reason = case_of(name).xfail.get(test)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, marks=marks, id=name)


def each_optimizer(test: str) -> list[Any]:
    return [params_for(n, test) for n in NAMES]


# --- problems --------------------------------------------------------------------------------------


class Convex(nn.Module):
    """Least squares with one affine map: convex in (weight, bias); ``proj`` is a hidden matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 4)


class TinyNet(nn.Module):
    """Embedding -> two hidden Linear layers -> LayerNorm -> readout ``head`` (classification)."""

    def __init__(self, vocab: int = 12, seq: int = 4, width: int = 16, classes: int = 5, unused: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.fc1 = nn.Linear(8 * seq, width)
        self.fc2 = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)
        if unused:
            self.unused = nn.Linear(width, width)  # never called: its parameters get no gradient

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).flatten(1)
        h = torch.tanh(self.fc1(h))
        h = self.norm(torch.tanh(self.fc2(h)))
        return self.head(h)


@dataclass
class Problem:
    model: nn.Module
    loss: Callable[[], torch.Tensor]
    sampled_loss: Callable[[], torch.Tensor] | None


def convex_problem(dtype: torch.dtype = torch.float32) -> Problem:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=gen, dtype=dtype)
    y = x @ torch.randn(6, 4, generator=gen, dtype=dtype) + 0.1 * torch.randn(64, 4, generator=gen, dtype=dtype)
    torch.manual_seed(2)
    model = Convex().to(dtype)
    return Problem(model, lambda: F.mse_loss(model.proj(x), y), None)


def mlp_problem(dtype: torch.dtype = torch.float32, unused: bool = False) -> Problem:
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 12, (48, 4), generator=gen)
    labels = torch.randint(0, 5, (48,), generator=gen)
    torch.manual_seed(4)
    model = TinyNet(unused=unused).to(dtype)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(tokens).float(), labels)

    def sampled_loss() -> torch.Tensor:  # labels drawn from the model's own predictive distribution
        logits = model(tokens).float()
        drawn = torch.multinomial(logits.detach().softmax(-1), 1).squeeze(-1)
        return F.cross_entropy(logits, drawn)

    return Problem(model, loss, sampled_loss)


# --- the loop the trainer runs ---------------------------------------------------------------------


def build(name: str, model: nn.Module, **extra: Any) -> torch.optim.Optimizer:
    return create_optimizer(name, model, **{**case_of(name).settings, **extra})


def train_steps(opt: Any, problem: Problem, steps: int, first_step: int = 0,
                scheduler: Any = None) -> list[float]:
    """The arena trainer's order of calls; the RNG is reseeded per step so runs can be replayed."""
    losses = []
    hooks = hooks_of(opt)
    hooks.train()
    for t in range(first_step, first_step + steps):
        torch.manual_seed(1000 + t)
        hooks.prepare_step()
        loss = problem.loss()
        loss.backward()
        losses.append(loss.item())
        opt.step()
        if hooks.hessian_step_due():
            opt.zero_grad(set_to_none=True)
            hooks.update_hessian(problem.loss, problem.sampled_loss)
        opt.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
    return losses


def evaluate(opt: Any, problem: Problem) -> float:
    hooks_of(opt).eval()
    with torch.no_grad():
        value = problem.loss().item()
    hooks_of(opt).train()
    return value


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- metadata --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", each_optimizer("metadata"))
def test_registry_metadata_is_complete(name: str) -> None:
    spec = get_spec(name)
    assert spec.paper.title and spec.description
    assert spec.state_bytes >= 0
    lr_range = spec.search_space["lr"]
    assert isinstance(lr_range, FloatRange) and lr_range.log
    assert 10 <= lr_range.high / lr_range.low <= 1000, "lr should be tuned over about two decades"
    assert len(spec.search_space) <= 3, "tune lr plus at most two other keys"
    assert spec.defaults.get("lr", spec.search_space["lr"].low) > 0


# --- goes downhill ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", each_optimizer("convex"))
def test_goes_downhill_on_a_convex_problem(name: str) -> None:
    problem = convex_problem()
    opt = build(name, problem.model)
    start = evaluate(opt, problem)
    train_steps(opt, problem, CONVEX_STEPS)
    end = evaluate(opt, problem)
    assert math.isfinite(end)
    assert end <= (1 - case_of(name).convex_drop) * start, f"{name}: {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize("name", each_optimizer("mlp"))
def test_goes_downhill_on_a_small_network(name: str) -> None:
    problem = mlp_problem()
    opt = build(name, problem.model)
    start = evaluate(opt, problem)
    train_steps(opt, problem, MLP_STEPS)
    end = evaluate(opt, problem)
    assert math.isfinite(end)
    assert end <= (1 - case_of(name).mlp_drop) * start, f"{name}: {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize("name", each_optimizer("closure"))
def test_step_accepts_a_closure(name: str) -> None:
    problem = mlp_problem()
    opt = build(name, problem.model)
    hooks_of(opt).train()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        hooks_of(opt).prepare_step()
        loss = problem.loss()
        loss.backward()
        return loss

    before = snapshot(problem.model)
    returned = opt.step(closure)
    assert returned is not None and math.isfinite(float(returned.detach()))
    assert any(not torch.equal(before[n], p) for n, p in problem.model.named_parameters())


# --- checkpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", each_optimizer("state_dict"))
def test_state_dict_round_trip_continues_the_exact_trajectory(name: str) -> None:
    problem = mlp_problem()
    opt = build(name, problem.model)
    train_steps(opt, problem, 5)
    saved_opt = copy.deepcopy(opt.state_dict())
    saved_model = copy.deepcopy(problem.model.state_dict())
    train_steps(opt, problem, 7, first_step=5)

    fresh = mlp_problem()
    fresh.model.load_state_dict(saved_model)
    opt2 = build(name, fresh.model)
    opt2.load_state_dict(saved_opt)
    train_steps(opt2, fresh, 7, first_step=5)
    for (n, a), b in zip(problem.model.named_parameters(), fresh.model.parameters()):
        assert torch.equal(a, b), f"{name}: {n} differs after resuming"


# --- param groups and schedulers -------------------------------------------------------------------


@pytest.mark.parametrize("name", each_optimizer("param_groups"))
def test_param_groups_use_their_own_learning_rates(name: str) -> None:
    problem = mlp_problem()
    opt = build(name, problem.model)
    if len(opt.param_groups) < 2:
        pytest.skip("one parameter group only")
    opt.param_groups[0]["lr"] = 0.0
    for group in opt.param_groups[1:]:
        group["lr"] = 2 * group["lr"]
    frozen = {id(p) for p in opt.param_groups[0]["params"]}
    before = snapshot(problem.model)
    train_steps(opt, problem, 4)
    for n, p in problem.model.named_parameters():
        if id(p) in frozen:
            assert torch.equal(before[n], p), f"{name}: {n} moved with lr=0"
    moved = [n for n, p in problem.model.named_parameters() if id(p) not in frozen and not torch.equal(before[n], p)]
    assert moved, f"{name}: no parameter of the other groups moved"


@pytest.mark.parametrize("name", each_optimizer("scheduler"))
def test_works_under_lr_schedulers(name: str) -> None:
    problem = mlp_problem()
    opt = build(name, problem.model)
    base = [g["lr"] for g in opt.param_groups]
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    losses = train_steps(opt, problem, 5, scheduler=scheduler)
    assert all(math.isfinite(v) for v in losses)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([b * 0.25 for b in base])

    # a schedule at zero must freeze everything: the optimizer reads the group's lr every step
    if not case_of(name).frozen_at_zero_lr:
        return
    problem = mlp_problem()
    opt = build(name, problem.model)
    train_steps(opt, problem, 2)
    before = snapshot(problem.model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0)
    train_steps(opt, problem, 3, first_step=2, scheduler=scheduler)
    for n, p in problem.model.named_parameters():
        assert torch.equal(before[n], p), f"{name}: {n} moved at lr=0"


# --- dtypes and missing gradients ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", each_optimizer("dtype"))
def test_parameters_keep_their_dtype(name: str, dtype: torch.dtype) -> None:
    problem = mlp_problem(dtype)
    opt = build(name, problem.model)
    before = snapshot(problem.model)
    losses = train_steps(opt, problem, 4)
    assert all(math.isfinite(v) for v in losses)
    for n, p in problem.model.named_parameters():
        assert p.dtype == dtype, f"{name}: {n} became {p.dtype}"
        assert torch.isfinite(p).all()
    assert any(not torch.equal(before[n], p) for n, p in problem.model.named_parameters())


@pytest.mark.parametrize("name", each_optimizer("no_grad"))
def test_parameters_without_gradients_are_untouched(name: str) -> None:
    problem = mlp_problem(unused=True)
    opt = build(name, problem.model)
    before = snapshot(problem.model)
    train_steps(opt, problem, 4)
    evaluate(opt, problem)
    for n, p in problem.model.named_parameters():
        if n.startswith("unused."):
            assert torch.equal(before[n], p), f"{name}: {n} has no gradient but moved"
    assert not torch.equal(before["fc1.weight"], problem.model.fc1.weight)


# --- validation ------------------------------------------------------------------------------------


def _invalid_cases() -> list[Any]:
    out = []
    for name in NAMES:
        reason = case_of(name).xfail.get("invalid")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        for value in (-1.0, math.nan, math.inf):
            out.append(pytest.param(name, "lr", value, marks=marks, id=f"{name}-lr={value}"))
        for key, value in case_of(name).bad.items():
            out.append(pytest.param(name, key, value, marks=marks, id=f"{name}-{key}"))
    return out


@pytest.mark.parametrize(("name", "key", "value"), _invalid_cases())
def test_invalid_hyperparameters_raise_value_error_naming_the_value(name: str, key: str, value: Any) -> None:
    model = TinyNet()
    spec = get_spec(name)
    with pytest.raises(ValueError) as info:
        if key in spec.defaults or key in spec.builder_defaults:
            create_optimizer(name, model, **{key: value})
        else:  # a constructor argument the registry does not expose
            spec.cls(list(model.parameters()), **{key: value})
    message = str(info.value)
    named = [repr(value), str(value)] + ([str(value[-1])] if isinstance(value, tuple) else [])
    assert any(text in message for text in named), f"{name}: the message does not name {key}={value!r}: {message}"



# --- foreach equals the per-tensor loop ------------------------------------------------------------


def _has_foreach(name: str) -> bool:
    return "foreach" in inspect.signature(get_spec(name).cls.__init__).parameters


@pytest.mark.parametrize("name", [p for p in each_optimizer("foreach") if _has_foreach(p.values[0])])
def test_foreach_matches_the_per_tensor_loop(name: str) -> None:
    runs = []
    for foreach in (True, False):
        problem = mlp_problem()
        opt = build(name, problem.model)
        for group in opt.param_groups:
            group["foreach"] = foreach
        train_steps(opt, problem, 6)
        runs.append(snapshot(problem.model))
    for n in runs[0]:
        torch.testing.assert_close(runs[0][n], runs[1][n], rtol=1e-5, atol=1e-6, msg=f"{name}: {n}")


# --- fused equals foreach --------------------------------------------------------------------------


def _has_fused(name: str) -> bool:
    return "fused" in inspect.signature(get_spec(name).cls.__init__).parameters


@pytest.mark.parametrize("name", [p for p in each_optimizer("fused") if _has_fused(p.values[0])])
def test_fused_matches_foreach(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fused=True`` (one compiled kernel per tensor) follows the foreach trajectory to rounding.

    The size threshold is lowered so that every tensor of the tiny model takes the kernel;
    the learning rate changes every step, as under a schedule.
    """
    import optarena.optim.kernels.compiled as fused_module

    monkeypatch.setattr(fused_module, "FUSED_MIN_NUMEL", 0)
    runs = []
    for fused in (False, True):
        problem = mlp_problem()
        # torch's own optimizers refuse fused together with the registry's foreach=True
        torch_class = get_spec(name).cls.__module__.startswith("torch.")
        opt = build(name, problem.model, fused=fused, **({"foreach": False} if fused and torch_class else {}))
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
        train_steps(opt, problem, 6, scheduler=scheduler)
        runs.append(snapshot(problem.model))
    for n in runs[0]:
        torch.testing.assert_close(runs[0][n], runs[1][n], rtol=1e-5, atol=1e-6, msg=f"{name}: {n}")


# --- hooks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", each_optimizer("hooks"))
def test_hooks_follow_the_trainer_contract(name: str) -> None:
    problem = mlp_problem()
    opt = build(name, problem.model)
    assert callable(getattr(opt, "hessian_step_due", None)) == callable(getattr(opt, "update_hessian", None))
    assert callable(getattr(opt, "train", None)) == callable(getattr(opt, "eval", None))
    if not get_spec(name).uses_schedule:
        assert callable(getattr(opt, "eval", None)), "a schedule-free optimizer needs train()/eval()"
    train_steps(opt, problem, 3)
    if callable(getattr(opt, "eval", None)):
        before = snapshot(problem.model)
        opt.eval()
        opt.eval()  # idempotent
        opt.train()
        opt.train()
        for n, p in problem.model.named_parameters():
            torch.testing.assert_close(before[n], p, rtol=1e-5, atol=1e-6)
        if not get_spec(name).uses_schedule:
            opt.eval()
            problem.loss().backward()
            with pytest.raises(RuntimeError):
                opt.step()


# --- memory ----------------------------------------------------------------------------------------


def _elementwise_state(name: str) -> bool:
    flag = case_of(name).elementwise_state
    return get_spec(name).family == "elementwise" if flag is None else flag


@pytest.mark.parametrize("name", [n for n in NAMES if _elementwise_state(n)])
def test_state_bytes_match_the_registry(name: str) -> None:
    """On bias-free hidden matrices (the rule each is named after), state bytes/param = the spec's."""
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.Tanh(), nn.Linear(8, 4, bias=False))
    x, y = torch.randn(16, 6), torch.randn(16, 4)
    problem = Problem(model, lambda: F.mse_loss(model(x), y), None)
    opt = build(name, model)
    train_steps(opt, problem, 4)
    state_bytes = 0
    for p in model.parameters():
        for value in opt.state[p].values():
            if torch.is_tensor(value) and value.numel() == p.numel():
                state_bytes += value.numel() * value.element_size()
    n_params = sum(p.numel() for p in model.parameters())
    assert state_bytes / n_params == get_spec(name).state_bytes
