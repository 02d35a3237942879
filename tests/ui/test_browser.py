"""The UI driven in a real browser: Debian's Chromium, headless, through Selenium and Debian's
chromium-driver. One walk through what a user does: upload a data file, see a bad config refused with the
CLI's messages, start the run, watch its curves grow without a reload, open its report, ask base and tuned
side by side, submit a blind review, promote the run, compare.

Skips (with the reason) where Chromium, chromedriver or Selenium is missing, except in CI (`CI=true`),
where `.ci/run` installs them and a missing one is a failure. With TUNESMITH_UI_SCREENSHOTS=FOLDER set, it
saves a 1280x800 screenshot of every page there (how docs/ui/*.png are made)."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import free_port, make_label_rows, write_jsonl
from tunesmith.registry import aliases
from tunesmith.serve.app import Settings
from tunesmith.serve.feedback import FeedbackStore
from tunesmith.ui.app import UIConfig, create_app

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
NEEDS = (
    "headless Chromium, chromium-driver and selenium (apt-get install chromium chromium-driver; make setup)"
)
WIDTH, HEIGHT = 1280, 800


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if CHROMIUM is None:
        return "chromium is not on PATH"
    if CHROMEDRIVER is None:
        return "chromedriver is not on PATH"
    return None


def _require_browser() -> None:
    why = _missing()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}; CI must run this test (.ci/run installs {NEEDS})")
    pytest.skip(f"{why}: needs {NEEDS}")


class UIServer:
    """The UI app under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, runs_dir: Path, api_keys: list[str] | None = None):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = Settings(serve_dir=runs_dir / "serve", api_keys=api_keys or [])
        app = create_app(UIConfig(runs_dir, settings))
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the UI server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={tmp_path / 'profile'}",  # concurrent runs must not share a profile lock
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read by _console_errors
    # Debian's driver, named: Selenium Manager would try to download one (no network in CI or here).
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    # The page's own viewport at 1280x800 (a window of that size loses some height to the browser's frame).
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: Callable[[], Any], timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := what():
                return result
        except Exception:  # an element not there yet, or replaced while read: try again
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")


def _console_errors(driver: Any) -> list[str]:
    """The page console's errors since the last call: a script that failed, an asset or a request the
    Content-Security-Policy blocked. The browser's own favicon request is not the UI's."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]
    ]


class Shots:
    """Screenshots of every page at 1280x800 when TUNESMITH_UI_SCREENSHOTS names a folder."""

    def __init__(self, driver: Any):
        self.driver = driver
        folder = os.environ.get("TUNESMITH_UI_SCREENSHOTS")
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str, show: str | None = None) -> None:
        """`show`: the id of an element to scroll into the middle of the shot (else the top of the page)."""
        if self.folder is None:
            return
        if show:
            self.driver.execute_script(
                "document.getElementById(arguments[0]).scrollIntoView({block: 'center'})", show
            )
        else:
            self.driver.execute_script("window.scrollTo(0, 0)")
        path = self.folder / f"{name}.png"
        self.driver.save_screenshot(str(path))
        from PIL import Image

        with Image.open(path) as img:
            assert img.size == (WIDTH, HEIGHT)


def _config_for_a_visible_curve(text: str) -> str:
    """The config init wrote, with enough optimizer steps that training outlasts a few polls of the page
    (the tiny model takes milliseconds a step), and a short eval."""
    cfg = yaml.safe_load(text)
    cfg["train"].update({"max_steps": 150, "batch_size": 4, "eval_every": 50, "lr": 5e-3})
    cfg["eval"].update({"limit": 8, "batch_size": 8})
    return yaml.safe_dump(cfg, sort_keys=False)


def _set_editor(driver: Any, text: str) -> None:
    """Replace the editor's text as a paste would, then let htmx see a keyup."""
    driver.execute_script(
        "const t = document.getElementById('config'); t.value = arguments[0];"
        "t.dispatchEvent(new KeyboardEvent('keyup', {bubbles: true}));",
        text,
    )


def test_a_user_walks_through_the_ui(browser: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    runs = tmp_path / "runs"
    data = write_jsonl(tmp_path / "tickets.jsonl", make_label_rows(80))
    server = UIServer(runs)
    shots = Shots(browser)
    find = browser.find_element
    try:
        # Start a run: upload the file; `tunesmith init` writes the config.
        browser.get(server.url + "/start")
        shots.take("start")
        find(By.ID, "datafile").send_keys(str(data))
        model = find(By.ID, "upload-model")
        model.clear()
        model.send_keys(str(tiny_model_dir))
        find(By.ID, "upload-button").click()
        _wait(lambda: find(By.ID, "config-ok"), 60, "the written config, valid")
        draft_url = browser.current_url
        assert "/start/" in draft_url

        # A bad key typed in the editor: the CLI's message as you type, and Run starts nothing.
        editor = find(By.ID, "config")
        editor.send_keys(Keys.CONTROL, Keys.END)
        editor.send_keys("\nbogus_key: 1\n")
        problems = _wait(lambda: find(By.ID, "config-problems"), 30, "the config's problems")
        assert "bogus_key: unknown key" in problems.text
        shots.take("start-config-error", show="check")
        find(By.ID, "run-button").click()
        time.sleep(1.0)
        assert not browser.find_elements(By.ID, "job-log") and not list(runs.glob("*/manifest.json"))

        # Fixed, planned, started.
        _set_editor(
            browser, _config_for_a_visible_curve(editor.get_attribute("value").replace("bogus_key: 1", ""))
        )
        _wait(lambda: find(By.ID, "config-ok"), 30, "the fixed config, valid")
        find(By.ID, "plan-button").click()
        plan = _wait(lambda: find(By.ID, "plan-text"), 120, "the plan").text
        assert "peak" in plan and "time / epoch" in plan
        find(By.ID, "run-button").click()
        run_link = _wait(lambda: find(By.ID, "job-run"), 180, "the run directory of `tunesmith run`")
        run_id = run_link.text
        shots.take("start-running", show="job-area")

        # Its page, opened while it trains: the curve grows without a reload.
        run_link.click()
        _wait(lambda: find(By.ID, "curves"), 10, "the run page")
        browser.execute_script("window.__same_page = true")
        first = int(find(By.ID, "curves").get_attribute("data-points"))
        seen = {first}

        def grown() -> bool:
            seen.add(int(find(By.ID, "curves").get_attribute("data-points")))
            return "training over" in find(By.ID, "curve-status").text

        _wait(grown, 240, "training to end on the run page")
        last = int(find(By.ID, "curves").get_attribute("data-points"))  # read after the status said so
        assert last == 150 and len(seen - {last}) >= 1, (
            seen
        )  # it was drawn while it grew, not only at the end
        assert browser.execute_script("return window.__same_page === true")  # no reload happened
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-loss canvas")) == 1

        # The report, once evaluation is done.
        def finished() -> bool:
            browser.refresh()
            # eval is marked done just before the report is written: wait for both.
            return find(By.ID, "run-status").text == "finished" and browser.find_elements(
                By.ID, "open-report"
            )

        _wait(finished, 240, "the run to finish (evaluation and report)")
        shots.take("run")
        find(By.ID, "open-report").click()
        verdict = _wait(lambda: find(By.ID, "verdict"), 10, "the report's verdict")
        assert verdict.text
        shots.take("report")

        # Playground: base and tuned, side by side, streamed.
        browser.get(f"{server.url}/playground?run={run_id}")
        find(By.ID, "prompt").send_keys("my refund is broken since monday")
        find(By.ID, "send").click()
        columns = _wait(
            lambda: (
                (cols := browser.find_elements(By.CSS_SELECTOR, "#columns .column"))
                and all(c.get_attribute("data-done") == "1" for c in cols)
                and cols
            ),
            120,
            "both answers",
        )
        by_model = {c.get_attribute("data-model"): c.find_element(By.TAG_NAME, "pre") for c in columns}
        assert set(by_model) == {"base", run_id}
        assert all(not (pre.get_attribute("class") or "").count("problem") for pre in by_model.values())
        assert by_model[run_id].text.strip()
        shots.take("playground")

        # Review: score two rows blind, correct one, save.
        browser.get(f"{server.url}/runs/{run_id}/review")
        rows = browser.find_elements(By.CSS_SELECTOR, "article.review-row")
        assert len(rows) >= 2
        for row, (a, b) in zip(rows[:2], (("4", "2"), ("3", "3")), strict=True):
            Select(row.find_element(By.CSS_SELECTOR, "select[name^=score_A]")).select_by_visible_text(a)
            Select(row.find_element(By.CSS_SELECTOR, "select[name^=score_B]")).select_by_visible_text(b)
        rows[0].find_element(By.CSS_SELECTOR, "textarea[name^=correction]").send_keys("billing")
        shots.take("review")
        find(By.ID, "save-review").click()
        saved = _wait(lambda: find(By.ID, "review-saved"), 30, "the saved review")
        assert "Saved 2 pairs" in saved.text and "1 correction(s) stored" in saved.text
        assert (runs / run_id / "review" / "scores.json").is_file()
        assert [r["correction"] for r in FeedbackStore(runs / "serve").rows()] == ["billing"]

        # Promote it from the runs page.
        browser.get(server.url + "/")
        row = find(By.ID, f"run-{run_id}")
        if row.find_elements(By.NAME, "force"):  # a run that missed a target needs the force box, as the CLI
            row.find_element(By.NAME, "force").click()
        row.find_element(By.CSS_SELECTOR, "form.promote button").click()
        _wait(
            lambda: "production" in find(By.ID, f"run-{run_id}").find_element(By.CLASS_NAME, "aliases").text,
            30,
            "the alias",
        )
        assert aliases(runs) == {"production": run_id}
        shots.take("runs")

        # Compare (the one run, as `tunesmith compare` would show it).
        find(By.CSS_SELECTOR, f'input[name=run][value="{run_id}"]').click()
        find(By.ID, "compare-selected").click()
        _wait(lambda: find(By.ID, "comparison"), 30, "the comparison")
        browser.switch_to.frame(find(By.ID, "comparison"))
        assert run_id in browser.page_source
        browser.switch_to.default_content()
        shots.take("compare")
        assert _console_errors(browser) == []

        # The `tunesmith run` process the Start page began has ended (its page says so, and it is reaped).
        browser.get(draft_url)
        _wait(lambda: find(By.ID, "job-state").text == "finished", 60, "the run's process to end")
    finally:
        server.stop()


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMEDRIVER", None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromedriver is not on PATH; CI must run this test"):
        _require_browser()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="chromedriver is not on PATH"):
        _require_browser()


def test_signing_in_with_the_key(browser: Any, tmp_path: Path) -> None:
    """With a key set, the browser gets the sign-in form (401); the key sets the cookie, then pages open."""
    from selenium.webdriver.common.by import By

    server = UIServer(tmp_path / "runs", api_keys=["s3cret phrase"])
    find = browser.find_element
    try:
        browser.get(server.url + "/compare")
        assert find(By.ID, "login") and "key" in browser.title
        find(By.ID, "key").send_keys("wrong")
        find(By.CSS_SELECTOR, "#login button").click()
        _wait(lambda: "not accepted" in find(By.ID, "login-error").text, 10, "the refusal")
        # The console sees the 401s (so the walk-through's empty console is a real check).
        assert any("status of 401" in m for m in _console_errors(browser))
        Shots(browser).take("login")
        find(By.ID, "key").clear()
        find(By.ID, "key").send_keys("s3cret phrase")
        find(By.CSS_SELECTOR, "#login button").click()
        _wait(lambda: browser.find_elements(By.ID, "compare-pick"), 10, "the page asked for, signed in")
        assert not browser.execute_script("return document.cookie")  # HttpOnly: no script can read the key
    finally:
        server.stop()
