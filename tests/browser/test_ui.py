"""The Dagster UI in a real browser: the demo on a temporary home, a real ``dagster-webserver`` on it, and headless
Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright; never a browser download) that opens the asset
graph, a raw asset's account x day partitions, the portfolio plan's savings metadata and the savings report.

Screenshots go to ``tests/browser/screenshots/`` (ignored by git). Every wait is on a condition with a generous
bound, never a sleep: a busy machine is slow, not wrong.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from cloudopt_pipelines.settings import Settings
from cloudopt_pipelines.storage.lake import Lake
from tests.conftest import DEMO_ACCOUNTS, DEMO_DAYS

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCREENSHOTS = Path(__file__).parent / "screenshots"
CHROMIUM = Path(os.environ.get("CLOUDOPT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STAGES = ("raw", "features", "recommendations", "plan", "actions", "reports", "warehouse")
WAIT_MS = 180_000  # a bound on each wait, not a speed
DAY = DEMO_DAYS[-1].isoformat()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ui_home(demo_home: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A private copy of the demo home: the webserver records UI state in the instance, the shared home stays
    read-only."""
    home = tmp_path_factory.mktemp("ui-home")
    for name in ("lake", "dagster", "reports"):
        shutil.copytree(demo_home.home / name, home / name)
    return Settings(home=Path(home), env="demo")


@pytest.fixture(scope="module")
def webserver(ui_home: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dagster-webserver`` on the home's instance, as ``make dev`` starts it (without the daemon)."""
    env = {
        **os.environ,
        "CLOUDOPT_HOME": str(ui_home.home),
        "DAGSTER_HOME": str(ui_home.dagster_home),
        "CLOUDOPT_ENV": "demo",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    port = _free_port()
    log_path = tmp_path_factory.mktemp("webserver") / "webserver.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"dagster-webserver did not start:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Headless Chromium from Debian's package with a fresh profile."""
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)"
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,  # the fresh profile is Chromium's --user-data-dir
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    # The webserver's first visit asks to join the community; it is not part of what is tested.
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
    try:
        yield page
    finally:
        page.close()


def shoot(page: Page, name: str, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def test_the_asset_graph_shows_every_stage(webserver: str, page: Page) -> None:
    page.goto(f"{webserver}/asset-groups")
    nodes = page.locator("foreignObject")  # the graph's nodes: one per stage group
    for stage in STAGES:
        expect(nodes.filter(has_text=re.compile(f"^{stage}$"))).to_have_count(1)
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    shoot(page, "asset_graph")


def test_a_raw_asset_shows_its_materialised_account_day_partitions(
    webserver: str, page: Page, ui_home: Settings
) -> None:
    lake = Lake(ui_home.lake_dir)
    page.goto(f"{webserver}/assets/raw/resources?view=partitions")
    expect(page.get_by_text(f"Materialized ({len(DEMO_ACCOUNTS) * len(DEMO_DAYS)})", exact=True)).to_be_visible()
    # a partition of the demo window that this home did not run: the UI must say so
    after = DEMO_DAYS[-1] + timedelta(days=1)
    for account in DEMO_ACCOUNTS:
        for day, state in [(after, "Missing"), *((d, "Materialized") for d in DEMO_DAYS)]:
            page.goto(f"{webserver}/assets/raw/resources?view=partitions")  # each partition from a fresh view
            page.get_by_text(account, exact=True).first.click()
            # the visible last match: the partitions bar labels the window's first day too, and the list keeps a
            # hidden copy of each label to measure it; the day in the list is the last visible one
            page.get_by_text(day.isoformat(), exact=True).filter(visible=True).last.click()
            expect(page.get_by_text(f"{account}|{day.isoformat()}", exact=True).first).to_be_visible()
            if state == "Missing":
                expect(page.get_by_role("button", name="View all historical events (0)")).to_be_visible()
                expect(page.get_by_text("No metadata entries", exact=True)).to_be_visible()
            else:
                expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
                rows = lake.read("resources", account, day).num_rows
                row_count = page.locator("tr", has=page.get_by_text("dagster/row_count", exact=True)).first
                expect(row_count).to_contain_text(str(rows))
    shoot(page, "raw_resources_partitions")


def test_the_portfolio_plan_shows_its_savings(webserver: str, page: Page, ui_home: Settings) -> None:
    plan = Lake(ui_home.lake_dir).partition_file("portfolio_plan", day=DAY)
    savings = duckdb.connect().execute(f"SELECT sum(monthly_savings_usd) FROM read_parquet('{plan}')").fetchone()[0]
    page.goto(f"{webserver}/assets/plan/portfolio_plan?view=overview")
    expect(page.get_by_text(DAY, exact=True).first).to_be_visible()  # the latest materialisation is that day's
    row = page.locator("tr", has=page.get_by_text("total_monthly_savings_usd", exact=True)).first
    expect(row).to_be_visible()
    shown = float(re.search(r"(\d+(?:\.\d+)?)\s*$", row.inner_text().strip()).group(1))
    assert shown == pytest.approx(savings, abs=1e-3)
    row.scroll_into_view_if_needed()
    shoot(page, "portfolio_plan_metadata")


def test_the_savings_report_opens_from_its_asset(webserver: str, page: Page, ui_home: Settings) -> None:
    page.goto(f"{webserver}/assets/reports/savings_report?view=overview")
    link = page.locator("a[href^='file://']", has_text="savings_report.html").first
    expect(link).to_be_visible()
    shoot(page, "savings_report_asset")
    href = link.get_attribute("href")
    assert href and href.endswith(f"/{DAY}/savings_report.html")
    # a page served over http may not navigate to file: (Chromium blocks it); open the link as a person would
    page.goto(href)
    expect(page.get_by_role("heading", name=f"Savings report {DAY}")).to_be_visible()
    for heading in ("Savings by account", "Savings by team", "Pareto curve of the plan", "Realised savings"):
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
    images = page.locator("img[src^='data:image/png']")
    expect(images.first).to_be_visible()
    assert page.evaluate("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    for account in DEMO_ACCOUNTS:
        expect(page.locator("#by-account td", has_text=account)).to_have_count(1)
    shoot(page, "savings_report", full_page=True)
