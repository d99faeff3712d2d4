"""The control panel end to end in a real headless Chromium (Debian's, driven by Selenium through
Debian's chromedriver; nothing is downloaded): ``raytune-ft dashboard`` starts, owns a local Ray, the
Launch page submits the tiny-model training job through the Jobs API, and the Monitor page draws its
loss curve from the run's metrics as they are written. The screenshot is kept in ``artifacts/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parents[2] / "artifacts"
BROWSER_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
    "--window-size=1400,1600",
)  # fmt: skip


@pytest.fixture()
def panel(tmp_path: Path, tiny_model_dir: Path, free_port: Any) -> Iterator[tuple[str, Path]]:
    """``raytune-ft dashboard`` in a fresh folder holding the tiny training config; stopped with every
    process it started (its Ray included), found by descent from its own PID."""
    (tmp_path / "tiny.yaml").write_text(
        f"model: {{source: {tiny_model_dir}}}\n"
        "data: {dataset: identity, cutoff_len: 128}\n"
        "adapter: {rank: 4}\n"
        "train: {run_name: panel, storage_path: ./saves, max_steps: 8, save_steps: 4, logging_steps: 1,"
        " per_device_batch_size: 2}\n"
        "scaling: {num_workers: 1}\n"
    )
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "panel.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "raytune_ft.cli", "dashboard", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/_stcore/health", proc, tmp_path / "panel.log")
        yield url, tmp_path
    finally:
        _stop_tree(proc.pid)
        log.close()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the panel did not answer at {url}: {log.read_text()[-3000:]}")


def _stop_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(tree, timeout=20)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text_input(driver: Any, label: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text)


def _click(driver: Any, xpath: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, xpath).click()


def _wait_text(driver: Any, text: str, timeout: float) -> str:
    """The page's text once ``text`` is in it."""

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.execute_script("return document.body.innerText")  # no handle to go stale on a redraw
        if text in body:
            return str(body)
        time.sleep(1)
    raise AssertionError(f"{text!r} never appeared; the page shows:\n{body[-3000:]}")


def test_panel_launches_training_and_draws_its_loss(panel: tuple[str, Path], browser: Any) -> None:
    import re

    url, folder = panel
    browser.get(f"{url}/launch")
    _wait_text(browser, "Jobs go to", 120)  # the panel's own Ray has started
    _text_input(browser, "Config YAML", "tiny.yaml")
    _click(browser, "//button[.//p[text()='Submit job']]")
    body = _wait_text(browser, "Submitted: ", 60)
    assert "raytune-ft train tiny.yaml" in body
    job_id = re.search(r"Submitted: (\S+)", body).group(1)  # type: ignore[union-attr]

    _click(browser, "//a[contains(@href, 'monitor')]")  # same session: Monitor follows the job's run
    body = _wait_text(browser, "loss: ", 420)
    points = int(re.search(r"loss: (\d+) points", body).group(1))  # type: ignore[union-attr]
    assert points >= 1
    time.sleep(3)  # let the charts finish drawing
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard_monitor.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    # One query in the page itself: Monitor redraws every 2 s, so element handles go stale between calls.
    drawn, ids = browser.execute_script(
        "const charts = [...document.querySelectorAll(\"[data-testid*='Chart']\")];"
        "return [charts.filter(c => c.querySelector('canvas, svg')).length,"
        " [...new Set([...document.querySelectorAll('[data-testid]')].map(e => e.dataset.testid))]];"
    )
    assert drawn >= 1, f"no chart drawn; elements on the page: {sorted(ids)}"
    assert (folder / "saves" / "panel" / "metrics.jsonl").is_file()

    # A fresh session: the job is listed and chosen (the table is a canvas and the Job box an input, both out of
    # innerText's reach, so the logs caption names it), and its logs tail shows the training steps. Each wait
    # names text only the job brings.
    browser.get(f"{url}/launch")
    _wait_text(browser, f"Logs (tail): {job_id}", 120)
    chosen = browser.execute_script("return document.querySelector(\"input[aria-label='Job']\").value")
    assert chosen == job_id
    _wait_text(browser, "step ", 120)
    shutil.copy(folder / "panel.log", ARTIFACTS / "dashboard_panel.log")
