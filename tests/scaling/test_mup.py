"""muP multipliers against hand-computed values, parameter groups, init and the readout multiplier."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optarena.optim import create_optimizer
from optarena.scaling.mup import apply_mup, create_mup_optimizer, mup_attention_scale, mup_param_groups
from optarena.scaling.mup_plan import base_shapes, mup_plan, optimizer_family


class MLP(nn.Module):
    """10 -> w -> 2w -> 3: an input layer (fixed fan-in), a hidden matrix, a readout named ``head``."""

    def __init__(self, width: int, d_in: int = 10, d_out: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.hid = nn.Linear(width, 2 * width)
        self.head = nn.Linear(2 * width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hid(torch.relu(self.inp(x)))))


class TiedLM(nn.Module):
    def __init__(self, width: int, vocab: int = 11) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width, bias=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.mix(self.wte(idx))))


# Base width 8 -> width 32: r = 4 for every growing dimension.
# (lr multiplier, wd multiplier at the family's default exponent) per parameter, by hand:
#   inp.weight (32,10)/(8,10): fan-out grows only (vector-like)
#   hid.weight (64,32)/(16,8): matrix-like, r_in = r_out = 4
#   head.weight (3,64)/(3,16): readout, forward multiplier 1/4
#   biases of inp/hid grow (r_out = 4); head.bias (3,) does not.
EXPECTED = {
    "adam": {"inp.weight": 1.0, "hid.weight": 0.25, "head.weight": 1.0,
             "inp.bias": 1.0, "hid.bias": 1.0, "head.bias": 1.0},
    # SGD: r_out / r_in / forward_mult^2
    "sgd": {"inp.weight": 4.0, "hid.weight": 1.0, "head.weight": 4.0,
            "inp.bias": 4.0, "hid.bias": 4.0, "head.bias": 1.0},
    # spectral (Muon, "original" scale sqrt(max(1, rows/cols))):
    #   inp: sqrt(4 / 1) * s(8,10)/s(32,10) = 2 * 1 / sqrt(3.2);  hid: sqrt(4/4) * sqrt(2)/sqrt(2) = 1
    #   head: sqrt(1/4) * 1 / (1/4) = 2
    "spectral": {"inp.weight": 2 / math.sqrt(3.2), "hid.weight": 1.0, "head.weight": 2.0,
                 "inp.bias": 1.0, "hid.bias": 1.0, "head.bias": 1.0},
}


@pytest.mark.parametrize("family", ["adam", "sgd", "spectral"])
def test_lr_multipliers_match_hand_computed(family):
    plan = mup_plan(MLP(32), MLP(8))
    got = {row["name"]: row["lr_mult"] for row in plan.rows(family)}
    assert got == pytest.approx(EXPECTED[family], rel=1e-12)


def test_plan_ratios_init_and_weight_decay_multipliers():
    plan = mup_plan(MLP(32), MLP(8))
    rows = {row["name"]: row for row in plan.rows("adam")}
    assert rows["hid.weight"]["kind"] == "matrix-like"
    assert rows["inp.weight"]["kind"] == "vector-like" and rows["head.bias"]["kind"] == "scalar-like"
    # init std: hidden r^-1/2, readout weight 1 (its 1/r sits in the forward multiplier), input 1
    assert rows["hid.weight"]["init_std_mult"] == pytest.approx(0.5)
    assert rows["head.weight"]["init_std_mult"] == pytest.approx(1.0)
    assert rows["inp.weight"]["init_std_mult"] == pytest.approx(1.0)
    assert rows["head.weight"]["forward_mult"] == pytest.approx(0.25)
    assert plan.output_mult == pytest.approx(0.25) and plan.readout_modules == {"head": 0.25}
    # weight decay: sqrt(4) = 2 on the hidden matrix (Fan et al.); exponent 1 = mup's rule; others 1
    assert rows["hid.weight"]["wd_mult"] == pytest.approx(2.0)
    assert all(r["wd_mult"] == 1.0 for n, r in rows.items() if n != "hid.weight")
    assert {r["name"]: r["wd_mult"] for r in plan.rows("adam", wd_exponent=1.0)}["hid.weight"] == pytest.approx(4.0)
    assert {r["name"]: r["wd_mult"] for r in plan.rows("sgd")}["hid.weight"] == 1.0  # default exponent 0 off Adam


def test_readout_weights_mode_puts_one_over_width_into_init_and_lr():
    plan = mup_plan(MLP(32), MLP(8), readout="weights")
    head = {r["name"]: r for r in plan.rows("adam")}["head.weight"]
    assert head["init_std_mult"] == pytest.approx(0.25) and head["lr_mult"] == pytest.approx(0.25)
    assert {r["name"]: r for r in plan.rows("sgd")}["head.weight"]["lr_mult"] == pytest.approx(0.25)
    assert plan.readout_modules == {}


def test_int_base_and_shape_mapping_agree_with_base_model():
    model = MLP(32)
    from_model = mup_plan(model, MLP(8)).rows("adam")
    assert mup_plan(model, 8, width=32).rows("adam") == from_model
    with torch.device("meta"):
        shapes = base_shapes(MLP(8))
    assert mup_plan(model, shapes).rows("adam") == from_model


def test_base_width_equals_width_gives_all_ones():
    plan = mup_plan(MLP(16), MLP(16))
    for family in ("adam", "sgd", "spectral"):
        for row in plan.rows(family, wd_exponent=0.5):
            assert (row["lr_mult"], row["wd_mult"], row["init_std_mult"]) == (1.0, 1.0, 1.0)


def test_adamw_groups_carry_scaled_lr_and_weight_decay():
    model = MLP(32)
    groups = mup_param_groups(model, MLP(8), "adamw", lr=1e-2, weight_decay=0.1)
    by_name = {(n, key): g[key] for g in groups for n in g["names"] for key in ("lr", "weight_decay")}
    expected = {
        "inp.weight": (1e-2, 0.1), "hid.weight": (2.5e-3, 0.2), "head.weight": (1e-2, 0.1),
        "inp.bias": (1e-2, 0.0), "hid.bias": (1e-2, 0.0), "head.bias": (1e-2, 0.0),  # no decay on vectors
    }
    assert by_name == pytest.approx({(n, key): v for n, (lr, wd) in expected.items()
                                     for key, v in (("lr", lr), ("weight_decay", wd))})
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups)  # any torch optimizer takes them
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # a schedule scales every group: ratios kept
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([1.25e-3, 5e-3, 5e-3])


def test_vector_like_weight_decay_override():
    groups = mup_param_groups(MLP(32), MLP(8), "adamw", lr=1e-2, weight_decay=0.1, vector_like_weight_decay=0.0)
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert wd["inp.weight"] == 0.1 and wd["hid.weight"] == pytest.approx(0.2) and wd["head.weight"] == 0.0


def test_muon_groups_keep_matrix_flags_and_scale_conventions():
    model = MLP(32)
    groups = mup_param_groups(model, 8, "muon", lr=0.02, width=32, adamw_lr=3e-3)
    lr = {n: (g["lr"], g["matrix"]) for g in groups for n in g["names"]}
    assert lr["hid.weight"] == (pytest.approx(0.02), True)
    assert lr["inp.weight"] == (pytest.approx(0.02 * 2 / math.sqrt(3.2)), True)
    assert lr["head.weight"] == (pytest.approx(3e-3), False)  # AdamW rule: vector-like under the multiplier
    # match_rms_adamw scales the update by 0.2 sqrt(max(rows, cols)): 0.2*8 vs 0.2*4 at the base -> lr x 1/2
    opt = create_mup_optimizer("muon", model, 8, width=32, lr=0.02, scale="match_rms_adamw")
    hidden = next(g for g in opt.param_groups if "hid.weight" in g["names"])
    assert hidden["lr"] == pytest.approx(0.01)


def test_create_mup_optimizer_at_base_width_matches_create_optimizer():
    torch.manual_seed(0)
    model = MLP(16)
    for name, hp in [("adamw", dict(lr=3e-3, weight_decay=0.1)), ("muon", dict(lr=0.02, adamw_lr=1e-3))]:
        plain = create_optimizer(name, model, **hp)
        mup = create_mup_optimizer(name, model, MLP(16), **hp)
        settings = lambda opt: {n: (g["lr"], g.get("weight_decay"), g.get("matrix"))  # noqa: E731
                                for g in opt.param_groups for n in g["names"]}
        assert settings(mup) == settings(plain)
        assert type(mup) is type(plain)


def test_optimizer_family_mapping():
    assert [optimizer_family(n) for n in ("adamw", "lion", "sgd", "muon", "spectral")] == \
        ["adam", "adam", "sgd", "spectral", "spectral"]


def test_apply_mup_rescales_init_and_scales_the_readout_input():
    torch.manual_seed(0)
    base, model = MLP(8), MLP(32)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_mup(model, base)
    # measured base stds: hidden gets base std / 2, readout and input layer get the base std
    def std(p: torch.Tensor) -> float:
        return float(p.detach().std())

    assert std(model.hid.weight) == pytest.approx(std(base.hid.weight) * 0.5, rel=1e-5)
    assert std(model.head.weight) == pytest.approx(std(base.head.weight), rel=1e-5)
    assert std(model.inp.weight) == pytest.approx(std(base.inp.weight), rel=1e-5)
    assert torch.equal(model.hid.bias, reference["hid.bias"])  # vectors untouched
    x = torch.randn(5, 10)
    hidden = torch.relu(model.hid(torch.relu(model.inp(x))))
    expected = nn.functional.linear(hidden * 0.25, model.head.weight, model.head.bias)  # bias unscaled
    assert torch.allclose(model(x), expected)
    with pytest.raises(ValueError, match="already applied"):
        apply_mup(model, base)


def test_apply_mup_init_schemes_without_a_base_model():
    torch.manual_seed(0)
    model = MLP(32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_mup(model, 8, width=32, init_scheme="fan_in", output_multiplier=False)
    assert torch.allclose(model.hid.weight, before["hid.weight"])  # torch's init is already fan-in scaled
    assert torch.allclose(model.head.weight, before["head.weight"] * 2.0)  # readout: x sqrt(r) as mup's MuReadout
    model = MLP(32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_mup(model, 8, width=32, init_scheme="constant", zero_readout=True, output_multiplier=False)
    assert torch.allclose(model.hid.weight, before["hid.weight"] * 0.5)
    assert torch.count_nonzero(model.head.weight) == 0


def test_tied_readout_uses_the_embedding_rule_and_a_hook():
    torch.manual_seed(0)
    model = TiedLM(32)
    plan = apply_mup(model, TiedLM(8))
    assert plan.readout_modules == {"lm_head": 0.25}
    rows = {r["name"]: r for r in plan.rows("adam")}
    assert set(rows) == {"wte.weight", "mix.weight"}
    assert rows["wte.weight"]["role"] == "embedding" and rows["wte.weight"]["lr_mult"] == 1.0
    assert rows["mix.weight"]["lr_mult"] == pytest.approx(0.25)
    idx = torch.tensor([[1, 2, 3]])
    h = torch.tanh(model.mix(model.wte(idx)))
    assert torch.allclose(model(idx), 0.25 * h @ model.wte.weight.T, atol=1e-6)
    with pytest.raises(ValueError, match="tied"):
        mup_plan(TiedLM(32), TiedLM(8), readout="weights")


def test_bad_inputs_give_clear_errors():
    model = MLP(32)
    with pytest.raises(ValueError, match=r"width=\.\.\."):
        mup_plan(model, 8)
    with pytest.raises(ValueError, match="base must be"):
        mup_plan(model, 8.5)
    with pytest.raises(ValueError, match="no parameter named 'hid.weight'"):
        mup_plan(model, {"inp.weight": (8, 10)})
    with pytest.raises(ValueError, match="readout must be one of"):
        mup_plan(model, 8, width=32, readout="zero")
    with pytest.raises(ValueError, match="unknown group arguments"):
        mup_param_groups(model, 8, "adamw", width=32, adamw_lr=1e-3)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        create_mup_optimizer("adamw", model, 8, width=32, momentum=0.9)
    with pytest.raises(ValueError, match="unknown optimizer"):
        mup_param_groups(model, 8, "adamx", width=32)
    with pytest.raises(ValueError, match="head_dim must be a positive integer"):
        mup_attention_scale(0, 64)


def test_attention_scale():
    assert mup_attention_scale(64, 64) == pytest.approx(1 / 8)  # 1/sqrt(d) at the base
    assert mup_attention_scale(256, 64) == pytest.approx(8 / 256)  # then ~1/d: mup's 8/d
