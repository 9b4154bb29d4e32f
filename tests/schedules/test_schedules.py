"""Schedules: values pinned to hand-computed formulas, registry/parse errors, pickling, LambdaLR round trip."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import torch

from optarena.schedules import (
    SCHEDULES, WSD_SHAPES, InfiniteSchedule, Option, ScheduleSpec, as_lambda_lr, constant, cosine, get_schedule,
    infinite, linear, list_schedules, make_schedule, parse_schedule, power, refine_from_grad_norms, refined,
    register_schedule, rewarm, wsd, wsd_s, wsd_s_branch_points,
)
from optarena.schedules.refined import median_filter_end_reflect

# options that make every registered schedule buildable for a 200-step run with 10 warmup steps
OPTIONS = {
    "power": {"batch_size": 4, "seq_len": 100, "a": 0.1, "b": -0.5},
    "refined": {"grad_norms": [1.0 + 0.01 * i for i in range(50)]},
}


def build(name: str, total: int = 200, warmup: int = 10, **extra):
    return make_schedule(name, total, warmup, **{**OPTIONS.get(name, {}), **extra})


# -- values pinned to the formulas ------------------------------------------------------------------

def test_constant_warmup_values():
    s = constant(warmup=4)
    assert [s(i) for i in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    s = constant(warmup=4, warmup_init=0.2)
    assert s(0) == pytest.approx(0.2 + 0.8 * 1 / 4)


def test_linear_values():
    s = linear(100, warmup=10, final=0.1)
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(1 + (0.1 - 1) * 45 / 90)
    assert s(100) == pytest.approx(0.1) and s(150) == pytest.approx(0.1)


def test_cosine_values_with_floor():
    s = cosine(100, warmup=10, final=0.1)
    assert s(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert s(40) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert s(100) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)


@pytest.mark.parametrize("shape, expected", [
    ("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5)), ("exponential", 0.01**0.5),
])
def test_wsd_decay_shapes(shape, expected):
    final = 0.01 if shape == "exponential" else 0.0
    s = wsd(100, warmup=10, decay_fraction=0.2, shape=shape, final=final)
    assert s(9) == pytest.approx(1.0) and s(79) == pytest.approx(1.0)
    assert s(80) == pytest.approx(1.0)
    assert s(90) == pytest.approx(expected)  # halfway through the decay 80 -> 100


def test_wsd_s_branch_points_and_values():
    branches = wsd_s_branch_points([100, 200], decay_fraction=0.2, warmup=10)
    assert [(b.decay_start, b.budget, b.resume_step) for b in branches] == [(80, 100, 100), (160, 200, None)]
    s = wsd_s(200, warmup=10, budgets=[100], decay_fraction=0.2)
    assert s.branch_points() == branches
    assert s(79) == pytest.approx(1.0)
    assert s(90) == pytest.approx(0.5)  # halfway through the first decay
    assert s(99) == pytest.approx(1 - 19 / 20)
    assert s(100) == pytest.approx(1.0)  # high rate resumes from the decayed weights
    assert s(159) == pytest.approx(1.0)
    assert s(180) == pytest.approx(0.5)
    assert s(200) == pytest.approx(0.0) and s(250) == pytest.approx(0.0)
    # fractions of total_steps; the default is one intermediate budget at half the run
    assert wsd_s(200, budget_fractions=(0.5,)).budgets == (100, 200)
    assert wsd_s(200).budgets == (100, 200)
    assert wsd_s(200, budgets=(50, 100, 200), shape="cosine").budgets == (50, 100, 200)


def test_wsd_s_rejects_overlapping_decays():
    with pytest.raises(ValueError, match="before the previous budget 100 ends"):
        wsd_s_branch_points([100, 110], decay_fraction=0.2)
    with pytest.raises(ValueError, match="strictly increasing"):
        wsd_s_branch_points([200, 100])
    with pytest.raises(ValueError, match="must not exceed total_steps"):
        wsd_s(100, budgets=[50, 150])


def test_power_values():
    # tokens/step 400, beta a n^b = 4 * 0.1 * (400 s)^-0.5 = 0.02 / sqrt(s), capped at lr_max = 0.02
    s = power(1000, warmup=10, batch_size=4, seq_len=100, a=0.1, b=-0.5, lr_max=0.02, decay_fraction=0.1,
              shape="linear")
    assert s.lr_power(0) == 0.02
    assert s(100) == pytest.approx((0.02 / math.sqrt(100)) / 0.02)
    assert s(400) == pytest.approx(0.05)
    peak_at_warmup_end = 1 / math.sqrt(10)
    assert s(10) == pytest.approx(peak_at_warmup_end)
    assert s(4) == pytest.approx(5 / 10 * peak_at_warmup_end)  # linear warmup to eta_power(N_w)
    assert s(950) == pytest.approx(0.5 / math.sqrt(900))  # halfway through decay from eta_power(900 steps)
    half = power(1000, warmup=10, batch_size=4, seq_len=100, a=0.1, b=-0.5, lr_max=0.02, base_lr=0.01)
    assert half(100) == pytest.approx(2 * s(100))  # multipliers are relative to base_lr
    assert half.absolute_lr(100) == pytest.approx(0.002)


def test_infinite_values():
    s = InfiniteSchedule(warmup=10, cooldown_steps=20, level=0.2, anneal_start=50, anneal_steps=10, final=0.02)
    assert s(4) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(20) == pytest.approx(0.2 + 0.8 * 0.5)  # halfway through the cosine cool-down
    assert s(30) == pytest.approx(0.2) and s(49) == pytest.approx(0.2)
    assert s(55) == pytest.approx(0.2 * 0.1**0.5)
    assert s(60) == pytest.approx(0.02) and s(1000) == pytest.approx(0.02)
    eq1 = InfiniteSchedule(warmup=10, cooldown_steps=20, level=0.2, anneal_start=50, anneal_steps=10, final=0.02,
                           anneal_formula="eq1")
    assert eq1(55) == pytest.approx(0.2 * 0.1 ** (5 / 60))
    open_ended = InfiniteSchedule(warmup=10, cooldown_steps=20, level=0.2, final=0.02)
    assert open_ended(10_000) == pytest.approx(0.2)
    assert open_ended.anneal_at(50, 10) == s  # anneal on demand
    laid_out = infinite(100, warmup=10, cooldown_fraction=0.2, level=0.2, anneal_fraction=0.1, final=0.02)
    assert (laid_out.cooldown_steps, laid_out.anneal_start, laid_out.anneal_steps) == (20, 90, 10)


def test_rewarm_values():
    s = rewarm(100, warmup=10, peak=0.5, warmup_init=0.1, final=0.05, shape="cosine")
    assert s(0) == pytest.approx(0.1 + 0.4 * 1 / 10)
    assert s(9) == pytest.approx(0.5)
    assert s(55) == pytest.approx(0.05 + 0.45 * 0.5)
    assert s(100) == pytest.approx(0.05)
    held = rewarm(100, warmup=10, peak=2.0, decay_fraction=0.5, shape="linear")
    assert held(30) == pytest.approx(2.0) and held(75) == pytest.approx(1.0)


def test_refined_small_case_by_hand():
    # tau = 0: no smoothing; w = g^-2 = [1, 1/4, 1, 1]; eta_t ~ w_t * sum_{p>t} w_p = [2.25, 0.5, 1, 0]
    values = refine_from_grad_norms([1.0, 2.0, 1.0, 1.0], tau=0.0)
    assert values == pytest.approx([1.0, 0.5 / 2.25, 1 / 2.25, 0.0])


def test_refined_constant_norms_give_linear_decay():
    T = 50
    s = refined(T, grad_norms=[3.0] * T)
    expected = linear(T - 1)  # eta_t ~ T - t (t = 1..T): 1 at the first step, 0 at the last
    assert s.values(T) == pytest.approx([expected(i) for i in range(T)])
    assert s.values(T) == pytest.approx([(T - 1 - i) / (T - 1) for i in range(T)])
    # recorded on a shorter run, refined for a longer one: still linear
    assert refined(200, grad_norms=[1.0] * 20).values(200) == pytest.approx([(199 - i) / 199 for i in range(200)])


def test_refined_median_filter_and_shape():
    smoothed = median_filter_end_reflect(np.array([1.0, 9.0, 1.0, 1.0, 5.0]), 3)
    # windows: [1,9] [1,9,1] [9,1,1] [1,1,5] [1,5,1 (reflected)]
    assert smoothed == pytest.approx([5.0, 1.0, 1.0, 1.0, 1.0])
    norms = np.concatenate([np.linspace(5, 1, 20), np.ones(80)])  # large early norms -> emergent warmup
    values = refine_from_grad_norms(norms, tau=0.05)
    assert values.max() == pytest.approx(1.0) and values[-1] == 0.0
    assert values[0] < 0.2 and int(np.argmax(values)) >= 15


def test_refined_reads_a_file(tmp_path):
    path = tmp_path / "norms.txt"
    path.write_text("\n".join(["2.0"] * 30))
    name, options = parse_schedule(f"refined:grad_norms={path}")
    assert options["grad_norms"] == str(path)
    s = make_schedule(name, 30, 0, **options)
    assert s(0) == pytest.approx(1.0) and s(29) == 0.0


# -- registry, parsing and errors -----------------------------------------------------------------

def test_every_name_is_registered():
    assert set(SCHEDULES) == {"constant", "linear", "cosine", "wsd", "wsd_s", "power", "infinite", "rewarm",
                              "refined"}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_make_parse_and_pickle_every_schedule(name, tmp_path):
    s = build(name)
    values = s.values(220)
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values), name
    assert values[0] == pytest.approx(s.warmup_init + (s(10) - s.warmup_init) / 10)
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s and clone.values(220) == values
    # CLI form
    spec = name
    if name == "power":
        spec = "power:batch_size=4,seq_len=100,a=0.1,b=-0.5"
    if name == "refined":
        path = tmp_path / "g.json"
        path.write_text(str(OPTIONS["refined"]["grad_norms"]))
        spec = f"refined:grad_norms={path}"
    parsed_name, options = parse_schedule(spec)
    assert make_schedule(parsed_name, 200, 10, **options).values(220) == pytest.approx(values)


def test_parse_schedule_forms():
    assert parse_schedule("wsd:decay_fraction=0.2,shape=1-sqrt") == ("wsd", {"decay_fraction": 0.2, "shape": "1-sqrt"})
    assert parse_schedule("wsd_s:budgets=500/1000,decay_fraction=0.1") == (
        "wsd_s", {"budgets": (500, 1000), "decay_fraction": 0.1})
    assert parse_schedule("cosine") == ("cosine", {})
    name, options = parse_schedule("wsd_s:budget_fractions=0.25/0.5")
    assert make_schedule(name, 400, 0, **options).budgets == (100, 200, 400)


@pytest.mark.parametrize("spec, message", [
    ("bogus", "unknown schedule 'bogus'"),
    ("wsd:decay_fraction", "must look like key=value"),
    ("wsd:shape=quadratic", "schedule 'wsd' shape must be one of \\('linear', 'cosine', '1-sqrt', 'exponential'\\)"),
    ("wsd:decay_fraction=1.5", "decay_fraction must be a finite number in \\[0, 1\\], got decay_fraction=1.5"),
    ("wsd:decay_fraction=nan", "decay_fraction must be a finite number in \\[0, 1\\], got decay_fraction=nan"),
    ("wsd:decay_fraction=abc", "decay_fraction must be a finite number in \\[0, 1\\], got decay_fraction='abc'"),
    ("wsd:decay_fraction=0.2,decay_fraction=0.3", "option 'decay_fraction' is given twice"),
    ("wsd:decay=0.2", "schedule 'wsd' has no option 'decay'. Did you mean 'decay_fraction'\\? Valid options: "),
    ("cosin", "unknown schedule 'cosin'. Did you mean 'cosine'"),
    ("cosine:final=2", "final must be a finite number in \\[0, 1\\]"),
    ("cosine:warmup_init=inf", "warmup_init must be a finite number in \\[0, 1\\], got warmup_init=inf"),
    ("linear:final=-0.1", "final must be"),
    ("power", "needs batch_size > 0"),
    ("power:batch_size=4", "needs seq_len > 0"),
    ("power:batch_size=4,seq_len=8,b=0.5", "b must be a finite number in \\(-10, 0\\), got b=0.5"),
    ("power:batch_size=0", "batch_size must be an int >= 1, got batch_size=0"),
    ("infinite:level=0.1,final=0.5", "final must be <= level"),
    ("infinite:anneal_formula=paper", "anneal_formula must be one of"),
    ("infinite:cooldown_fraction=0.8,anneal_fraction=0.5", "exceed total_steps"),
    ("rewarm:peak=0.5,final=0.9", "final must be <= peak"),
    ("rewarm:peak=-1", "peak must be a finite number > 0"),
    ("refined", "needs grad_norms"),
    ("refined:grad_norms=/no/such/file.txt", "no grad-norm file"),
    ("wsd_s:budgets=150/160", "before the previous budget 150 ends"),
    ("wsd_s:budgets=50,budget_fractions=0.5", "not both"),
    ("wsd_s:budget_fractions=1.5", "budget_fractions must be a finite number in \\(0, 1\\]"),
    ("wsd_s:budgets=100/nan", "budgets must be a finite number > 0, got budgets=nan"),
])
def test_bad_options_give_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        name, options = parse_schedule(spec)
        make_schedule(name, 200, 10, **options)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_each_spec_describes_its_options_and_their_defaults_are_valid(name):
    spec = get_schedule(name)
    assert spec.name == name and isinstance(spec, ScheduleSpec) and spec.description
    assert set(spec.defaults) == set(spec.options)
    for option_name, option in spec.options.items():
        assert option.help and option.describe(), option_name
        default = spec.defaults[option_name]
        option.check(f"schedule {name!r}", option_name, default, default)  # the factory's default is valid


def test_the_registry_is_read_only_and_answers_like_a_mapping():
    assert list_schedules() == sorted(SCHEDULES) and "cosine" in SCHEDULES and "cosin" not in SCHEDULES
    with pytest.raises(TypeError):
        SCHEDULES["mine"] = SCHEDULES["cosine"]  # type: ignore[index]
    with pytest.raises(ValueError, match="already registered"):
        register_schedule(ScheduleSpec("cosine", cosine, get_schedule("cosine").options, paper="", description="2nd"))
    with pytest.raises(ValueError, match="lower-case"):
        ScheduleSpec("Cosine", cosine, get_schedule("cosine").options, paper="", description="")
    with pytest.raises(ValueError, match="Option kind must be one of"):
        Option("x", kind="float")
    with pytest.raises(ValueError, match="must be the factory's keyword arguments"):
        ScheduleSpec("mine", cosine, {"final": Option("x")}, paper="", description="")  # warmup_init missing
    with pytest.raises(ValueError, match=r"must take \(total_steps, warmup, \*\*options\)"):
        ScheduleSpec("mine", lambda steps, final=0.0: None, {"final": Option("x")}, paper="", description="")


def test_options_given_to_make_schedule_are_checked_too():
    with pytest.raises(ValueError, match="schedule 'cosine' has no option 'floor'"):
        make_schedule("cosine", 100, 0, floor=0.1)
    with pytest.raises(ValueError, match="schedule 'infinite' level must be a finite number in \\(0, 1\\], got level=0"):
        make_schedule("infinite", 100, 0, level=0)
    with pytest.raises(ValueError, match="grad_norms must be a non-empty sequence of numbers"):
        make_schedule("refined", 100, 0, grad_norms=[])
    assert make_schedule("refined", 10, 0, grad_norms=np.ones(10))(9) == 0.0  # arrays are sequences of numbers


def test_make_schedule_rejects_bad_budgets_and_steps():
    with pytest.raises(ValueError, match="total_steps must exceed warmup"):
        make_schedule("cosine", 10, 10)
    with pytest.raises(ValueError, match="total_steps must exceed warmup"):
        make_schedule("constant", 5, 10)
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        make_schedule("linear", 100, -1)
    with pytest.raises(ValueError, match="step must be >= 0"):
        cosine(100)(-1)
    with pytest.raises(ValueError, match="refined grad_norms must be finite and > 0"):
        refined(10, grad_norms=[1.0, 0.0, 1.0])


# -- LambdaLR adapter ----------------------------------------------------------------------------------

def _muon_with_two_groups():
    from optarena.optim.muon import Muon

    weight = torch.nn.Parameter(torch.randn(8, 6))
    bias = torch.nn.Parameter(torch.randn(8))
    optimizer = Muon([
        {"params": [weight], "lr": 0.02},
        {"params": [bias], "matrix": False, "lr": 0.001},
    ])
    return optimizer, weight, bias


def _train_steps(optimizer, scheduler, weight, bias, steps):
    lrs = []
    for _ in range(steps):
        loss = (weight.sum(dim=1) + bias).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        lrs.append([g["lr"] for g in optimizer.param_groups])
    return lrs


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_as_lambda_lr_keeps_group_ratios_and_round_trips(name):
    schedule = build(name, total=30, warmup=3)
    optimizer, weight, bias = _muon_with_two_groups()
    scheduler = as_lambda_lr(optimizer, schedule)
    lrs = _train_steps(optimizer, scheduler, weight, bias, 12)
    for step, (matrix_lr, adamw_lr) in enumerate(lrs, start=1):
        assert matrix_lr == pytest.approx(0.02 * schedule(step))
        assert adamw_lr == pytest.approx(0.001 * schedule(step))  # ratio 20 kept at every step
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # schedule fields are plain data
    expected = _train_steps(optimizer, scheduler, weight, bias, 8)

    optimizer2, weight2, bias2 = _muon_with_two_groups()
    scheduler2 = as_lambda_lr(optimizer2, make_schedule("constant", 30, 0))  # a different schedule ...
    optimizer2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["scheduler"])  # ... replaced by the saved one
    assert scheduler2.lr_lambdas[0] == schedule
    # continues from step 12 with the same learning rates in both groups
    assert np.array(_train_steps(optimizer2, scheduler2, weight2, bias2, 8)) == pytest.approx(np.array(expected))


def test_schedule_method_adapter():
    optimizer, _, _ = _muon_with_two_groups()
    scheduler = cosine(10).as_lambda_lr(optimizer)
    assert scheduler.get_last_lr() == pytest.approx([0.02, 0.001])
    with pytest.raises(ValueError, match="must be callable"):
        as_lambda_lr(optimizer, 3.0)


def test_decay_shapes_listed():
    assert WSD_SHAPES == ("linear", "cosine", "1-sqrt", "exponential")


def test_cli_lists_schedules_with_their_options():
    from typer.testing import CliRunner

    from optarena.cli import app

    result = CliRunner().invoke(app, ["list", "schedules"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in SCHEDULES:
        assert name in result.output
    assert "decay_fraction=0.2" in result.output and "arXiv:2410.05192" in result.output
    assert CliRunner().invoke(app, ["list", "schedule"]).exit_code == 2


def test_schedule_names_quoted_in_the_package_are_registered():
    """Every ``make_schedule("x")`` / ``parse_schedule("x:...")`` in the package's code and docs names a real schedule."""
    import re
    from pathlib import Path

    quoted = re.compile(r"""(?:make_schedule|parse_schedule)\(\s*["']([a-z0-9_]+)""")
    root = Path(__file__).resolve().parents[2] / "src" / "optarena"
    found = {m.group(1): str(path.relative_to(root)) for path in root.rglob("*.py") for m in quoted.finditer(path.read_text())}
    assert found, "the pattern should find the schedules the package builds"
    assert {name: where for name, where in found.items() if name not in SCHEDULES} == {}
