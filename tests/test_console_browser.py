"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright through its
``executable_path``) against the real stack: the counts, live updates without a reload, replay of
a dead letter, the graphs drawn, a phone-sized screen.

Without Chromium these tests skip, saying why; with ``CI`` set they fail instead (``.ci/run``
installs it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from serving import serve
from stack import Scaler, invoke, publish, status
from test_console import COUNTS, _write

from broker import deadletter
from broker.registry import load_registry
from sources.http.webhook import create_app
from tests.waiting import wait_until

SUCCEEDED = "document.querySelector('tr[data-function=\"ok\"] [data-k=\"succeeded\"]').textContent === '{}'"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        reason = "no Chromium on this machine (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: in CI the browser tests must run (.ci/run installs it)")
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"playwright is not installed: {e}")
        pytest.skip(f"playwright is not installed: {e}")
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses its sandbox as root
        chromium = p.chromium.launch(executable_path=path, args=args, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def stack(project: Path, redis_url: str) -> Iterator[str]:
    _write(project)
    app = create_app(load_registry(project / "lambdalite.toml"), redis_url)
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60"), serve(app) as url:
        yield url


def _cell(page: Any, function: str, key: str) -> str:
    return str(page.locator(f'tr[data-function="{function}"] [data-k="{key}"]').first.text_content()).strip()


def _live(page: Any) -> None:
    page.wait_for_selector("#live.on", timeout=15_000)


@pytest.mark.timeout(180)
def test_overview_lists_the_functions_with_the_counts_of_status(browser: Any, stack: str, project: Path,
                                                               redis_url: str) -> None:
    for _ in range(2):
        assert invoke(redis_url, project, "ok", {}).ok
    assert not invoke(redis_url, project, "fail", {}).ok
    publish(redis_url, project, "fail", {})
    wait_until(lambda: status(project)["fail"]["dead"] == 1, what="a dead letter")
    page = browser.new_page()
    page.goto(f"{stack}/console/")
    _live(page)
    cli = status(project)
    names = page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.function)")
    assert sorted(names) == sorted(cli)
    for name, row in cli.items():
        shown = {k: int(_cell(page, name, k).replace(",", "")) for k in COUNTS}
        assert shown == {k: row[k] for k in COUNTS}, name
    assert _cell(page, "fail", "dead_letters") == "1"
    assert _cell(page, "ok", "success_rate") == "100.0 %"


@pytest.mark.timeout(180)
def test_an_invocation_shows_up_on_the_open_page_within_2_s_without_a_reload(
        browser: Any, stack: str, project: Path, redis_url: str) -> None:
    assert invoke(redis_url, project, "ok", {}).ok  # a warm worker: the next outcome comes at once
    page = browser.new_page()
    page.goto(f"{stack}/console/")
    _live(page)
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function(SUCCEEDED.format(1), timeout=5_000)
    assert invoke(redis_url, project, "ok", {}).ok  # its outcome is in Redis now
    started = time.monotonic()
    page.wait_for_function(SUCCEEDED.format(2), timeout=2_000)
    print(f"overview showed it {time.monotonic() - started:.2f} s after the outcome was recorded")
    assert page.evaluate("window.__sameDocument") is True, "the page was not reloaded"

    fn = browser.new_page()
    fn.goto(f"{stack}/console/functions/ok")
    _live(fn)
    fn.evaluate("window.__sameDocument = true")
    assert fn.locator("#recent tr").count() == 2
    out = invoke(redis_url, project, "ok", {"third": 1})
    assert out.ok
    fn.wait_for_function("document.querySelectorAll('#recent tr').length === 3", timeout=2_000)
    assert fn.evaluate("window.__sameDocument") is True


@pytest.mark.timeout(180)
def test_replay_of_a_dead_letter_from_the_page_runs_it(browser: Any, stack: str, project: Path, redis_url: str,
                                                        r: redis.Redis) -> None:
    publish(redis_url, project, "flaky", {"n": "again"})
    publish(redis_url, project, "flaky", {"n": "kept"})
    wait_until(lambda: deadletter.count(r, "flaky") == 2, what="two dead letters")
    (project / "fixed").write_text("")
    target = next(e for e in deadletter.entries(r, "flaky") if e["event"]["payload"]["n"] == "again")
    page = browser.new_page()
    page.goto(f"{stack}/console/functions/flaky/dead-letters")
    assert page.locator("table.dlq tbody tr").count() == 2
    page.locator(f'tr[data-id="{target["id"]}"] button', has_text="replay").click()
    page.wait_for_selector("#done", timeout=10_000)
    assert page.locator("#done").text_content() == "replayed 1"
    wait_until(lambda: (project / "ran.txt").exists(), what="the replayed event's run")
    assert (project / "ran.txt").read_text().split() == ["again"]
    assert page.locator("table.dlq tbody tr").count() == 1, "the other one is still there"


@pytest.mark.timeout(180)
def test_the_function_page_draws_its_graphs(browser: Any, stack: str, project: Path, redis_url: str) -> None:
    for _ in range(3):
        assert invoke(redis_url, project, "ok", {}).ok
    page = browser.new_page()
    page.goto(f"{stack}/console/functions/ok")
    page.wait_for_selector('#charts[data-drawn="8"]', timeout=10_000)
    assert page.locator("#charts canvas").count() == 8
    titles = page.locator("#charts h3").all_text_contents()
    assert titles[0] == "Invocations" and "Async event age (ms)" in titles
    # The invocations line (#0b5cad) is on the first graph's canvas: count its pixels.
    painted = page.evaluate("""() => {
        const c = document.querySelector('#charts canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (Math.abs(d[i] - 11) < 30 && Math.abs(d[i + 1] - 92) < 30 && Math.abs(d[i + 2] - 173) < 30
                && d[i + 3] > 100) n++;
        }
        return n;
    }""")
    assert painted > 20, "the invocations series is drawn"
    page.locator('input[name="range"][value="day"]').check()
    page.wait_for_timeout(200)
    assert page.locator("#charts canvas").count() == 8


@pytest.mark.timeout(180)
def test_pages_fit_a_phone_screen(browser: Any, stack: str, project: Path, redis_url: str) -> None:
    assert invoke(redis_url, project, "ok", {}).ok
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    for path in ("/console/", "/console/functions/ok", "/console/functions/ok/dead-letters"):
        page.goto(stack + path)
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= 390, f"{path} is {wide} px wide on a 390 px screen (tables scroll inside their box)"
