"""The report of a small real run, rendered by headless Chromium: a non-blank page, every image a real PNG,
the verdict and the new sections present. Skips (with the reason) where Chromium is not installed, except
in CI (`CI=true`), where `.ci/run` installs it and a missing browser is a failure."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
NO_CHROMIUM = "headless Chromium not found on PATH (apt-get install chromium; see README)"


def _require_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{NO_CHROMIUM}; CI must run this test (.ci/run installs Chromium)")
        pytest.skip(NO_CHROMIUM)
    return CHROMIUM


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    # A private profile and HOME: concurrent test runs must not share Chromium's profile lock. No background
    # networking: on a machine without internet its connection attempts only slow the start.
    env = {**os.environ, "HOME": str(tmp)}
    cmd = [
        _require_chromium(),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=True)


def test_report_renders_in_chromium(evaluated_run: Path, tmp_path: Path) -> None:
    _require_chromium()
    from PIL import Image

    page = evaluated_run / "report.html"
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri(), tmp=tmp_path)
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2400)
    lo, hi = img.getextrema()
    assert hi - lo > 100  # text and tables on a white page, not a blank one
    assert sum(1 for count in img.histogram() if count) > 10  # many grey levels: text, plots, shading

    dom = _chromium("--dump-dom", page.as_uri(), tmp=tmp_path).stdout
    srcs = re.findall(r"<img[^>]*\bsrc=\"([^\"]*)\"", dom)
    assert len(srcs) >= 2  # loss curves and confusion matrices
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1])
        Image.open(io.BytesIO(png)).verify()  # a whole, decodable PNG
    assert 'id="verdict"' in dom and "Targets missed: accuracy" in dom
    for section in ('id="metrics"', 'id="classification"', 'id="forgetting"', 'id="gains-regressions"'):
        assert section in dom
    assert "lower is better" in dom and "McNemar" in dom


def test_eval_cli_exit_code_and_comparison(run_copy: Path, evaluated_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(run_copy)])
    assert res.exit_code == 1, res.output  # the accuracy target fails
    out = tmp_path / "cmp.html"
    res = runner.invoke(app, ["compare", str(evaluated_run), str(run_copy), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    runs_table = page.split("id=comparison")[0]
    assert runs_table.count("<code>toy-") == 2 and "id=comparison" in page and "macro_f1" in page
    assert "id=iterations" in page
    res = runner.invoke(app, ["compare", str(tmp_path)])
    # rich wraps the message at the runner's 80 columns, a long temporary path included.
    assert res.exit_code == 1 and "eval.json" in res.output.replace("\n", "")


def test_highlight_marks_spans() -> None:
    from tunesmith.eval.report import highlight

    text = "Refund <b>£40</b> to Priya Novak."
    spans = [{"kind": "amount", "start": 10, "end": 13}, {"kind": "entity", "start": 21, "end": 32}]
    html = highlight(text, spans)
    assert "&lt;b&gt;" in html and html.count("<mark class=hall") == 2 and ">Priya Novak</mark>" in html
