"""What an operator sees in a real headless Chromium: the login page, then (logged in with
COCKPIT_TOKEN) counts, curves, images with boxes, the dataset browser clicked through, and a
promotion recorded under the operator's name."""

from azaion_training.classes import load_classes
from azaion_training.web.colours import variant_colour
from tests.web.conftest import TOKEN, busiest_class

IMAGES_LOADED = ("() => [...document.images].length > 0"
                 " && [...document.images].every(i => i.complete && i.naturalWidth > 0)")


def test_login_page_then_in(page, token_server, screenshot):
    page.goto(token_server.url + "/datasets")
    page.wait_for_url("**/login?next=%2Fdatasets")
    assert page.locator("#token").get_attribute("type") == "password"
    page.fill("#token", "not-the-token")
    page.click("#login button")
    page.wait_for_selector("#error")
    assert page.locator("#error").inner_text() == "wrong token"
    screenshot("login")
    page.fill("#token", TOKEN)
    page.click("#login button")
    page.wait_for_url(token_server.url + "/datasets")
    assert page.locator("#who").inner_text().startswith("cockpit:")
    cookie = next(c for c in page.context.cookies() if c["name"] == "azaion_cockpit")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it
    page.click("#logout")
    page.wait_for_url("**/login")
    page.goto(token_server.url + "/models")
    page.wait_for_url("**/login?next=%2Fmodels")


def test_overview_shows_health_counts_and_refreshes(logged_in, token_server, screenshot):
    page, server = logged_in, token_server
    status, health = server.json("/api/status"), server.json("/api/health")
    page.goto(server.url + "/")
    assert page.locator("#health tr.check").count() == len(health["checks"])
    assert page.locator('[data-area="data"] td.num').first.inner_text() == str(status["areas"]["data"]["images"])
    assert page.locator('[data-area="queue-rejected"] td.num').inner_text() == str(status["rejected"]["messages"])
    assert status["latest_dataset"]["name"] in page.locator("#latest-dataset").inner_text()
    screenshot("overview")
    # the page re-renders itself: mark the current <main>, wait for a fresh one
    page.evaluate("document.getElementById('main').dataset.old = '1'")
    page.wait_for_function("!document.getElementById('main').dataset.old", timeout=15000)
    assert page.locator("#health tr.check").count() == len(health["checks"])


def test_run_page_draws_the_curves(logged_in, token_server, web_tree, screenshot):
    page, server = logged_in, token_server
    page.goto(server.url + "/runs")
    page.click(f'a[href="/runs/{web_tree["run"]}"]')
    page.wait_for_url(f"**/runs/{web_tree['run']}")
    charts = page.locator("svg.chart")
    assert charts.count() == 2
    assert page.locator("svg.chart polyline").count() >= 6
    points = page.locator("svg.chart polyline").first.get_attribute("points").split()
    assert len(points) == 2  # two epochs
    box = charts.first.bounding_box()
    assert box["width"] > 300 and box["height"] > 150
    screenshot("run")


def test_dataset_browser_click_through(logged_in, token_server, web_tree, screenshot):
    page, server = logged_in, token_server
    name = web_tree["dataset"]
    page.goto(server.url + "/datasets")
    page.click(f'a[href="/datasets/{name}"]')
    page.wait_for_url(f"**/datasets/{name}")
    page.wait_for_function(IMAGES_LOADED)
    total = server.json(f"/api/datasets/{name}")["matching"]
    assert page.locator("#matching").inner_text() == f"{total} images"
    assert page.locator("a.thumb").count() == total
    assert page.locator("a.thumb rect.box").count() >= total
    screenshot("dataset")

    cls = busiest_class(web_tree["root"] / "datasets" / name)
    page.select_option('select[name="class"]', str(cls))
    page.select_option('select[name="split"]', "train")
    page.click("#filter button")
    page.wait_for_url(f"**class={cls}**")
    expected = server.json(f"/api/datasets/{name}?split=train&class={cls}")
    assert page.locator("#matching").inner_text() == f"{expected['matching']} images"
    assert page.locator("a.thumb").count() == expected["matching"] > 0
    boxes = page.locator(f'a.thumb rect.box[data-class="{cls}"]')
    assert boxes.count() >= expected["matching"]
    family = load_classes(web_tree["layout"].classes_json)[cls].color
    assert boxes.first.get_attribute("stroke") == variant_colour(family, cls)  # lighter/darker per weather

    first = expected["images"][0]
    page.locator("a.thumb").first.click()
    page.wait_for_url(f"**/datasets/{name}/train/{first['image']}")
    page.wait_for_function(IMAGES_LOADED)
    assert page.locator(".full rect.box").count() == len(first["boxes"])
    assert page.locator("#label-lines tr").count() == len(first["boxes"]) + 1
    size = page.locator("#full-image").bounding_box()
    overlay = page.locator(".full svg.boxes").bounding_box()
    assert abs(size["width"] - overlay["width"]) < 2 and abs(size["height"] - overlay["height"]) < 2
    screenshot("image")


def test_quarantine_filter_by_reason(page, server, screenshot):
    """The read-only cockpit (open on loopback, no login)."""
    data = server.json("/api/quarantine")
    page.goto(server.url + "/quarantine")
    assert page.locator("tr.rejected").count() == len(data["rejected"])
    assert page.locator("tr.corrupted").count() == len(data["corrupted"]) == 1
    screenshot("quarantine")
    reason, count = next(iter(data["reasons"]["rejected"].items()))
    page.locator("tr.rejected a", has_text=reason).first.click()
    page.wait_for_url("**reason=**")
    assert page.locator("tr.rejected").count() == count
    assert page.locator("tr.corrupted").count() == 0


def test_promote_as_the_logged_in_operator(logged_in, token_server, web_tree, tmp_path, screenshot):
    page = logged_in
    run, target = web_tree["run"], f"local:{tmp_path / 'browser-cdn'}"
    page.goto(token_server.url + "/models")
    row = page.locator(f'tr.version[data-run="{run}"]')
    row.locator('input[name="target"]').fill(target)
    with page.expect_navigation(timeout=300000):  # export, parity check and publish take a while
        row.locator("button.promote").click(no_wait_after=True)
    assert page.locator("#message").inner_text().startswith(f"promoted {run} on local:")
    page.goto(token_server.url + "/models")
    production = page.locator("#production tr[data-target^='local:']", has_text=str(tmp_path / "browser-cdn"))
    assert production.count() == 1 and run in production.inner_text()
    event = row.locator(".event", has_text=str(tmp_path / "browser-cdn"))
    assert "by cockpit@cockpit" in event.first.inner_text()
    screenshot("models")
    assert TOKEN not in page.content()  # typed once at the login, never shown
