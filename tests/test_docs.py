"""The code in docs/architecture.md runs as written (each block in a fresh interpreter, so the
example registrations never reach the registries the other tests see)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ARCHITECTURE = Path(__file__).parents[1] / "docs" / "architecture.md"
BLOCKS = re.findall(r"```python\n(.*?)```", ARCHITECTURE.read_text(), flags=re.S)


def test_the_architecture_page_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_architecture_example_runs(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
