"""muP for the lm workload: the config overrides, the init, the optimizer groups and the trainer's build."""

from __future__ import annotations

import pytest
import torch

from optarena.arena.workloads import get_workload
from optarena.arena.workloads.lm import ByteTransformer, LMConfig
from optarena.arena.workloads.lm_mup import mup_lm_config, mup_lm_init_
from optarena.scaling.mup import create_mup_optimizer


def test_mup_lm_config_and_init():
    overrides = mup_lm_config(64, 256)
    assert overrides == {"d_model": 256, "output_mult": 0.25, "attn_scale": "mup"}
    assert mup_lm_config(64, 256, output_mult=2.0, attn_scale="sqrt")["output_mult"] == pytest.approx(0.5)
    torch.manual_seed(0)
    model = ByteTransformer(LMConfig(n_layer=1, **overrides))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = mup_lm_init_(model, 64)
    after = dict(model.named_parameters())
    for name in ("blocks.0.attn.q.weight", "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"):
        assert torch.allclose(after[name], before[name] * 0.5)  # lm's constant std -> x sqrt(64/256)
    for name in ("wte.weight", "wpe.weight", "lm_head.weight"):
        assert torch.equal(after[name], before[name])  # output_mult carries the readout's 1/width
    groups = create_mup_optimizer("adamw", model, plan, lr=1e-2, weight_decay=0.1).param_groups
    lr = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert lr["blocks.0.attn.k.weight"] == pytest.approx((2.5e-3, 0.2))
    assert lr["lm_head.weight"] == pytest.approx((1e-2, 0.1)) and lr["wte.weight"] == pytest.approx((1e-2, 0.1))
    assert lr["blocks.0.norm1.weight"] == pytest.approx((1e-2, 0.0))
    with pytest.raises(ValueError, match="already applied"):
        mup_lm_init_(model, 64)
    with pytest.raises(ValueError, match="base_width must be a multiple of head_dim"):
        mup_lm_init_(ByteTransformer(LMConfig(n_layer=1, d_model=64)), 40)


def test_mup_lm_init_handles_swiglu_and_tied_embeddings():
    model = ByteTransformer(LMConfig(n_layer=1, mlp="swiglu", tie_embeddings=True, **mup_lm_config(64, 256)))
    plan = mup_lm_init_(model, 64)
    rows = {r["name"]: r for r in plan.rows("adam")}
    assert rows["blocks.0.mlp.proj.weight"]["lr_mult"] == pytest.approx(168 / 680)  # SwiGLU hidden 168 -> 680
    assert plan.readout_modules == {"lm_head": 0.25} and rows["wte.weight"]["lr_mult"] == 1.0


def test_build_mup_uses_the_first_scale_as_base():
    task, plan = get_workload("lm").build_mup("small", seed=0, n_layer=1)
    assert task.model.config.d_model == 128 and task.model.config.output_mult == pytest.approx(0.5)
    assert plan.output_mult == pytest.approx(0.5)  # base 64 (tiny) / width 128; lm applies it as output_mult
    assert plan.params["blocks.0.attn.q.weight"].fan_in_mult == 2.0
    _, wider = get_workload("lm").build_mup("base", seed=0, base_width=128, n_layer=1)
    assert wider.params["blocks.0.attn.q.weight"].fan_in_mult == 2.0
