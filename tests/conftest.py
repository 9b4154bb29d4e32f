"""Test-wide settings: one thread (the machine has two cores shared by parallel work), fixed seeds."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
