"""The HTML report renders in a real browser: headless Chromium loads it and every table and image shows.

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``). Without it the test
skips, except where ``CI`` or ``OPTARENA_REQUIRE_CHROMIUM`` is set: there it fails.
"""

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from optarena.arena.report import write_report
from optarena.arena.runner import ArenaConfig, run_arena
from optarena.arena.store import CurvePoint, ResultStore

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Appended to a copy of the page: after load (images decoded or failed), write what rendered into the DOM.
CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({src: i.getAttribute("src"), alt: i.alt, complete: i.complete,
                                                 width: i.naturalWidth, shown: i.getBoundingClientRect().width}));
  const tables = [...document.querySelectorAll("table")].map(t => ({rows: t.rows.length,
      cells: t.querySelectorAll("td").length, height: t.getBoundingClientRect().height}));
  const pre = document.createElement("pre");
  pre.id = "render-check";
  pre.textContent = JSON.stringify({images, tables});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI") or os.environ.get("OPTARENA_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (CI / OPTARENA_REQUIRE_CHROMIUM set): apt-get install -y chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); it renders the HTML report")
    return path


def render(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` in headless Chromium and return what rendered: per image and per table."""
    browser = _chromium()
    probe = page.with_name("_render_check.html")  # beside the page, so plots/ resolves the same way
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    profile = tmp_path / f"chromium-{page.parent.name}"
    try:
        done = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                               "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium exited {done.returncode} without rendering the page; stderr:\n{done.stderr[-3000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def check_page(out: Path, tmp_path: Path) -> dict:
    page = out / "report.html"
    source = page.read_text(encoding="utf-8")
    assert "http://" not in source and "https://" not in source and "<script" not in source  # static, offline
    seen = render(page, tmp_path)
    assert len(seen["tables"]) == source.count("<table>") > 0
    for table in seen["tables"]:
        assert table["rows"] >= 2 and table["cells"] > 0 and table["height"] > 0, table
    pngs = sorted(f"plots/{p.name}" for p in (out / "plots").glob("*.png"))
    assert sorted(i["src"] for i in seen["images"]) == pngs  # every plot is on the page, once
    for image in seen["images"]:
        assert image["complete"] and image["width"] > 0 and image["shown"] > 0 and image["alt"], image
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert sorted(re.findall(r"\]\((plots/[^)]+\.png)\)", markdown)) == pngs  # the markdown shows the same
    return seen


@pytest.fixture(scope="module")
def quadratic_report(tmp_path_factory):
    """A small real arena: quadratic, three optimizers, three budgets (10/20/40 steps), 2 trials x 2 seeds."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("quadratic")
    settings = dict(workloads=["quadratic"], optimizers=["adamw", "sgd", "lion"], budget="smoke", trials=2,
                    seeds=2, out=out)
    config = ArenaConfig(**settings, steps=10, horizons=[1, 2, 4])
    store, study, _ = run_arena(config)
    study_config = config.study_settings()
    write_report(store, study, out, study_config)
    return out


def test_quadratic_arena_report_renders_every_table_and_image(quadratic_report, tmp_path):
    seen = check_page(quadratic_report, tmp_path)
    names = {Path(i["src"]).name for i in seen["images"]}
    assert {"profiles.png", "budget_quadratic_default.png"} <= names
    assert {f"{kind}_quadratic_default_{steps}.png" for kind in ("curves", "lr") for steps in (10, 20, 40)} <= names
    page = (quadratic_report / "report.html").read_text(encoding="utf-8")
    for text in ("Scores across problems", "Data-equivalent speedup vs adamw", "benchmark score B",
                 "2 trials", "2 seeds", "tuning budget", "LR sensitivity", "approximately best"):
        assert text in page, text


def _synthetic_study(out: Path) -> None:
    """lm at two scales and three budgets, losses on a known law: muon = adamw with 1.4x the data."""
    store = ResultStore(f"sqlite:///{out / 'results.db'}")
    law = {"tiny": (0.42, 0.5, 3.11), "small": (0.40, 0.5, 2.90)}
    gains = {"adamw": 1.0, "muon": 1.4, "sgd": 0.6}
    for scale, (alpha, exponent, beta) in law.items():
        for d in (1, 2, 4):
            steps = 100 * d
            for optimizer, gain in gains.items():
                final = alpha * (gain * d) ** -exponent + beta
                trials = [(1e-3, final + 0.05), (3e-3, final), (1e-2, final + 0.002), (3e-2, None)]
                for trial, (lr, loss) in enumerate(trials):
                    _add(store, scale, optimizer, steps, lr, loss, seed=0, role="trial", trial=trial)
                _add(store, scale, optimizer, steps, 3e-3, final + 0.004, seed=1, role="seed", trial=None)
    store.save_study("synthetic", {"trials": 4, "seeds": 2, "protocol": "random", "schedule": "cosine",
                                   "baseline": "adamw", "horizons": [1, 2, 4]})
    write_report(store, "synthetic", out, dict(store.studies())["synthetic"])


def _add(store, scale, optimizer, steps, lr, final, *, seed, role, trial):
    config = {"workload": "lm", "scale": scale, "optimizer": optimizer, "seed": seed, "steps": steps,
              "hparams": {"lr": lr}}
    run_id = store.start_run(f"{scale}/{optimizer}/{steps}/{lr}/{seed}", config=config)
    end = final if final is not None else 9.0
    decay = [(math.exp(-4 * i / 8) - math.exp(-4)) / (1 - math.exp(-4)) for i in range(9)]  # 1 -> 0
    points = [CurvePoint(round(steps * i / 8), 0, None, end + (5.5 - end) * f, None, None, None)
              for i, f in enumerate(decay)]
    store.add_curve(run_id, points if final is not None else points[:3])
    store.finish_run(run_id, status="ok" if final is not None else "diverged", final_eval_loss=final)
    store.link("synthetic", run_id, role=role, trial=trial)


def test_report_with_several_scales_and_budgets_renders(tmp_path):
    out = tmp_path / "synthetic"
    out.mkdir()
    _synthetic_study(out)
    seen = check_page(out, tmp_path)
    names = {Path(i["src"]).name for i in seen["images"]}
    assert {"profiles.png", "budget_lm_tiny.png", "budget_lm_small.png", "scale_lm.png",
            "curves_lm_small_400.png", "lr_lm_tiny_100.png"} <= names
    assert len(names) == 4 + 2 * 2 * 3
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "B = 0.5" in markdown  # the fit recovers the law's exponent
    assert markdown.count("→ 1.40x") == 2 * 3  # muon: 1.4x the data at every budget of both scales
