"""Golden numbers: every registered optimizer's trajectory and one small arena's ranking table.

The fixtures in ``tests/golden/`` were recorded from the code as it stood before the module layout
was reorganised; they pin behaviour across refactors. A change that is *meant* to alter the numbers
regenerates them with ``python tests/test_golden.py`` and says why in its commit message.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from optarena.optim import create_optimizer, list_optimizers

GOLDEN = Path(__file__).parent / "golden"
STEPS = 6
# Optimizers with a fused=True path, pinned in float32 on that path as well (C kernels on CPU).
FUSED = ["lion", "adan", "adamp", "sgdp", "sophia_g", "sophia_h", "am_sgd", "am_adamw", "classp", "scale",
         "schedule_free_adamw"]


class _Net(nn.Module):
    """An embedding, two hidden matrices (one with an odd row count), a norm gain, biases and a readout."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 7)
        self.fc3 = nn.Linear(7, 8, bias=False)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 16)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))
        return self.head(self.norm(x))


def _trajectory(name: str, dtype: torch.dtype, **kwargs) -> list[dict[str, list[float]]]:
    """Per step: the loss, and per parameter its sum, sum of squares and first three elements."""
    torch.manual_seed(0)
    model = _Net().to(dtype)
    tokens = torch.randint(0, 16, (4, 10), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 16, (4, 10), generator=torch.Generator().manual_seed(2))
    optimizer = create_optimizer(name, model, lr=3e-3, **kwargs)
    torch.manual_seed(3)  # optimizers that sample (SophiaH's probes, Drop-Muon's layers) draw from here
    out = []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        point = {"loss": [loss.item()]}
        for pname, p in model.named_parameters():
            flat = p.detach().double().flatten()
            point[pname] = [float(flat.sum()), float((flat * flat).sum()), *map(float, flat[:3])]
        out.append(point)
    return out


def _compare(actual, expected, rel: float, where: str) -> None:
    assert len(actual) == len(expected), where
    for step, (a, e) in enumerate(zip(actual, expected)):
        assert a.keys() == e.keys(), where
        for key in e:
            for x, y in zip(a[key], e[key]):
                assert math.isclose(x, y, rel_tol=rel, abs_tol=rel), (
                    f"{where}: step {step + 1}, {key}: {x!r} != golden {y!r}")


def _load(name: str):
    return json.loads((GOLDEN / name).read_text())


def test_every_registered_optimizer_has_a_golden_trajectory():
    assert set(_load("trajectories_fp64.json")) == set(list_optimizers())


@pytest.mark.parametrize("name", list_optimizers())
def test_fp64_trajectory_matches_golden(name):
    _compare(_trajectory(name, torch.float64), _load("trajectories_fp64.json")[name], 1e-9, name)


@pytest.mark.parametrize("name", FUSED)
def test_fused_fp32_trajectory_matches_golden(name):
    expected = _load("trajectories_fused_fp32.json")[name]
    _compare(_trajectory(name, torch.float32, fused=True), expected, 2e-5, f"{name} (fused, fp32)")


# The deterministic columns of the ranking table (timings are left out).
TABLE_COLUMNS = ("optimizer", "final eval loss", "seeds", "steps to adamw loss", "speedup vs adamw",
                 "LR sensitivity", "trials ok/div/fail", "best hyperparameters")


def _ranking_table(report: str) -> list[dict[str, str]]:
    """The rows of the report's ranking table (the one with a 'final eval loss' column)."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and "final eval loss" in line)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append({c: value for c, value in zip(header, cells) if c in TABLE_COLUMNS})
    return rows


def _arena_table(out: Path) -> list[dict[str, str]]:
    from typer.testing import CliRunner

    from optarena.cli import app

    args = ["arena", "--workloads", "lm", "--optimizers", "adamw,muon,lion", "--trials", "3", "--seeds", "2",
            "--steps", "24", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return _ranking_table((out / "report.md").read_text())


def test_small_arena_table_matches_golden(tmp_path):
    assert _arena_table(tmp_path / "out") == _load("arena_table.json")


def _regenerate() -> None:
    GOLDEN.mkdir(exist_ok=True)
    fixtures = {
        "trajectories_fp64.json": {n: _trajectory(n, torch.float64) for n in list_optimizers()},
        "trajectories_fused_fp32.json": {n: _trajectory(n, torch.float32, fused=True) for n in FUSED},
    }
    with tempfile.TemporaryDirectory() as tmp:
        fixtures["arena_table.json"] = _arena_table(Path(tmp) / "out")
    for name, value in fixtures.items():
        (GOLDEN / name).write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(_regenerate())
