"""The dashboard, in a real browser: a micro study reports to a Prefect server, and headless
Chromium finds on the study's flow run page what a researcher looks for there — the run's log
lines; one sub-run per cell, named by its coordinates, Completed; the results table and the
summary artifacts; the curves plot drawn (the image decoded, not a broken icon), in the V1 UI
(where run links lead) and the V2 UI (where the front page leads).

Screenshots of each page go to ``$INHERITLAB_SCREENSHOTS`` (default: the test's tmp dir) for a
person to look at. Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package (``.ci/run`` installs them); skips, saying which is missing, without them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from procs import free_port, stop_process_group  # tests/procs.py

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_START_TIMEOUT_S = 180
STUDY_TIMEOUT_S = 600
# The dashboard is a single-page app: every element is drawn by script after the API answers.
PAGE_TIMEOUT_S = 60

# The smallest study that still publishes every artifact: two cells (clean and one noisy level)
# at one scale; the curves figure is drawn for any number of scales (one scale: points, no fit).
SPEC = {
    "name": "browser",
    "modality": "clip",
    "data": {"world": {"num_classes": 10, "image_size": 32, "train_size": 256, "test_id_size": 64,
                       "test_ood_size": 64, "samples_per_shard": 64}},
    "grid": {
        "bias": [{"type": "label_noise", "levels": [0.0, 0.5], "params": {"mode": "symmetric"}}],
        "model": ["clip-tiny"],
        "data_scale": {"values": [128], "unique": "fixed"},
        "seeds": [0],
    },
    "train": {"batch_size": 32, "ckpt_every": 2, "workers": 1},
    "eval": {"tasks": ["zeroshot"]},
    "analysis": {"metric": "acc1", "task": "zeroshot", "split": "id"},
    "execution": {"cell_retries": 0},
}


def _need_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if missing:
        pytest.skip(f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; "
                    "pip install selenium)")


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.fixture(autouse=True)
def _browser_available() -> None:
    """Skip before the server and the study start, not after."""
    _need_browser()


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    """A Prefect server (API and UI) on a free loopback port with a database of its own; its URL."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-server-home"),
        # The UI asks the server where its API is; `--port` alone does not tell it, and it would
        # then call the default :4200 from the browser.
        "PREFECT_API_URL": f"{url}/api",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true",
    }
    log = tmp_path / "prefect-server.log"
    with log.open("wb") as out:
        # A session of its own, so teardown ends the server's process group and nothing of ours.
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"prefect server exited:\n{_tail(log)}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prefect server not healthy after {SERVER_START_TIMEOUT_S} s:\n{_tail(log)}"
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(proc)


def _run_study(tmp_path: Path, api: str) -> Path:
    """``inheritlab run`` as a researcher types it, reporting to the server through PREFECT_API_URL."""
    spec = tmp_path / "browser.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    run_dir = tmp_path / "run"
    exe = shutil.which("inheritlab")
    cmd = [exe] if exe else [sys.executable, "-m", "inheritlab.flows.cli"]
    # Prefect at its default level (the suite's conftest quiets it): the run's INFO lines are what
    # the dashboard's Logs tab shows.
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "INFO"}
    res = subprocess.run([*cmd, "run", str(spec), "--run-dir", str(run_dir)], capture_output=True, text=True,
                         timeout=STUDY_TIMEOUT_S, check=False, env=env)
    shown = res.stdout + res.stderr
    (tmp_path / "terminal.txt").write_text(shown)
    assert res.returncode == 0, f"{shown}\n--- study log ---\n{_tail(run_dir / 'logs' / 'study.log', 120)}"
    return run_dir


def _study_run(api: str) -> tuple[str, dict[str, str]]:
    """The study's flow run id, and its sub-runs' names → state, from the server's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        (study,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["inheritlab-study"])),
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"study {SPEC['name']}"])))
        assert study.state_name == "Completed", study.state
        cells = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[study.id])))
        # Each cell's training progress reached its sub-run: a progress artifact at 100 % saying
        # where training ended, and a log line with the step, loss and samples/s.
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            ArtifactFilterType,
            LogFilter,
            LogFilterFlowRunId,
        )

        for cell in cells:
            bars = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[cell.id]), type=ArtifactFilterType(any_=["progress"])))
            assert [(b.data, "step" in (b.description or "")) for b in bars] == [(100.0, True)], \
                [(b.data, b.description) for b in bars]
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[cell.id])))
            assert any(log.message.startswith("pretrain step ") and "loss" in log.message for log in logs), \
                [log.message for log in logs]
    return str(study.id), {r.name: str(r.state_name) for r in cells}


def _chrome() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # No sandbox: CI runs as root in a container, where Chromium's sandbox cannot start;
    # /dev/shm there is often too small for its renderer.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    return driver


def _xpath_text(text: str) -> str:
    """``text`` as an XPath string literal (our labels hold no quotes; refuse any that would)."""
    assert "'" not in text, text
    return f"'{text}'"


class Dashboard:
    """Drives one browser through the dashboard, keeping a screenshot of each page it checks."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.driver, self.base, self.shots = driver, base, shots
        self.saved: list[Path] = []

    def wait(self, what: str, until: Callable[[Any], Any], timeout: float = PAGE_TIMEOUT_S) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            # The dashboard re-renders as data arrives: an element found in one poll may be gone
            # by the next call on it; that poll is retried, not failed.
            return WebDriverWait(self.driver, timeout, poll_frequency=0.25,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(until)
        except TimeoutException:
            page = self.shots / "failed-page.html"
            page.write_text(self.driver.page_source)
            self.driver.save_screenshot(str(self.shots / "failed-page.png"))
            raise AssertionError(f"{self.driver.current_url}: {what} not seen within {timeout:g} s "
                                 f"(page: {page})") from None

    def xpath(self, what: str, xpath: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.wait(what, lambda d: next((e for e in d.find_elements(By.XPATH, xpath) if e.is_displayed()), None))

    def body_has(self, *texts: str) -> None:
        from selenium.webdriver.common.by import By

        self.wait(" and ".join(repr(t) for t in texts),
                  lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts))

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def tab(self, name: str) -> None:
        self.xpath(f"the {name!r} tab", f"//*[@role='tablist']//*[normalize-space()={_xpath_text(name)}]").click()

    def shot(self, name: str) -> None:
        path = self.shots / f"{len(self.saved) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.saved.append(path)

    def image_loaded(self, alt: str) -> tuple[int, int]:
        """Wait for the markdown image ``alt`` to be decoded; scroll it into view; its natural size.
        The image is looked up afresh on each poll: a re-render replaces the element."""
        from selenium.webdriver.common.by import By

        xpath = f"//img[@alt={_xpath_text(alt)}]"
        self.xpath(f"the image {alt!r}", xpath)

        def decoded(d: Any) -> Any:
            img = d.find_element(By.XPATH, xpath)  # gone for a moment in a re-render: the wait polls again
            d.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
            size = d.execute_script("const i = arguments[0]; return i.complete && i.naturalWidth > 0 "
                                    "? [i.naturalWidth, i.naturalHeight] : null", img)
            # drawn, not only decoded
            return size if size and img.size["width"] > 0 and img.size["height"] > 0 else None

        size = self.wait(f"{alt!r} decoded with a non-zero size", decoded)
        return int(size[0]), int(size[1])


def check_dashboard(driver: Any, base: str, flow_run_id: str, study: str, cells: list[str], key: str,
                    shots: Path) -> list[Path]:
    """Everything the test asserts in the browser; returns the screenshots, in page order."""
    ui = Dashboard(driver, base, shots)

    # The study's flow run: the link Prefect prints when a run starts ("View at ...").
    ui.open(f"/runs/flow-run/{flow_run_id}")
    ui.wait("the page title naming the study", lambda d: study in d.title)
    ui.body_has(study, "Completed", "inheritlab-study")
    # The study's own log lines reach the dashboard (the Logs tab opens first).
    ui.body_has(f"Beginning flow run '{study}'")
    ui.shot("study-flow-run")

    # One sub-run per cell, named by its coordinates, each Completed.
    ui.tab("Subflow Runs")
    for name in cells:
        link = ui.xpath(f"the sub-run {name!r}",
                        f"//a[contains(@href, '/runs/flow-run/')][normalize-space()={_xpath_text(name)}]")
        row = link.find_element("xpath", "./ancestor::*[contains(@class, 'flow-run-list-item')][1]")
        ui.wait(f"the state of {name!r}", lambda d, row=row: "Completed" in row.text.splitlines())
    ui.shot("cell-sub-runs")

    # The artifacts: the results table, the summary and the curves, one card each.
    ui.tab("Artifacts")
    cards = {}
    for kind, suffix in (("markdown", "summary"), ("markdown", "curves"), ("table", "results")):
        title = f"{key}-{suffix}"
        cards[suffix] = ui.xpath(f"the artifact card {title!r}", f"//a[contains(@href, '/artifacts/artifact/')]"
                                 f"[.//*[normalize-space()={_xpath_text(title)}]]")
        text = cards[suffix].text.lower()
        assert kind in text, cards[suffix].text
    assert "summary, inheritance verdict and fits" in cards["summary"].text, cards["summary"].text
    assert "scaling curves" in cards["curves"].text, cards["curves"].text
    ui.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cards["summary"])
    ui.shot("artifacts")
    summary = cards["summary"].get_attribute("href")
    curves = cards["curves"].get_attribute("href")
    results = cards["results"].get_attribute("href")

    # The summary: the study's report as text.
    ui.driver.get(summary)
    ui.body_has(f"{key}-summary")
    ui.shot("summary")

    # The curves artifact renders the curves plot: the embedded PNG decodes to a real image.
    ui.driver.get(curves)
    ui.body_has(f"{key}-curves")
    width, height = ui.image_loaded("curves_png")
    assert width >= 200 and height >= 150, (width, height)
    ui.shot("curves")
    # The plots embedded beside it (Δ vs level, ID vs OOD) decode too.
    decoded = ui.wait("every embedded plot decoded", lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll('img[src^=\"data:image/png\"]')];"
        "return imgs.every(i => i.complete && i.naturalWidth > 0) && imgs.map(i => i.alt)"))
    assert sorted(decoded) == ["curves_png", "delta_png", "id_ood_png"], decoded

    # The results table artifact shows the study's rows.
    ui.driver.get(results)
    ui.body_has(f"{key}-results", "zeroshot", "acc1")
    ui.shot("results-table")

    # The same curves in the V2 UI, where the dashboard's front page now leads.
    ui.open("/v2/artifacts/artifact/" + curves.rstrip("/").rsplit("/", 1)[-1])
    ui.image_loaded("curves_png")
    ui.shot("curves-v2")
    return ui.saved


def test_the_dashboard_shows_a_study_in_a_browser(tmp_path: Path, prefect_server: str) -> None:
    from inheritlab.flows.grid import expand_grid
    from inheritlab.flows.spec import parse_spec

    t0 = time.perf_counter()
    api = f"{prefect_server}/api"
    _run_study(tmp_path, api)
    t_study = time.perf_counter() - t0
    flow_run_id, sub_runs = _study_run(api)
    cells = [f"cell {c.label}" for c in expand_grid(parse_spec(SPEC))]
    assert sub_runs == {name: "Completed" for name in cells}, sub_runs

    shots = Path(os.environ.get("INHERITLAB_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    driver = _chrome()
    try:
        saved = check_dashboard(driver, prefect_server, flow_run_id, f"study {SPEC['name']}", cells,
                                SPEC["name"], shots)
    finally:
        driver.quit()
    print(f"\nstudy {t_study:.0f} s, browser {time.perf_counter() - t0 - t_study:.0f} s; screenshots:")
    print("\n".join(f"  {p}" for p in saved))
