"""The training-loop hooks: each is called at its point of the arena trainer's step, in order."""

from __future__ import annotations

import pytest
import torch

import optarena.arena.trainer as trainer
from optarena.arena.trainer import RunConfig, train
from optarena.optim import create_optimizer
from optarena.optim.hooks import TrainingHooks, hooks_of


class _Recording(torch.optim.SGD, TrainingHooks):
    """Plain SGD that records every hook call; the Hessian refresh is due after step 2."""

    def __init__(self, params, lr: float = 0.01) -> None:
        super().__init__(params, lr=lr)
        self.calls: list[str] = []
        self.steps = 0
        self.hessian_losses: list[float] = []

    def train(self) -> None:
        self.calls.append("train")

    def eval(self) -> None:
        self.calls.append("eval")

    def observe_batch_size(self, batch_size: int) -> None:
        self.calls.append(f"batch_size={batch_size}")

    def prepare_step(self) -> None:
        self.calls.append("prepare_step")

    def observe_loss(self, loss: float) -> None:
        assert isinstance(loss, float)
        self.calls.append("observe_loss")

    def step(self, closure=None):
        assert all(p.grad is not None for group in self.param_groups for p in group["params"])
        self.calls.append("step")
        self.steps += 1
        return super().step(closure)

    def hessian_step_due(self) -> bool:
        return self.steps == 2

    def update_hessian(self, loss_closure, sampled_loss_closure=None, *, batch_size=None) -> None:
        assert all(p.grad is None for group in self.param_groups for p in group["params"])  # zeroed first
        assert sampled_loss_closure is None and batch_size == 128  # quadratic: no sampled loss, batches of 128
        self.hessian_losses.append(loss_closure().item())
        self.calls.append("update_hessian")


class _ZerothOrder(torch.optim.Optimizer, TrainingHooks):
    """Random search along one Gaussian direction: evaluates the loss only through the closure."""

    needs_backward = False

    def __init__(self, params, lr: float = 0.05) -> None:
        super().__init__(params, {"lr": lr})
        self.evaluations = 0

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        assert all(p.grad is None for p in params) and closure is not None
        base = closure()
        assert not base.requires_grad
        direction = [torch.randn_like(p) for p in params]
        for p, d in zip(params, direction):
            p.add_(d, alpha=self.param_groups[0]["lr"])
        if closure() > base:  # worse: step back
            for p, d in zip(params, direction):
                p.sub_(d, alpha=self.param_groups[0]["lr"])
        self.evaluations += 2
        return base


def _config(**kw) -> RunConfig:
    return RunConfig(**{**dict(workload="quadratic", scale="default", optimizer="sgd", hparams={}, steps=4,
                               eval_every=2, warmup_fraction=0.0), **kw})


def _use(monkeypatch: pytest.MonkeyPatch, optimizer_class: type) -> list[torch.optim.Optimizer]:
    made: list[torch.optim.Optimizer] = []

    def create(name, model, **hparams):
        made.append(optimizer_class(model.parameters()))
        return made[-1]

    monkeypatch.setattr(trainer, "create_optimizer", create)
    return made


def test_each_hook_is_called_at_its_point_of_the_step(monkeypatch):
    made = _use(monkeypatch, _Recording)
    result = train(_config())
    assert result.status == "ok", result.error
    step = ["prepare_step", "observe_loss", "step"]
    evaluation = ["eval", "train"]
    assert made[0].calls == [
        "batch_size=128", "train", *evaluation,  # before training, and the evaluation at initialisation
        *step,
        *step, "update_hessian", *evaluation,
        *step,
        *step, *evaluation,
    ]
    assert made[0].hessian_losses and made[0].hessian_losses[0] > 0


def test_an_optimizer_without_backward_trains_through_the_closure(monkeypatch):
    torch.manual_seed(0)
    made = _use(monkeypatch, _ZerothOrder)
    result = train(_config(steps=30, eval_every=10))
    assert result.status == "ok", result.error
    assert made[0].evaluations == 60
    assert all(p.grad_norm is None for p in result.curve[1:])  # no gradients to measure or clip
    assert result.final_eval_loss < result.curve[0].eval_loss


def test_optimizers_without_hooks_get_no_ops():
    model = torch.nn.Linear(3, 2)
    adamw = torch.optim.AdamW(model.parameters())
    hooks = hooks_of(adamw)
    assert hooks is not adamw and hooks is hooks_of(torch.optim.SGD(model.parameters()))
    assert hooks.needs_backward and not hooks.hessian_step_due()
    before = [p.detach().clone() for p in model.parameters()]
    hooks.train(), hooks.eval(), hooks.prepare_step(), hooks.observe_loss(1.0), hooks.observe_batch_size(8)
    assert hooks.update_hessian(lambda: model.weight.sum()) is None
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", ["sophia_g", "sophia_h", "mkor_h", "drop_muon", "schedule_free_adamw"])
def test_optimizers_that_need_the_loop_implement_the_hooks(name):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = create_optimizer(name, model)
    assert hooks_of(optimizer) is optimizer
    hooks = ("train", "eval", "prepare_step", "observe_loss", "hessian_step_due", "update_hessian")
    overridden = {hook for hook in hooks if getattr(type(optimizer), hook) is not getattr(TrainingHooks, hook)}
    expected = {"sophia_g": {"hessian_step_due", "update_hessian"}, "sophia_h": {"hessian_step_due", "update_hessian"},
                "mkor_h": {"observe_loss"}, "drop_muon": {"prepare_step"}, "schedule_free_adamw": {"train", "eval"}}
    assert overridden == expected[name]
