"""The coordinate check: its table, its plot, flat curves under muP, and the lm command."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optarena.scaling.coord_check import coord_check, plot_coord_check


def _batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)) for _ in range(steps)]


class _MLP(nn.Module):
    """16 -> w -> 2w -> 4, modules ``inp``, ``hid`` and the readout ``head``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp, self.hid, self.head = nn.Linear(16, width), nn.Linear(width, 2 * width), nn.Linear(2 * width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hid(torch.relu(self.inp(x)))))


def _mlp(width: int) -> nn.Module:
    return _MLP(width)


def test_coord_check_table_shape_and_plot(tmp_path):
    result = coord_check(_mlp, [16, 32, 64], _batches(3), steps=3, lr=1e-2, seeds=(0, 1))
    modules = ["inp", "hid", "head", "<model>"]
    assert result.modules == modules and result.widths == [16, 32, 64] and result.steps == [0, 1, 2]
    assert len(result.records) == 3 * 3 * len(modules) * 2
    assert len(result.mean_l1()) == 3 * 3 * len(modules)
    assert set(result.slopes()) == {(m, s) for m in modules for s in range(3)}
    row = result.to_rows()[0]
    assert set(row) == {"parametrization", "width", "step", "module", "l1", "seed"}
    path = plot_coord_check([result], str(tmp_path / "cc.png"))
    assert (tmp_path / "cc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.endswith("cc.png")
    only = coord_check(_mlp, [16, 32], _batches(2), steps=2, include=r"^hid$", parametrization="standard")
    assert only.modules == ["hid"]
    with pytest.raises(ValueError, match="batches"):
        coord_check(_mlp, [16, 32], _batches(1), steps=2)


def test_coord_check_is_flat_under_mup_and_grows_under_standard_adam():
    # Measured (widths 64..512, Adam lr 1e-2, 4 steps): standard: hid slope 0.53 -> 0.77 and output
    # slope 1.0-1.2 after the first updates; muP: |hid slope| <= 0.03 at every step, output -0.16 -> -0.1.
    kwargs = dict(steps=4, optimizer="adamw", lr=1e-2, weight_decay=0.0)
    standard = coord_check(_mlp, [64, 128, 256, 512], _batches(4), parametrization="standard", **kwargs).slopes()
    mup = coord_check(_mlp, [64, 128, 256, 512], _batches(4), parametrization="mup", **kwargs).slopes()
    assert standard[("hid", 3)] > 0.4 and standard[("<model>", 3)] > 0.6
    assert all(abs(mup[("hid", s)]) < 0.15 for s in range(4))
    assert abs(mup[("<model>", 3)]) < 0.3


def test_lm_coord_check_runs():
    from optarena.commands.coord_check import lm_coord_check

    result = lm_coord_check([16, 32], parametrization="mup", steps=2, n_layer=1, include=r"^(blocks\.0|<model>)$")
    assert result.modules == ["blocks.0", "<model>"] and result.widths == [16, 32] and len(result.records) == 8
    with pytest.raises(ValueError, match="multiples of head_dim"):
        lm_coord_check([24, 32], parametrization="mup")


def test_coord_check_cli_writes_png_and_csv(tmp_path):
    from typer.testing import CliRunner

    from optarena.cli import app

    png, table = tmp_path / "cc.png", tmp_path / "cc.csv"
    result = CliRunner().invoke(app, ["coord-check", "--widths", "16,32", "--steps", "2", "--n-layer", "1",
                                      "--include", r"^(blocks\.0|<model>)$", "--out", str(png), "--csv", str(table)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG" and "standard" in result.output and "mup" in result.output
    assert len(table.read_text().strip().splitlines()) == 1 + 2 * 2 * 2 * 2  # header + param x width x step x module
    bad = CliRunner().invoke(app, ["coord-check", "--widths", "16", "--out", str(png)])
    assert bad.exit_code == 2 and "at least two widths" in bad.output
