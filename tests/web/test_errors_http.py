"""The error-analysis pages over Starlette's TestClient, on a real detector's cached predictions
(tests/web/errors_tree.py): the browser with outcomes filtered and sorted, the image page with
its judged boxes and neighbours, confusion-matrix cells to their images, the comparison of two
runs, the cycle panel; pages never predict; bad parameters answer 400, a missing login 401/303."""

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from azaion_training.analysis.compare import compare_models
from azaion_training.analysis.outcomes import analyse
from azaion_training.analysis.predictions import open_store, resolve_model
from azaion_training.web.app import create_app
from azaion_training.web.colours import variant_colour

TOKEN = "errors-test-token-0123456789abcdef-xyz"


@pytest.fixture(scope="module")
def cockpit(predicted):
    app = create_app(predicted.settings(COCKPIT_TOKEN=TOKEN), warm=False)
    return TestClient(app, base_url="http://127.0.0.1:8600", headers={"Authorization": f"Bearer {TOKEN}"})


def _get(client, path, status=200):
    response = client.get(path)
    assert response.status_code == status, (path, response.status_code, response.text[:400])
    return response


def test_browser_shows_outcomes_worst_first_and_filters_by_kind(cockpit, predicted):
    f = predicted
    analysis, _ = analyse(f.settings(), f.good, f.dataset, "test", progress=False)
    data = _get(cockpit, f"/api/datasets/{f.dataset}?model={f.good}&split=test&sort=score").json()
    assert data["matching"] == len(analysis.images) > 0
    scores = [i["error_score"] for i in data["images"]]
    assert scores == sorted(scores, reverse=True)
    first = data["images"][0]
    worst = analysis.worst(1)[0]
    assert first["image"] == Path(worst.name).name and first["error_score"] == round(worst.error_score, 4)
    assert {b["kind"] for b in first["outcomes"]} <= {"true_positive", "wrong_class", "duplicate", "localisation",
                                                       "background", "missed"}
    for kind in ("missed", "background", "errors"):
        found = _get(cockpit, f"/api/datasets/{f.dataset}?model={f.good}&split=test&kind={kind}").json()
        expected = [i for i in analysis.images if (i.counts.errors if kind == "errors" else getattr(i.counts, kind))]
        assert found["matching"] == len(expected), kind
    page = _get(cockpit, f"/datasets/{f.dataset}?model={f.good}&split=test&sort=score").text
    assert 'class="outcome ' in page and "worst first" in page


def test_image_page_draws_judged_boxes_with_neighbours_and_annotation(cockpit, predicted):
    f = predicted
    analysis, _ = analyse(f.settings(), f.swapped, f.dataset, "test", progress=False)
    ranked = [i for i in sorted(analysis.images, key=lambda i: (-i.error_score, i.name))]
    middle = ranked[1]
    name = Path(middle.name).name
    query = f"model={f.swapped}&sort=score"
    detail = _get(cockpit, f"/api/datasets/{f.dataset}/test/{name}?{query}").json()
    outcomes = detail["outcomes"]
    assert [b["kind"] for b in outcomes["predictions"]] == [str(b.kind) for b in middle.boxes]
    assert outcomes["previous"] == Path(ranked[0].name).name and outcomes["next"] == Path(ranked[2].name).name
    assert outcomes["position"] == 2 and outcomes["selected"] == len(ranked)
    # the swapped detector calls each object by the other class: wrong class, named on the box
    assert any(b["kind"] == "wrong_class" and b["true_name"] != b["name"] for b in outcomes["predictions"])
    page = _get(cockpit, f"/datasets/{f.dataset}/test/{name}?{query}").text
    assert 'id="show-predictions"' in page and 'id="prev"' in page and 'id="next"' in page
    assert "(is " in page  # a wrong-class box says what the label is
    assert detail["annotation"] is None  # the fall root was written by hand: nothing in the index


def test_confusion_cells_link_to_their_images(cockpit, predicted):
    f = predicted
    analysis, _ = analyse(f.settings(), f.swapped, f.dataset, "test", progress=False)
    data = _get(cockpit, f"/api/errors/{f.dataset}?model={f.swapped}&split=test").json()
    assert data["confusion"] == analysis.confusion.to_dict()
    cm = data["confusion"]
    classes = cm["classes"]
    page = _get(cockpit, f"/errors/{f.dataset}?model={f.swapped}&split=test").text
    checked = 0
    for i, true in enumerate(classes):
        for j, pred in enumerate(classes):
            if not cm["counts"][i][j]:
                continue
            t = "background" if true == -1 else true
            p = "background" if pred == -1 else pred
            assert f"true={t}&amp;pred={p}" in page
            images = _get(cockpit, f"/api/datasets/{f.dataset}?model={f.swapped}&split=test&true={t}&pred={p}").json()
            expected = set()
            for image in analysis.images:
                for b in image.boxes:
                    label_side = str(b.kind) in ("true_positive", "wrong_class", "missed")
                    row = b.true_cls if label_side else -1
                    column = -1 if str(b.kind) == "missed" else b.cls
                    if (row, column) == (true, pred):
                        expected.add(Path(image.name).name)
            assert {i["image"] for i in images["images"]} == expected, (t, p)
            checked += 1
    assert checked >= 2


def test_pages_never_predict(cockpit, predicted):
    f = predicted
    model = resolve_model(f.settings(), f.good)
    with open_store(f.settings(), model) as store:
        before = (len(store.known()), [v.__dict__ for v in store.views()])
    page = _get(cockpit, f"/errors/{f.dataset}?model={f.good}&split=valid").text
    assert f"azaion predict-dataset --model {f.good} --dataset {f.dataset} --split valid" in page
    browser = _get(cockpit, f"/api/datasets/{f.dataset}?model={f.good}&split=valid").json()
    assert browser["images"] == [] and "predict-dataset" in browser["analysis"]["command"]
    with open_store(f.settings(), model) as store:
        assert (len(store.known()), [v.__dict__ for v in store.views()]) == before
    index = _get(cockpit, "/api/errors").json()["models"]
    assert {m["ref"] for m in index} == {f.good, f.swapped}
    assert all(any(v["split"] == "test" for v in m["views"]) for m in index)


def test_compare_two_runs(cockpit, predicted):
    f = predicted
    data = _get(cockpit, "/api/compare").json()  # no production: the two newest finished runs
    assert (data["a"], data["b"]) == (f.good, f.swapped)
    c = data["comparison"]
    expected = compare_models(f.settings(), f.good, f.swapped, f.dataset, "test", progress=False).to_dict()
    assert c == json.loads(json.dumps(expected))  # the CLI's figures (`azaion analyse --compare`)
    assert c["classes"] and all(row["ap50_delta"] is not None for row in c["classes"] if row["instances"])
    assert len(data["curves"]["a"]["epoch"]) == 5 and len(data["curves"]["b"]["epoch"]) == 6
    page = _get(cockpit, f"/compare?a={f.good}&b={f.swapped}").text
    assert "mAP50: objects found at overlap" in page and "metrics/mAP50(B)" not in page
    assert page.count('class="chart curves"') == 6 and 'class="chart bars"' in page
    assert f"A: {f.good}" in page and f"B: {f.swapped}" in page


def test_cycle_panel(cockpit, predicted):
    f = predicted
    overview = _get(cockpit, "/api/overview").json()["cycle"]
    assert overview["min_new"] == f.settings().lifecycle.cycle_min_new and overview["last"] is None
    assert overview["next_at"] is None and overview["validated"] == len(f.annotations)
    history = f.layout().cycle_history
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text(json.dumps({"cycle": "2026-03-01T10:00:00+00:00", "ended": "2026-03-01T11:00:00+00:00",
                                   "action": "refused", "run": f.swapped, "reasons": ["class fell"]}) + "\n")
    try:
        app = create_app(f.settings(CYCLE_INTERVAL_S="1800"), warm=False)
        data = TestClient(app, base_url="http://127.0.0.1").get("/api/overview").json()["cycle"]
        assert data["last"]["action"] == "refused" and data["next_at"] == "2026-03-01T11:30:00+00:00"
        page = TestClient(app, base_url="http://127.0.0.1").get("/").text
        assert 'id="cycle"' in page and "class fell" in page and "CYCLE_MIN_NEW" in page
    finally:
        history.unlink()


@pytest.mark.parametrize("query", ["model=..%2Fx", "model=a%2Fb", "model=good&kind=bogus", "model=good&sort=name",
                                   "model=good&conf=2", "model=good&conf=0", "model=good&conf=abc",
                                   "model=good&true=99&pred=0", "model=good&true=0", "model=good&split=bogus"])
def test_bad_parameters_answer_400(cockpit, predicted, query):
    f = predicted
    query = query.replace("good", f.good)
    image = _get(cockpit, f"/api/datasets/{f.dataset}?split=test").json()["images"][0]["image"]
    for path in (f"/api/datasets/{f.dataset}", f"/datasets/{f.dataset}", f"/api/errors/{f.dataset}",
                 f"/api/datasets/{f.dataset}/test/{image}"):
        response = cockpit.get(f"{path}?{query}")
        if path.startswith("/api/errors") and ("true=" in query or "kind=" in query or "sort=" in query):
            continue  # the error view takes no cell, kind or order
        if path.endswith(image) and "split=" in query:
            continue  # the image page's split is in its path
        assert response.status_code == 400, (path, query, response.status_code, response.text[:300])
    for query in ("a=..%2Fx", "b=a%2Fb", "split=x", "conf=-1", "dataset=..%2F"):
        assert cockpit.get(f"/api/compare?{query}").status_code == 400, query


def test_new_routes_need_a_login(predicted):
    f = predicted
    anonymous = TestClient(create_app(f.settings(COCKPIT_TOKEN=TOKEN), warm=False), base_url="http://127.0.0.1")
    for path in ("/errors", f"/errors/{f.dataset}", "/compare", f"/datasets/{f.dataset}?model={f.good}"):
        response = anonymous.get(path, headers={"accept": "text/html"}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")
    for path in ("/api/errors", f"/api/errors/{f.dataset}", "/api/compare"):
        assert anonymous.get(path).status_code == 401


def test_weather_variants_share_a_family_colour():
    family = "#ff0000"
    norm, wint, night = variant_colour(family, 3), variant_colour(family, 23), variant_colour(family, 43)
    assert norm == family and len({norm, wint, night}) == 3

    def lightness(colour):
        return sum(int(colour[i:i + 2], 16) for i in (1, 3, 5))

    assert lightness(night) < lightness(norm) < lightness(wint)
    assert variant_colour("#ffffff", 23) != "#ffffff"  # white's winter variant is not white again
