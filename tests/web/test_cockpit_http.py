"""`azaion serve` over real HTTP on a tree made by the consumer, formation and training."""

import json
import re
import time

from tests.conftest import run_azaion
from tests.web.conftest import CORRUPTED, MODEL_KEY, TOKEN, busiest_class, rejected_reasons


def cli_json(env: dict, *args: str):
    result = run_azaion(*args, "--json", env=env)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    lines = result.stdout.splitlines()  # the indented document follows any JSON log lines
    start = next(i for i, line in enumerate(lines) if line in ("{", "["))
    return json.loads("\n".join(lines[start:]))


def eventually_equal(server, path: str, expected, seconds: float = 15.0):
    """The API serves the newest computed value and recomputes when the tree changed."""
    deadline = time.monotonic() + seconds
    while True:
        got = server.json(path)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_api_status_is_what_azaion_status_json_prints(server, web_tree):
    expected = cli_json(web_tree["env"], "status")
    assert eventually_equal(server, "/api/status", expected) == expected
    assert expected["areas"]["data"]["images"] == 35 and expected["rejected"]["messages"] == 4
    assert expected["latest_dataset"]["name"] == web_tree["dataset"]


def test_api_health_is_what_azaion_health_json_prints(server, web_tree):
    expected = cli_json(web_tree["env"], "health")
    got = server.json("/api/health")
    assert got.keys() == expected.keys()
    assert [(c["name"], c["status"]) for c in got["checks"]] == [(c["name"], c["status"]) for c in expected["checks"]]
    assert got["healthy"] == expected["healthy"]
    broker = next(c for c in got["checks"] if c["name"] == "broker")
    assert broker["status"] == "fail" and "unreachable" in broker["detail"]  # nothing listens on RABBITMQ_PORT


def test_overview_shows_every_check_and_the_counts(server, web_tree):
    status = server.json("/api/status")
    page = server.get("/").text
    for check in server.json("/api/health")["checks"]:
        assert f"<td>{check['name']}</td>" in page
    data = re.search(r'data-area="data"><td>data</td><td class="num">(\d+)</td>', page)
    assert data and int(data.group(1)) == status["areas"]["data"]["images"]
    assert f'href="/datasets/{web_tree["dataset"]}"' in page and f'href="/runs/{web_tree["run"]}"' in page
    assert "epoch 2/2" in page
    assert 'data-refresh="5"' in page


def test_runs_and_run_curves(server, web_tree):
    run = web_tree["run"]
    runs = server.json("/api/runs")
    assert [r["run"] for r in runs] == [run] and runs[0]["status"] == "finished"
    assert runs[0]["dataset"] == web_tree["dataset"] and runs[0]["metrics"]["epochs"] == 2
    detail = server.json(f"/api/runs/{run}")
    assert detail["curves"]["epoch"] == [1.0, 2.0]
    assert "metrics/mAP50(B)" in detail["curves"]["metrics"] and "train/box_loss" in detail["curves"]["losses"]
    page = server.get(f"/runs/{run}").text
    assert page.count('<svg class="chart"') == 2 and page.count("<polyline") >= 6
    assert server.get("/runs/no-such-run").status_code == 404


def test_datasets_figures_come_from_the_manifest(server, web_tree):
    manifest = json.loads((web_tree["root"] / "datasets" / web_tree["dataset"] / "manifest.json").read_text())
    [dataset] = server.json("/api/datasets")
    assert dataset["name"] == web_tree["dataset"] and dataset["images"] == manifest["counts"]
    assert sum(dataset["images"].values()) == 35  # 35 validated + one damaged, quarantined by formation
    page = server.get("/datasets").text
    for split, count in manifest["counts"].items():
        assert f'data-split="{split}">{count}</td>' in page


def test_dataset_browser_filters_by_split_and_class_and_pages(server, web_tree):
    name = web_tree["dataset"]
    root = web_tree["root"] / "datasets" / name
    cls = busiest_class(root)
    with_class = {p.stem for p in root.glob("*/labels/*.txt")
                  if any(int(line.split()[0]) == cls for line in p.read_text().splitlines())}
    data = server.json(f"/api/datasets/{name}?class={cls}")
    assert data["matching"] == len(with_class) > 0
    assert {i["image"].rsplit(".", 1)[0] for i in data["images"]} == with_class
    assert all(any(b["cls"] == cls for b in i["boxes"]) for i in data["images"])
    valid = server.json(f"/api/datasets/{name}?split=valid")
    assert valid["matching"] == len(list((root / "valid" / "images").iterdir()))
    assert {i["split"] for i in valid["images"]} == {"valid"}
    everything = server.json(f"/api/datasets/{name}")
    assert everything["matching"] == 35 and everything["pages"] == 1 and everything["page"] == 1
    assert server.json(f"/api/datasets/{name}?page=99")["page"] == 1  # clamped to the last page
    page = server.get(f"/datasets/{name}?class={cls}").text
    assert page.count('class="thumb"') == len(with_class)
    assert page.count('<rect class="box"') >= len(with_class)


def test_image_and_its_label_lines(server, web_tree):
    name = web_tree["dataset"]
    item = server.json(f"/api/datasets/{name}?split=train")["images"][0]
    image_file = web_tree["root"] / "datasets" / name / "train" / "images" / item["image"]
    label_file = image_file.parent.parent / "labels" / (image_file.stem + ".txt")
    response = server.get(f"/files/datasets/{name}/train/{item['image']}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == image_file.read_bytes()
    detail = server.json(f"/api/datasets/{name}/train/{item['image']}")
    assert detail["label_lines"] == label_file.read_text().splitlines()
    page = server.get(f"/datasets/{name}/train/{item['image']}").text
    assert page.count('<rect class="box"') == len(detail["label_lines"])
    assert server.get(f"/files/datasets/{name}/valid/{item['image']}").status_code == 404  # not in that split


def test_quarantine_lists_reasons_and_serves_the_raw_entry(server, web_tree):
    root = web_tree["root"]
    data = server.json("/api/quarantine")
    assert data["reasons"]["rejected"] == rejected_reasons(root) and len(data["rejected"]) == 4
    [corrupted] = data["corrupted"]
    assert corrupted["name"] == CORRUPTED and "expected 5 fields" in corrupted["detail"]
    reason = data["rejected"][0]["reason"]
    filtered = server.json(f"/api/quarantine?reason={reason}")
    assert filtered["rejected"] and {r["reason"] for r in filtered["rejected"]} == {reason}
    assert filtered["corrupted"] == []
    offset = data["rejected"][0]["offset"]
    raw = server.get(f"/files/queue-rejected/{offset}.bin")
    assert raw.status_code == 200 and raw.content == (root / "queue-rejected" / f"{offset}.bin").read_bytes()
    assert "attachment" in raw.headers["content-disposition"]
    image = server.get(f"/files/data-corrupted/{CORRUPTED}")
    stored = next((root / "data-corrupted" / "images").iterdir()).read_bytes()
    assert image.status_code == 200 and image.content == stored
    page = server.get("/quarantine").text
    assert page.count('class="rejected"') == 4 and CORRUPTED in page


def test_read_only_without_token(server, web_tree):
    page = server.get("/models").text
    assert 'class="promote"' not in page and 'action="/api/models' not in page and "read-only" in page
    response = server.post(f"/api/models/{web_tree['run']}/promote", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 403 and "read-only" in response.json()["error"]
    assert server.post("/api/models/rollback").status_code == 403


def test_token_is_required_and_never_shown(token_server, web_tree):
    run = web_tree["run"]
    assert token_server.post(f"/api/models/{run}/promote").status_code == 401
    wrong = token_server.post(f"/api/models/{run}/promote", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    cross = token_server.post(f"/api/models/{run}/promote", data={"token": TOKEN, "target": "azaion"},
                              headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert 'class="promote"' in token_server.get("/models").text
    for path in ("/", "/runs", f"/runs/{run}", "/models", "/datasets", f"/datasets/{web_tree['dataset']}",
                 "/quarantine", "/api/status", "/api/health", "/api/overview", "/api/models", "/api/runs"):
        body = token_server.get(path).text
        assert TOKEN not in body and MODEL_KEY not in body, path


def test_promote_through_the_gate_then_rollback_refused(token_server, web_tree, tmp_path):
    run, target = web_tree["run"], f"local:{tmp_path / 'cdn'}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = token_server.post(f"/api/models/{run}/promote", params={"target": target}, headers=headers)
    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["action"] == "promote" and decision["production"] is None
    models = token_server.json("/api/models")
    key = decision["target"]
    assert models["production"][key] == run
    assert models["versions"] == list(reversed(cli_json(web_tree["env"], "models", "list")))
    again = token_server.post(f"/api/models/{run}/promote", params={"target": target}, headers=headers)
    assert again.json()["action"] == "unchanged"
    rollback = token_server.post("/api/models/rollback", params={"target": target}, headers=headers)
    assert rollback.status_code == 400 and "nothing to roll back" in rollback.json()["error"]


def test_binding_beyond_loopback_needs_a_token(web_tree):
    result = run_azaion("serve", "--host", "0.0.0.0", "--port", "1", env=web_tree["env"])
    assert result.returncode == 2
    assert "COCKPIT_TOKEN" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_a_port_in_use_is_a_clear_error(server, web_tree):
    port = server.url.rsplit(":", 1)[1]
    result = run_azaion("serve", "--port", port, env=web_tree["env"], timeout=120)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr + result.stdout
