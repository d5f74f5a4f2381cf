"""The error-analysis pages in Debian's Chromium, logged in through the form, on a real
detector's cached predictions (tests/web/errors_tree.py): an image with its predictions coloured
by outcome (pixels sampled on a box edge), a confusion-matrix cell followed to its images, two
runs compared."""

import cv2
import numpy as np
import pytest

from tests.web.conftest import Server, free_port

TOKEN = "errors-browser-token-0123456789abcdef-xyz"
IMAGES_LOADED = ("() => [...document.images].length > 0"
                 " && [...document.images].every(i => i.complete && i.naturalWidth > 0)")


@pytest.fixture(scope="module")
def errors_server(predicted):
    server = Server({**predicted.env, "COCKPIT_TOKEN": TOKEN, "RABBITMQ_PORT": str(free_port())}, free_port())
    yield server
    server.stop()


@pytest.fixture
def signed_in(page, errors_server):
    page.goto(errors_server.url + "/errors")
    page.wait_for_url("**/login?next=%2Ferrors")
    page.fill("#token", TOKEN)
    page.click("#login button")
    page.wait_for_url(errors_server.url + "/errors")
    return page


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)


def _edge_colour_found(page, rect, colour: str) -> bool:
    """Whether the screenshot shows `colour` on the middle of the rect's left edge (within a few
    pixels and a small tolerance for antialiasing)."""
    box = rect.bounding_box()
    x, y = box["x"], box["y"] + box["height"] / 2
    png = page.screenshot(clip={"x": max(0, x - 4), "y": y - 4, "width": 9, "height": 9})
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].reshape(-1, 3).astype(float)
    return bool((np.abs(pixels - _rgb(colour)).max(axis=1) <= 40).any())


def test_image_with_predictions_coloured_by_outcome(signed_in, errors_server, predicted, screenshot):
    page, f = signed_in, predicted
    page.goto(f"{errors_server.url}/datasets/{f.dataset}?model={f.swapped}&split=test&sort=score")
    page.wait_for_function(IMAGES_LOADED)
    listed = errors_server.json(f"/api/datasets/{f.dataset}?model={f.swapped}&split=test&sort=score")
    assert page.locator("a.thumb").count() == listed["matching"]
    assert page.locator("a.thumb rect.outcome").count() == sum(len(i["outcomes"]) for i in listed["images"])
    screenshot("errors-browser")
    page.locator("a.thumb").first.click()
    page.wait_for_url(f"**/test/{listed['images'][0]['image']}?**")
    page.wait_for_function(IMAGES_LOADED)
    detail = errors_server.json(f"/api/datasets/{f.dataset}/test/{listed['images'][0]['image']}"
                                f"?model={f.swapped}&sort=score")
    predictions = detail["outcomes"]["predictions"]
    assert page.locator("#predictions g.prediction").count() == len(predictions)
    assert page.locator("#outcome-boxes tr[data-kind]").count() == len(predictions)
    screenshot("errors-image")
    checked = 0
    for kind in {b["kind"] for b in predictions}:
        rect = page.locator(f'#predictions g.prediction[data-kind="{kind}"] rect').first
        colour = next(b["colour"] for b in predictions if b["kind"] == kind)
        assert _edge_colour_found(page, rect, colour), kind
        checked += 1
    assert checked >= 1
    # the toggle hides the predictions (labels stay)
    page.click('label[for="show-predictions"]')
    assert not page.locator("#predictions").is_visible() and page.locator(".full svg.labels").is_visible()
    page.click('label[for="show-predictions"]')
    assert page.locator("#predictions").is_visible()
    if detail["outcomes"].get("next"):
        page.click("#next")
        page.wait_for_url(f"**/test/{detail['outcomes']['next']}?**")
        assert "2 of" in page.locator("#neighbours").inner_text()


def test_confusion_cell_to_its_images(signed_in, errors_server, predicted, screenshot):
    page, f = signed_in, predicted
    page.click(f'a.view[href*="model={f.swapped}"]')
    page.wait_for_url(f"**/errors/{f.dataset}?**")
    assert page.locator("#confusion").is_visible()
    screenshot("errors-view")
    cell = page.locator("#confusion td.off a.cell").first
    parent = cell.locator("xpath=..")
    true, pred = parent.get_attribute("data-true"), parent.get_attribute("data-pred")
    cell.click()
    page.wait_for_url(f"**true={true}&pred={pred}**")
    page.wait_for_function(IMAGES_LOADED)
    expected = errors_server.json(f"/api/datasets/{f.dataset}?model={f.swapped}&split=test&true={true}&pred={pred}")
    assert page.locator("a.thumb").count() == expected["matching"] > 0
    assert page.locator("#cell").is_visible()
    screenshot("errors-cell")


def test_compare_two_runs(signed_in, errors_server, predicted, screenshot):
    page, f = signed_in, predicted
    page.goto(errors_server.url + "/compare")
    assert page.locator("svg.curves").count() == 6
    legend = page.locator("svg.curves").first.locator("text.legend")
    assert legend.count() == 2 and legend.nth(0).text_content() == f"A: {f.good}" \
        and legend.nth(1).text_content() == f"B: {f.swapped}"
    assert "mAP50: objects found" in page.locator("svg.curves").first.text_content()
    assert page.locator("#class-deltas tr[data-class]").count() >= 1
    assert page.locator("svg.bars rect").count() >= 1
    screenshot("errors-compare")
