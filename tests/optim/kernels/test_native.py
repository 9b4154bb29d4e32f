"""The C kernels of ``optarena.optim.kernels`` against the eager code they replace, and their loader.

Sizes are chosen off the vector width (cols = 77) and over one reduction block (n > 16384)
so that remainders and block combination are exercised.
"""

from __future__ import annotations

import math

import pytest
import torch

import optarena.optim.kernels.native as native
from optarena.optim import create_optimizer
from optarena.optim.adamp import _adamp_block, _sgdp_block
from optarena.optim.kernels import elementwise, memory, projected, rms
from optarena.optim.scale import _rms_normalize_step
from optarena.optim.scale_invariance import invariance_cosines

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler for optarena.optim.kernels.native")

ROWS, COLS = 301, 77  # 23177 elements: two reduction blocks, a ragged vector tail


def tensors(*names: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {n: torch.randn(ROWS, COLS, generator=gen) for n in names}
    for n in ("v",):
        if n in out:
            out[n] = out[n].abs()
    return out


def clones(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.clone() for k, t in ts.items()}


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


def eager_cosines(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The eager test's [largest row |cos|, layer |cos|] (float32 row sums, as the kernel's)."""
    return invariance_cosines(g, p, 1e-8).double()


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamp_kernel_is_the_unprojected_step_and_the_test(nesterov: bool, weight_decay: float) -> None:
    t = tensors("p", "g", "m", "v")
    ref = clones(t)
    step, lr, (b1, b2) = 3, 1e-2, (0.9, 0.999)
    group = dict(betas=(b1, b2), lr=lr, eps=1e-8, step=step, weight_decay=weight_decay, nesterov=nesterov)
    _adamp_block([ref["p"]], [ref["g"]], [ref["m"]], [ref["v"]], group=group, wd_ratio=1.0, view=None)
    cosines = projected.c_adamp_step(t["p"], t["g"], t["m"], t["v"], beta1=b1, beta2=b2,
                                bc2_sqrt=math.sqrt(1 - b2**step), eps=1e-8, step_size=lr / (1 - b1**step),
                                decay=lr * weight_decay, nesterov=nesterov, test_eps=1e-8)
    for k in ("p", "m", "v"):
        close(t[k], ref[k])
    original = tensors("p", "g")
    torch.testing.assert_close(cosines, eager_cosines(original["g"], original["p"]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_kernel_is_the_unprojected_step(nesterov: bool) -> None:
    t = tensors("p", "g", "b")
    ref = clones(t)
    group = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3, nesterov=nesterov, eps=1e-8)
    _sgdp_block([ref["p"]], [ref["g"]], [ref["b"]], group=group, wd_ratio=1.0, view=None)
    cosines = projected.c_sgdp_step(t["p"], t["g"], t["b"], mu=0.9, damp=0.9, lr=0.1, decay=0.1 * 1e-3 / 0.1,
                               nesterov=nesterov, test_eps=1e-8)
    close(t["p"], ref["p"])
    close(t["b"], ref["b"])
    original = tensors("p", "g")
    torch.testing.assert_close(cosines, eager_cosines(original["g"], original["p"]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("momentum", [None, 0.9])
def test_row_rms_kernel_matches_scale_rows(momentum: float | None, nan: bool) -> None:
    t = tensors("p", "g", "b")
    if nan:  # a NaN gradient makes its row NaN, as clamp_min does in the eager code (not a 1e8 step)
        t["g"][3, 2] = float("nan")
    ref = clones(t)
    if momentum is None:
        _rms_normalize_step(ref["p"], ref["g"], dim=1, lr=0.01, weight_decay=0.1)
        rms.row_rms_step(t["p"], t["g"], None, weight=0.0, lr=0.01, decay=0.01 * 0.1)
    else:
        ref["b"].lerp_(ref["g"], 1 - momentum)
        _rms_normalize_step(ref["p"], ref["b"], dim=1, lr=0.01, weight_decay=0.1)
        rms.row_rms_step(t["p"], t["g"], t["b"], weight=1 - momentum, lr=0.01, decay=0.01 * 0.1)
        close(t["b"], ref["b"])
    close(t["p"], ref["p"])
    assert t["p"][3].isnan().all() == nan and t["p"].isnan().sum() == (COLS if nan else 0)


@pytest.mark.parametrize("nan", [False, True])
def test_col_rms_kernel_matches_scale_embedding_columns(nan: bool) -> None:
    t = tensors("p", "g")
    t["g"][:, 5] = 0.0  # an all-zero column takes the 1e-8 floor, as in the eager code
    if nan:
        t["g"][3, 2] = float("nan")
    ref = clones(t)
    _rms_normalize_step(ref["p"], ref["g"], dim=0, lr=0.01, weight_decay=0.0)
    rms.col_rms_step(t["p"], t["g"], lr=0.01, decay=0.0)
    close(t["p"], ref["p"])
    assert t["p"][:, 2].isnan().all() == nan and t["p"].isnan().sum() == (ROWS if nan else 0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_am_sgd_kernels_match_the_formulas(weight_decay: float) -> None:
    t = {k: v.view(-1) for k, v in tensors("p", "g", "d").items()}
    h = t["g"] + weight_decay * t["p"]  # float32 elementwise, as the kernel
    expected = torch.stack([h.double().square().sum(), (h - t["d"]).double().square().sum()])
    # the kernel sums 512 elements in float32 before it adds in double: a few float32 ulps of the total
    torch.testing.assert_close(memory.c_am_sgd_sums(t["p"], t["g"], t["d"], weight_decay=weight_decay), expected,
                               rtol=1e-6, atol=0.0)
    d_ref = t["d"] + (t["g"] + weight_decay * t["p"] - t["d"]) * 0.3
    p_ref = t["p"] - 0.05 * d_ref
    memory.c_am_sgd_update(t["p"], t["g"], t["d"], weight_decay=weight_decay, weight=0.3, lr=0.05)
    close(t["d"], d_ref)
    close(t["p"], p_ref)


def test_am_adamw_kernels_match_the_compiled_functions_in_eager_mode() -> None:
    t = {k: v.view(-1) for k, v in tensors("p", "g", "d", "v").items()}
    ref = clones(t)
    hyper = dict(bc2_sqrt=0.3, eps=1e-8, lam=0.1)
    expected = memory.am_adamw_sums.fn(*ref.values(), beta2=0.99, correction=torch.tensor(0.6), wd=0.1, want_sums=True,
                                 **hyper)
    sums = memory.c_am_adamw_sums(*t.values(), beta2=0.99, correction=0.6, weight_decay=0.1, want_sums=True, **hyper)
    close(t["v"], ref["v"])
    torch.testing.assert_close(sums, expected.double(), rtol=1e-4, atol=1e-4)
    memory.am_adamw_update.fn(*ref.values(), keep=torch.tensor(0.25), correction=torch.tensor(0.6), lr=0.01, wd=0.1,
                        **hyper)
    memory.c_am_adamw_update(*t.values(), keep=0.25, correction=0.6, lr=0.01, weight_decay=0.1, **hyper)
    close(t["d"], ref["d"])
    close(t["p"], ref["p"])


def _elementwise_cases() -> list:
    cases = []
    for wd in (0.0, 0.1):
        cases.append(pytest.param(elementwise.lion, "pgm", set(), dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=wd),
                                  id=f"lion-wd{wd}"))
    for no_prox in (False, True):
        cases.append(pytest.param(elementwise.adan, "pgmvnq", {"n"}, dict(
            b1=0.98, b2=0.92, b3=0.99, size_m=1e-3, size_v=5e-4, eps_scaled=1e-8, decay=1e-3, no_prox=no_prox),
            id=f"adan-no_prox{no_prox}"))
    # h from randn: negative entries meet the floor eps / rho, large ratios the clip
    cases.append(pytest.param(elementwise.sophia, "pgmh", set(), dict(lr=1e-2, beta1=0.965, rho=0.04, weight_decay=0.1,
                                                                eps=1e-12), id="sophia"))
    for power, kind in ((1.0, 1), (2.0, 2), (1.5, 0)):
        for scaling, current, thresholded in ((True, False, True), (True, True, False), (False, False, True)):
            cases.append(pytest.param(elementwise.classp, "pga", {"a"}, dict(
                lr=1e-2, threshold=0.5, eps=1e-8, power=power, power_kind=kind, apply_scaling=scaling,
                include_current=current, thresholded=thresholded),
                id=f"classp-p{power}-scale{scaling}-current{current}-threshold{thresholded}"))
    cases.append(pytest.param(elementwise.sf_adamw, "pgzv", {"v"}, dict(
        lr=1e-2, ckp=0.3, beta1=0.9, beta2=0.999, bc2_sqrt=0.5, eps=1e-8, weight_decay=0.1), id="sf_adamw"))
    return cases


@pytest.mark.parametrize(("kernel", "names", "nonnegative", "hyper"), _elementwise_cases())
def test_elementwise_kernels_match_the_compiled_functions_in_eager_mode(kernel, names: str, nonnegative: set,
                                                                        hyper: dict,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each one-pass C kernel against the torch function it stands in for, run eagerly."""
    calls = []
    c_loop = kernel.native
    monkeypatch.setattr(kernel, "native", lambda *ts, **kw: calls.append(len(ts)) or c_loop(*ts, **kw))
    gen = torch.Generator().manual_seed(1)
    t = [torch.randn(ROWS * COLS, generator=gen) for _ in names]
    t = [x.abs() if n in nonnegative else x for n, x in zip(names, t)]
    ref = [x.clone() for x in t]
    original = t[0].clone()
    kernel.fn(*ref, **hyper)
    ran, _ = kernel.call(*t, **hyper)  # float32 CPU tensors: FusedKernel routes them to the C kernel
    assert ran and calls == [len(names)]
    for name, got, want in zip(names, t, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{kernel.name}: tensor {name!r}")
    assert not torch.equal(t[0], original)  # the parameter moved


def test_fused_kernels_take_the_c_loop_for_float32_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(elementwise.lion, "native", lambda *ts, **kw: calls.append(ts[0].dtype))
    monkeypatch.setattr(elementwise.lion, "_compiled", elementwise.lion.fn)  # no compilation: this is about routing
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1)
    for dtype in (torch.float32, torch.float64):
        assert elementwise.lion.call(*(torch.ones(64, dtype=dtype) for _ in range(3)), **hyper)[0]
    assert calls == [torch.float32]


def test_sums_do_not_depend_on_the_thread_count() -> None:
    """Fixed blocks (flat sums), rows (AdamP's test, SCALE's chunks of rows) and column slices, in a fixed order."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            t = tensors("p", "g", "m", "v")
            flat = {k: v.view(-1) for k, v in t.items()}
            sgd = memory.c_am_sgd_sums(flat["p"], flat["g"], flat["m"], weight_decay=0.0)
            adamw = memory.c_am_adamw_sums(flat["p"], flat["g"], flat["m"], flat["v"].clone(), beta2=0.99, bc2_sqrt=0.5,
                                         eps=1e-8, correction=0.9, lam=0.1, weight_decay=0.01, want_sums=True)
            rows = projected.c_adamp_step(t["p"], t["g"], t["m"], t["v"], beta1=0.9, beta2=0.99, bc2_sqrt=0.1, eps=1e-8,
                                     step_size=1e-3, decay=0.0, nesterov=False, test_eps=1e-8)
            rms.col_rms_step(t["p"], t["g"], lr=0.1, decay=0.0)
            rms.row_rms_step(t["p"], t["g"], t["m"], weight=0.1, lr=0.1, decay=0.01)  # pipelined rows
            rms.row_rms_step(t["p"], t["g"], None, weight=0.0, lr=0.1, decay=0.0)
            results.append((sgd, adamw, rows, t["p"], t["m"]))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_adamp_speculation_recovers_when_a_tensor_turns_projected_and_back() -> None:
    """Step 1 speculates and must undo (gradient orthogonal per row), step 2 is predicted projected,
    step 3 (random gradient) flips back; every step follows the foreach path."""
    results = []
    for fused in (False, True):
        gen = torch.Generator().manual_seed(1)
        param = torch.nn.Parameter(torch.randn(256, 128, generator=gen))
        opt = create_optimizer("adamp", [param], fused=fused, weight_decay=0.1)
        flags = []
        for orthogonal in (True, True, False):
            g = torch.randn(param.shape, generator=gen)
            if orthogonal:
                p = param.detach()
                g = g - p * ((g * p).sum(1, keepdim=True) / (p * p).sum(1, keepdim=True))
            param.grad = g
            opt.step()
            flags.append(opt.state[param].get("scale_invariant"))
        results.append((param.detach().clone(), flags))
    close(results[0][0], results[1][0])
    assert results[1][1] == [True, True, False]  # fused: the outcome of each step's test is remembered


def test_without_a_compiler_fused_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("OPTARENA_CACHE_DIR", str(tmp_path))
    param = torch.nn.Parameter(torch.randn(256, 128))
    param.grad = torch.randn(256, 128)
    reference = param.detach().clone()
    opt = create_optimizer("sgdp", [param], fused=True)
    with pytest.warns(RuntimeWarning, match="no-such-compiler-here"):
        opt.step()
    assert not native.available()
    assert not torch.equal(param.detach(), reference)  # the compiled/foreach path took the step


def test_opt_out_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("OPTARENA_NATIVE", "0")
    assert not native.available()
    assert not native.usable(torch.zeros(4))


def test_a_fresh_cache_directory_builds_the_library(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("OPTARENA_CACHE_DIR", str(tmp_path))
    built = native._build()
    assert built.parent == tmp_path and built.stat().st_size > 0
    mtime = built.stat().st_mtime_ns
    assert native._build() == built and built.stat().st_mtime_ns == mtime  # cached: the same file, not rebuilt
    digest = built.with_suffix(".sha256")
    assert sorted(tmp_path.iterdir()) == sorted([built, digest])  # no temporary left behind
    assert digest.read_text() == native._digest(built)


def test_a_cached_library_that_fails_verification_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("OPTARENA_CACHE_DIR", str(tmp_path))
    built = native._build()
    good = built.read_bytes()
    built.write_bytes(good[: len(good) // 2])  # a truncated (or tampered) file is never loaded
    assert not native._verified(built)
    assert native._build() == built and built.read_bytes() == good and native._verified(built)
    built.with_suffix(".sha256").unlink()  # no digest: not verified either
    assert not native._verified(built)


def test_the_cache_directory_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("OPTARENA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native._cache_dir() == tmp_path / "optarena"
    monkeypatch.setenv("OPTARENA_CACHE_DIR", str(tmp_path / "own"))
    assert native._cache_dir() == tmp_path / "own"


def test_every_c_function_is_declared_once_in_kernels_c() -> None:
    """The prototypes in kernels.c are the only declaration: each wrapper's keywords must be its parameters."""
    protos = native.prototypes()
    assert set(protos) == {"adamp", "sgdp", "row_rms", "col_rms", "am_sgd_sums", "am_sgd_update", "am_adamw_sums",
                           "am_adamw_update", "lion", "adan", "sophia", "classp", "sf_adamw"}
    assert [name for _, name in protos["lion"]] == ["p", "g", "m", "n", "lr", "beta1", "beta2", "weight_decay",
                                                   "threads"]
    for kernel in (elementwise.lion, elementwise.adan, elementwise.sophia, elementwise.classp, elementwise.sf_adamw):
        c_names = {name for _, name in kernel.native.params}
        keywords = set(kernel.fn.__code__.co_varnames[kernel.fn.__code__.co_argcount:
                                                       kernel.fn.__code__.co_argcount
                                                       + kernel.fn.__code__.co_kwonlyargcount])
        assert keywords <= c_names, (kernel.name, keywords - c_names)


def test_a_c_function_names_a_missing_or_unknown_argument() -> None:
    t = torch.zeros(4)
    with pytest.raises(TypeError, match="missing argument 'weight_decay'"):
        native.function("lion")(t, t, t, lr=0.1, beta1=0.9, beta2=0.99)
    with pytest.raises(TypeError, match=r"unknown arguments \['wd'\]"):
        native.function("lion")(t, t, t, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, wd=0.1)
    with pytest.raises(KeyError, match="no optarena_nope_f32"):
        native.function("nope")(t)
    with pytest.raises(TypeError, match="'g' must be a contiguous CPU torch.float32 tensor, got torch.float64"):
        native.function("lion")(t, t.double(), t, lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0)


def test_no_optimizer_module_imports_the_loader() -> None:
    """Optimizers reach the C kernels through the kernels package's method modules only."""
    from pathlib import Path

    import optarena.optim

    for path in Path(optarena.optim.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "kernels.native" not in text and "kernels import native" not in text, path.name
