"""The web UI in a real headless Chromium (Debian's chromium + chromedriver, via Selenium).

Set SETPOINT_SCREENSHOTS=docs to refresh the screenshots in docs/ (else they go to tmp).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

import test_watch
from helpers import docs, manifest, wait_for
from test_watch import FAST, read

run_agent = test_watch.run_agent  # the shared fixture: a real agent process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)),
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh dev installs them)",
)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
                 "--window-size=1200,900"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def shot(driver, tmp_path: Path, name: str) -> None:
    where = REPO / "docs" if os.environ.get("SETPOINT_SCREENSHOTS") == "docs" else tmp_path
    driver.save_screenshot(str(where / f"ui-{name}.png"))


def live(driver) -> None:
    wait_for(lambda: "on" in driver.find_element("id", "live").get_attribute("class"),
             timeout=FAST, what="the event stream connected")  # fmt: skip


def stack_files() -> dict[str, str]:
    return {"m/a.yaml": docs(
        manifest("File", "motd", path="/etc/motd", content="welcome\n"),
        manifest("File", "app-conf", path="/etc/app/app.conf", content="workers=4\nport=8080\n"),
        manifest("Directory", "data", path="/srv/data"),
    )}  # fmt: skip


def test_overview_shows_the_stacks_and_loads_nothing_from_elsewhere(
    git_repo, browser, tmp_path, run_agent
):
    git_repo.commit(stack_files(), message="app: 4 workers on port 8080")
    agent = run_agent()
    browser.get(agent.url + "/")
    live(browser)
    card = browser.find_element("css selector", '[data-stack-card="web"]')
    assert "Synced" in card.text and "Healthy" in card.text
    assert "app: 4 workers on port 8080" in card.text
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls and all(u.startswith(agent.url) for u in urls), urls
    shot(browser, tmp_path, "overview")
    browser.find_element("link text", "web").click()
    wait_for(lambda: "Resources" in browser.page_source, what="stack page")
    assert {"File", "Directory"} <= {h.text.split()[0] for h in
                                     browser.find_elements("css selector", "#resources h3")}
    shot(browser, tmp_path, "stack")


def test_a_drift_appears_on_the_timeline_within_2s_without_reloading(
    git_repo, root, browser, tmp_path, run_agent
):
    git_repo.commit(stack_files())
    agent = run_agent()
    browser.get(agent.url + "/journal")
    live(browser)
    browser.execute_script("window.__same_page = 42")
    (root / "etc/app/app.conf").write_text("workers=64\nport=8080\n")
    t0 = time.monotonic()

    def drift_entry():
        for li in browser.find_elements("css selector", "li.t-drift"):
            if "File/app-conf" in li.text and "-workers=64" in li.text:
                return li
        return None

    wait_for(drift_entry, timeout=2.0, interval=0.05, what="the drift on the timeline")
    assert time.monotonic() - t0 < 2.0
    assert browser.execute_script("return window.__same_page") == 42  # not reloaded
    wait_for(lambda: browser.find_elements("css selector", "li.t-revert"), timeout=FAST,
             what="the revert too")  # fmt: skip
    assert read(root / "etc/app/app.conf") == "workers=4\nport=8080\n"
    shot(browser, tmp_path, "journal")


def test_resource_page_shows_the_live_diff_at_phone_width(
    git_repo, root, browser, tmp_path, run_agent
):
    git_repo.commit(stack_files())
    agent = run_agent(stacks=[{"name": "web", "source": "infra", "path": "m", "drift": "report"}])
    (root / "etc/app/app.conf").write_text("workers=4\nport=9999\n")
    wait_for(lambda: agent.journal("drift"), timeout=FAST, what="drift reported")
    browser.set_window_size(390, 844)
    browser.get(agent.url + "/stacks/web/resources/File/app-conf")
    diff = browser.find_element("id", "diff").text
    assert "Drifted" in diff and "-port=9999" in diff and "+port=8080" in diff
    width = browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width[0] <= width[1], f"horizontal scroll at phone width: {width}"
    shot(browser, tmp_path, "resource-phone")


def test_sync_is_refused_without_a_token_and_accepted_with_one(
    git_repo, state_dir, browser, tmp_path, run_agent
):
    git_repo.commit(stack_files())
    agent = run_agent()
    browser.get(agent.url + "/")
    live(browser)

    def press_sync(token: str) -> str:
        browser.find_element("css selector", 'button[data-action="sync"]').click()
        wait_for(lambda: browser.find_element("id", "token-dialog").get_attribute("open")
                 is not None, what="the token dialog")  # fmt: skip
        box = browser.find_element("id", "token-input")
        box.send_keys(token)
        browser.find_element("id", "token-ok").click()
        return wait_for(
            lambda: (n := browser.find_element("id", "notice").text) and "…" not in n and n,
            timeout=FAST, what="the answer",
        )  # fmt: skip

    refused = press_sync("")
    assert "refused" in refused and "token" in refused
    token = (state_dir / "api-token").read_text().strip()
    accepted = press_sync(token)
    assert "accepted" in accepted and "converged" in accepted
    shot(browser, tmp_path, "sync")
    assert token not in agent.log.read_text()
