"""The registry, the factory and the parameter partition on a real transformer."""

import pytest
import torch

from optarena.arena.workloads import get_workload
from optarena.optim import (
    Categorical, FloatRange, Muon, OptimizerSpec, Paper, create_optimizer, get_spec, list_optimizers,
    partition_parameters,
)

FOUNDATION = ("adamw", "sgd", "muon", "lion")


def test_foundation_optimizers_are_registered_with_metadata():
    names = list_optimizers()
    assert set(FOUNDATION) <= set(names) and names == sorted(names)
    assert get_spec("muon").cls is Muon and get_spec("adamw").cls is torch.optim.AdamW
    assert (get_spec("adamw").state_bytes, get_spec("muon").state_bytes, get_spec("lion").state_bytes) == (8, 4, 4)
    assert get_spec("lion").paper.arxiv == "2302.06675"


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'\. Did you mean 'adamw'"):
        get_spec("adam")
    with pytest.raises(ValueError, match="unknown optimizer 'muonn'.*'muon'"):
        create_optimizer("muonn", [torch.zeros(2, requires_grad=True)])


def test_unknown_hyperparameters_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"lion: unknown hyperparameters \['momentum'\]; valid: \["):
        create_optimizer("lion", [torch.zeros(2, requires_grad=True)], momentum=0.9)
    with pytest.raises(ValueError, match="apply to the parameter groups built from a model"):
        create_optimizer("muon", [torch.zeros(2, 2, requires_grad=True)], adamw_lr=1e-3)


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="lower-case"):
        OptimizerSpec("Bad", torch.optim.SGD, "elementwise", {"lr": 0.1}, {"lr": FloatRange(1e-3, 1)}, 4, Paper("x"))
    with pytest.raises(ValueError, match="family must be one of"):
        OptimizerSpec("bad", torch.optim.SGD, "magic", {"lr": 0.1}, {"lr": FloatRange(1e-3, 1)}, 4, Paper("x"))
    with pytest.raises(ValueError, match=r"search-space keys \['beta'\] are not in defaults"):
        OptimizerSpec("bad", torch.optim.SGD, "elementwise", {"lr": 0.1},
                      {"lr": FloatRange(1e-3, 1), "beta": Categorical((0.9,))}, 4, Paper("x"))
    with pytest.raises(ValueError, match="log-scaled FloatRange needs low > 0"):
        FloatRange(0.0, 1.0)


def test_partition_of_the_lm_transformer():
    model = get_workload("lm").build("tiny", seed=0).model
    part = partition_parameters(model)
    assert [n for n, _ in part.embedding] == ["wte.weight", "wpe.weight"]
    assert [n for n, _ in part.readout] == ["lm_head.weight"]
    assert all(p.ndim == 1 for _, p in part.vector) and part.vector
    assert all(p.ndim == 2 for _, p in part.hidden) and len(part.hidden) >= 8
    counted = sum(part.summary().values())
    assert counted == sum(p.numel() for p in model.parameters())
    # user overrides by name pattern, first match wins
    moved = partition_parameters(model, roles={r"^wpe\.": "hidden"})
    assert "wpe.weight" in [n for n, _ in moved.hidden]
    with pytest.raises(ValueError, match="role for pattern 'x' must be one of"):
        partition_parameters(model, roles={"x": "bias"})
    with pytest.raises(ValueError, match="only tensors with 2 or more dimensions can be 'hidden'"):
        partition_parameters(model, roles={r"norm": "hidden"})


def test_muon_from_a_model_splits_rules_and_learning_rates():
    model = get_workload("lm").build("tiny", seed=0).model
    optimizer = create_optimizer("muon", model, lr=0.03, adamw_lr=1e-3)
    groups = [(g["matrix"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    assert groups[0] == (True, 0.03, 0.0)
    assert all(matrix is False and lr == 1e-3 for matrix, lr, _ in groups[1:])
    names = [n for g in optimizer.param_groups for n in g["names"]]
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    # elementwise optimizers: no weight decay on vectors
    adamw = create_optimizer("adamw", model, weight_decay=0.1)
    assert sorted(g["weight_decay"] for g in adamw.param_groups) == [0.0, 0.1]


def test_muon_refuses_vectors_in_matrix_groups():
    with pytest.raises(ValueError, match=r"Muon matrix groups take tensors with ndim >= 2, got shape \(3,\)"):
        Muon([torch.zeros(3, requires_grad=True)])
