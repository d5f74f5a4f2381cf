"""Browser tests: Debian's Chromium (/usr/bin/chromium, installed by `make install`) driven by
Playwright; no browser is ever downloaded. Screenshots go to test-artefacts/browser/."""

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.web.conftest import fall, predicted, server, token_server, web_tree  # noqa: F401  (one tree, one server each)

CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = REPO / "test-artefacts" / "browser"
# Running as root in a container: no sandbox; nothing reaches beyond 127.0.0.1.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")  # sync Playwright runs an event loop on this thread until it stops
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives every context a fresh profile directory (--user-data-dir) of its own
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


@pytest.fixture
def logged_in(page, token_server):  # noqa: F811  (the fixture imported above)
    """The page, logged in to the cockpit with COCKPIT_TOKEN through its login form."""
    from tests.web.conftest import TOKEN

    page.goto(token_server.url + "/")
    page.wait_for_url("**/login?next=%2F")
    page.fill("#token", TOKEN)
    page.click("#login button")
    page.wait_for_url(token_server.url + "/")
    return page


@pytest.fixture
def screenshot(page, tmp_path):
    """screenshot(name): a full-page PNG in the test's tmp dir, copied to test-artefacts/browser/."""
    def take(name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, ARTEFACTS / path.name)
        return path

    return take
