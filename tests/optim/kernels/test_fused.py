"""The compiled update kernels behind ``fused=True`` (``optarena.optim.kernels.compiled``).

That fused steps follow the foreach trajectory is checked for every optimizer in
``tests/optim/test_battery.py::test_fused_matches_foreach``; this file covers the machinery.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch._dynamo.utils import counters

import optarena.optim.kernels.compiled as fused_module
from optarena.optim import create_optimizer
from optarena.optim.kernels import ElementwiseUpdate, elementwise
from optarena.optim.kernels.compiled import FusedKernel
from optarena.optim.lion import Lion


def _problem(numel: int, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Parameter, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(numel // 64, 64, generator=gen).to(dtype))
    grad = torch.randn(param.shape, generator=gen).to(dtype)
    return param, grad


def _run(opt: torch.optim.Optimizer, param: torch.nn.Parameter, grad: torch.Tensor, steps: int) -> None:
    for t in range(steps):
        param.grad = grad * (1 + t)
        opt.step()
        for group in opt.param_groups:  # a schedule: a new learning rate every step
            group["lr"] *= 0.7


def test_a_changing_learning_rate_does_not_recompile() -> None:
    # float64: CPU float32 tensors go to the C kernel (test_native.py), which compiles nothing
    torch._dynamo.reset()  # forget earlier tests' compilations: the first step below must compile
    param, grad = _problem(fused_module.FUSED_MIN_NUMEL, torch.float64)
    opt = Lion([param], lr=1e-3, weight_decay=0.1, fused=True)
    before = counters["stats"]["unique_graphs"]
    _run(opt, param, grad, 1)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > before
    _run(opt, param, grad, 4)
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fused_keeps_the_dtype_and_agrees_with_foreach(dtype: torch.dtype) -> None:
    results = []
    for fused in (False, True):
        param, grad = _problem(fused_module.FUSED_MIN_NUMEL, dtype)
        _run(create_optimizer("adan", [param], fused=fused), param, grad, 3)
        assert param.dtype == dtype
        results.append(param.detach().clone())
    # bf16: the kernel computes in float32 and rounds once, the foreach chain rounds after every op
    tol = dict(rtol=0, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[0], results[1], **tol)


def test_small_and_strided_tensors_are_handed_back_untouched() -> None:
    calls = []
    kernel = FusedKernel(lambda p, g: calls.append(p.shape) or p.add_(g))
    big = torch.zeros(fused_module.FUSED_MIN_NUMEL)
    small = torch.zeros(8)
    strided = torch.zeros(fused_module.FUSED_MIN_NUMEL, 2)[:, 0]
    kernel._compiled = kernel.fn  # run eagerly: this test is about the routing, not the compiler
    rest = kernel.apply(([big, small, strided], [torch.ones_like(big), torch.ones_like(small),
                                                 torch.ones_like(strided)]))
    assert calls == [big.shape]
    assert torch.equal(big, torch.ones_like(big))
    assert rest[0] == [small, strided] and not small.any() and not strided.any()


def test_a_native_loop_takes_float32_tensors_of_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_module.c_kernels, "usable", lambda *ts: all(
        t.dtype == torch.float32 and t.is_contiguous() for t in ts))  # as on a machine with a C compiler
    native_calls, compiled_calls = [], []
    kernel = FusedKernel(lambda p, g: compiled_calls.append(p.numel()) or p.add_(g),
                         native=lambda p, g: native_calls.append(p.numel()) or p.sub_(g))
    kernel._compiled = kernel.fn  # run eagerly: this test is about the routing
    small32, big64 = torch.zeros(8), torch.zeros(fused_module.FUSED_MIN_NUMEL, dtype=torch.float64)
    small64 = torch.zeros(8, dtype=torch.float64)
    strided = torch.zeros(16, 2)[:, 0]
    rest = kernel.apply(([small32, big64, small64, strided], [torch.ones_like(t) for t in
                                                             (small32, big64, small64, strided)]))
    assert native_calls == [8] and compiled_calls == [fused_module.FUSED_MIN_NUMEL]
    assert torch.equal(small32, -torch.ones(8)) and torch.equal(big64, torch.ones_like(big64))
    assert rest[0] == [small64, strided] and not small64.any() and not strided.any()


def test_a_failing_compiler_warns_once_and_the_foreach_path_takes_over(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler")

    kernel = FusedKernel(lambda p: p)
    monkeypatch.setattr(kernel, "compiled", lambda: broken)
    tensors = ([torch.zeros(fused_module.FUSED_MIN_NUMEL), torch.zeros(fused_module.FUSED_MIN_NUMEL)],)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        rest = kernel.apply(tensors)
    assert rest[0] == tensors[0] and kernel.disabled
    assert kernel.call(tensors[0][0]) == (False, None)  # stays off, no second warning

    # the optimizer's result is then the foreach one
    monkeypatch.setattr(elementwise.lion, "compiled", lambda: broken)
    monkeypatch.setattr(elementwise.lion, "disabled", False)
    results = []
    for fused in (False, True):
        param, grad = _problem(fused_module.FUSED_MIN_NUMEL, torch.float64)  # float32 would take the C kernel
        with pytest.warns(RuntimeWarning) if fused else contextlib.nullcontext():
            _run(Lion([param], lr=1e-3, fused=fused), param, grad, 2)
        results.append(param.detach().clone())
    assert torch.equal(results[0], results[1])


def test_fused_lion_refuses_other_kappa_maps() -> None:
    with pytest.raises(ValueError, match="fused=True supports kappa='sign' only, got kappa='l2'"):
        Lion([torch.nn.Parameter(torch.zeros(2))], kappa="l2", fused=True)


def test_create_optimizer_passes_constructor_options_and_still_names_unknown_ones() -> None:
    model = torch.nn.Linear(4, 4)
    assert create_optimizer("lion", model, fused=True, foreach=False).defaults["fused"] is True
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['fuse'\].*'fused'"):
        create_optimizer("lion", model, fuse=True)


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
@pytest.mark.parametrize("invariance", ["channel", "layer"])
def test_projected_adamp_sgdp_steps_match_the_foreach_path(name: str, invariance: str) -> None:
    """Gradients orthogonal to the weight (per row, or only as a whole) take the projected step."""
    from optarena.optim.scale_invariance import scale_invariant_view

    def orthogonal_grad(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if invariance == "channel":
            return g - p * ((g * p).sum(1, keepdim=True) / (p * p).sum(1, keepdim=True))
        return g - p * ((g * p).sum() / (p * p).sum())

    results = []
    for fused in (False, True):
        gen = torch.Generator().manual_seed(0)
        param = torch.nn.Parameter(torch.randn(256, 128, generator=gen))  # 32768 elements: the kernels take it
        opt = create_optimizer(name, [param], fused=fused, weight_decay=0.1)
        for _ in range(3):
            param.grad = orthogonal_grad(param.detach(), gen)
            expected = (256, -1) if invariance == "channel" else (1, -1)
            assert scale_invariant_view(param.detach(), param.grad, 0.1, 1e-8) == expected
            opt.step()
        results.append(param.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_an_elementwise_update_runs_the_path_its_group_chooses() -> None:
    calls = []
    kernel = FusedKernel(lambda p, g, *, lr: calls.append(("fused", p.numel())) or p.sub_(g * lr))
    kernel._compiled = kernel.fn  # run eagerly: this test is about the routing
    update = ElementwiseUpdate(single_tensor=lambda ps, gs, *, lr: calls.append(("single", len(ps))),
                               foreach=lambda ps, gs, *, lr: calls.append(("foreach", len(ps))), fused=kernel)
    big = torch.zeros(fused_module.FUSED_MIN_NUMEL, dtype=torch.float64)  # float64: no C loop
    small = torch.zeros(8, dtype=torch.float64)
    lists = ([big, small], [torch.ones_like(big), torch.ones_like(small)])
    update.run({"foreach": True, "fused": True}, lists, {"lr": 0.5}, {"lr": 0.5})
    assert calls == [("fused", big.numel()), ("foreach", 1)]  # the kernel hands the small tensor back
    assert torch.equal(big, torch.full_like(big, -0.5)) and not small.any()
    calls.clear()
    update.run({"foreach": False, "fused": True}, lists, {"lr": 0.5}, None)  # no kernel keywords: no kernel
    assert calls == [("single", 2)]
    calls.clear()
    update.run({"foreach": True, "fused": False}, lists, {"lr": 0.5}, {"lr": 0.5}, blocked=False)
    assert calls == [("foreach", 2)]
