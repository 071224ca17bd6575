"""The fleet page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium) against ``infercdn up`` on the simulators.

It sees the three regions of the embedded default; an endpoint turns red within seconds of its
simulator being killed (the PIDs are in ``up``'s banner) and green again once a simulator is back
on the same port; an endpoint drained with the page's own button is marked so; the route form
explains a plan.  Screenshots are saved under ``tests/artifacts/`` (ignored by git) and their
paths printed.  Skips, saying why, where Chromium, its driver or selenium is missing
(``.ci/run`` installs them; the test extra has selenium)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
RED, GREEN = (229, 72, 77), (47, 177, 113)  # --bad and --ok of status.html
WAIT_S = 20.0  # generous bounds for a loaded machine; each wait ends as soon as the page shows it

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver; "
                ".ci/run installs them)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: make install-test")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``infercdn up`` in a subprocess on a free port; its banner parsed (pool -> PIDs)."""
    port = _free_port()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "infercdn.cli", "up", "--port", str(port)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        banner = _wait_for(lambda: "stop with Ctrl-C" in log.read_text(errors="replace") and log.read_text(),
                           60, f"the banner of infercdn up (log {log})")
        pids = {m[1]: [int(p) for p in m[2].split()] for m in re.finditer(r"^\s+(\S+): kill ([\d ]+)$", banner, re.M)}
        yield {"url": f"http://127.0.0.1:{port}", "pids": pids, "log": log}
    finally:
        proc.send_signal(signal.SIGINT)  # up drains, then stops its simulators
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _topology(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/admin/topology", timeout=5) as resp:
        return orjson.loads(resp.read())


def _chat(base: str, ip: str) -> None:
    body = orjson.dumps({"model": "tiny-chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", "X-Forwarded-For": ip})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _rgb(css: str) -> tuple[int, ...]:
    """(r, g, b) of a computed colour, "rgb(…)" or "rgba(…)"."""
    return tuple(int(float(x)) for x in re.findall(r"[\d.]+", css)[:3])


ROW_JS = """const row = document.querySelector(`tr[data-endpoint="${arguments[0]}"]`);
if (!row) return null;
const badge = row.querySelector(".badge");
return [row.dataset.state, getComputedStyle(badge).backgroundColor, badge.textContent, row.querySelector("button").textContent];"""


def _row(driver: Any, endpoint: str) -> tuple[str | None, tuple[int, ...] | None, str, str]:
    """(data-state, badge colour, badge text, button text) of an endpoint's row, read in one
    go in the page (it redraws every second); Nones while the row is not drawn."""
    got = driver.execute_script(ROW_JS, endpoint)
    if not got:
        return None, None, "", ""
    return got[0], _rgb(got[1]), got[2], got[3]


def _region_health(driver: Any, region: str) -> str | None:
    return driver.execute_script('const r = document.querySelector(`.region[data-region="${arguments[0]}"]`);'
                                 "return r && r.dataset.health;", region)


def _click(driver: Any, selector: str) -> None:
    """Click what ``selector`` finds; found again if a redraw replaced it in between."""
    for _ in range(5):
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"could not click {selector}: redrawn every time")


def _shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot of the fleet page: {path}")
    return path


def test_fleet_page_in_a_real_browser(up: dict[str, Any], browser: Any) -> None:
    base = up["url"]
    victim_pool, victim = "ap-southeast-sim", "ap-southeast-sim-sim0"
    assert set(up["pids"]) == {"us-east-sim", "eu-west-sim", "ap-southeast-sim"}
    for ip in ("103.4.96.1", "81.2.69.142", "8.8.8.8"):  # some traffic for the map and the cards
        _chat(base, ip)

    browser.get(base + "/status")
    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".region[data-region]")) == 3)
    names = [e.get_attribute("data-region") for e in browser.find_elements(By.CSS_SELECTOR, ".region[data-region]")]
    assert names == ["us-east", "eu-west", "ap-southeast"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#markers circle[data-region]")) == 3  # on the map
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#land path")) == 1)
    wait.until(lambda d: _row(d, victim)[:2] == ("healthy", GREEN))
    assert browser.find_element(By.ID, "live").text == "live"

    # kill one simulator: its endpoint turns red within seconds
    url = next(e["url"] for p in _topology(base)["pools"] for e in p["endpoints"] if e["id"] == victim)
    os.kill(up["pids"][victim_pool][0], signal.SIGKILL)
    wait.until(lambda d: _row(d, victim)[1] == RED)
    assert _row(browser, victim)[0] in ("unhealthy", "ejected", "breaker_open")
    wait.until(lambda d: _region_health(d, "ap-southeast") == "degraded")
    _shot(browser, "status-page-endpoint-down.png")

    # a simulator on the same port again: the endpoint comes back
    port = url.rsplit(":", 1)[1]
    sim = subprocess.Popen([sys.executable, "-m", "infercdn.cli", "worker", "sim", "--host", "127.0.0.1",
                            "--port", port, "--model", "tiny-chat", "--ttft-ms", "40", "--itl-ms", "15"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait.until(lambda d: _row(d, victim)[:2] == ("healthy", GREEN))

        # drain an endpoint with the page's own button: marked drained, and no new requests
        drained = "eu-west-sim-sim1"
        _click(browser, f'button[data-kind="endpoint"][data-id="{drained}"]')
        wait.until(lambda d: _row(d, drained)[0] == "drained")
        assert _row(browser, drained)[2:] == ("drained", "Undrain")
        assert next(e for p in _topology(base)["pools"] for e in p["endpoints"] if e["id"] == drained)["drained"]

        # explain a route: a client in Singapore goes to ap-southeast first
        browser.find_element(By.ID, "plan-ip").send_keys("103.4.96.1")
        _click(browser, "#plan-form button")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#plan-table tbody tr"))
        first = browser.find_element(By.CSS_SELECTOR, "#plan-table tbody tr td:nth-child(2)").text
        assert first == "ap-southeast"
        for ip in ("103.4.96.1", "81.2.69.142", "8.8.8.8", "81.2.69.142"):
            _chat(base, ip)
        wait.until(lambda d: ": 0 requests" not in d.find_element(By.ID, "fleet-totals").text)
        _shot(browser, "status-page.png")
    finally:
        sim.terminate()
        sim.wait(10)
