"""`azaion serve` over real HTTP on a tree made by the consumer, formation and training."""

import json
import re
import time

import httpx

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


def test_read_only_cockpit_refuses_foreign_hosts(server):
    """DNS rebinding: a page of attacker.example resolved to 127.0.0.1 reads nothing."""
    response = server.get("/api/status", headers={"Host": "attacker.example"})
    assert response.status_code == 400 and "COCKPIT_ALLOWED_HOSTS" in response.json()["error"]
    assert "areas" not in response.text
    assert server.get("/api/status", headers={"Host": "localhost:8600"}).status_code == 200


def test_token_is_required_and_never_shown(token_server, web_tree):
    run = web_tree["run"]
    for path in ("/api/status", "/api/quarantine", f"/api/datasets/{web_tree['dataset']}", "/api/models",
                 f"/files/queue-rejected/{token_server.json('/api/quarantine')['rejected'][0]['offset']}.bin"):
        response = token_server.get(path, auth=False)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", path
    page = token_server.get("/quarantine", auth=False, headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fquarantine"
    assert token_server.post(f"/api/models/{run}/promote", auth=False).status_code == 401
    wrong = token_server.post(f"/api/models/{run}/promote", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    cross = token_server.post(f"/api/models/{run}/promote", data={"target": "azaion"},
                              headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert 'class="promote"' in token_server.get("/models").text
    for path in ("/", "/runs", f"/runs/{run}", "/models", "/datasets", f"/datasets/{web_tree['dataset']}",
                 "/quarantine", "/api/status", "/api/health", "/api/overview", "/api/models", "/api/runs", "/login"):
        body = token_server.get(path).text
        assert TOKEN not in body and MODEL_KEY not in body, path


def test_login_flow_over_real_http(token_server, web_tree, tmp_path):
    """A browser's way in, through the real `azaion serve`: redirect to /login, the token for a
    cookie, pages, a POST with the page's CSRF token, log out."""
    with httpx.Client(base_url=token_server.url, timeout=120, headers={"Accept": "text/html"}) as browser:
        first = browser.get("/models", follow_redirects=True)
        assert first.url.path == "/login" and 'name="token"' in first.text and "set-cookie" not in first.headers
        refused = browser.post("/login", data={"token": TOKEN[:-1], "next": "/models"})
        assert refused.status_code == 401 and "wrong token" in refused.text and not browser.cookies
        response = browser.post("/login", data={"token": TOKEN, "next": "/models"})
        assert response.status_code == 303 and response.headers["location"] == "/models"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        page = browser.get("/models")
        assert page.status_code == 200 and 'id="who">cockpit:' in page.text and TOKEN not in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        target = f"local:{tmp_path / 'cdn'}"
        assert browser.post("/api/models/rollback", data={"target": target}).status_code == 403  # no CSRF token
        done = browser.post("/api/models/rollback", data={"target": target, "csrf": csrf})
        assert done.status_code == 400 and "nothing to roll back" in done.text  # past the checks, to the work
        assert browser.get("/api/status").status_code == 200
        kept = browser.cookies.get("azaion_cockpit")
        assert browser.post("/logout", data={"csrf": csrf}).status_code == 303
    assert httpx.get(token_server.url + "/api/status", headers={"Cookie": f"azaion_cockpit={kept}"}).status_code == 401


def test_promote_through_the_gate_then_rollback_refused(token_server, web_tree, tmp_path):
    run, target = web_tree["run"], f"local:{tmp_path / 'cdn'}"
    response = token_server.post(f"/api/models/{run}/promote", params={"target": target})
    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["action"] == "promote" and decision["production"] is None
    assert decision["event"]["by"] == "cockpit@cockpit"  # the operator, not the server's user
    models = token_server.json("/api/models")
    key = decision["target"]
    assert models["production"][key] == run
    assert models["versions"] == list(reversed(cli_json(web_tree["env"], "models", "list")))
    history = (web_tree["root"] / "models" / "published" / "models" / "history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["by"] == "cockpit@cockpit" and json.loads(history[-1])["target"] == key
    again = token_server.post(f"/api/models/{run}/promote", params={"target": target})
    assert again.json()["action"] == "unchanged"
    rollback = token_server.post("/api/models/rollback", params={"target": target})
    assert rollback.status_code == 400 and "nothing to roll back" in rollback.json()["error"]


def test_a_named_operator_is_recorded_in_the_history(web_tree, tmp_path):
    """COCKPIT_USERS: promoting from the cockpit records who clicked (NAME@cockpit)."""
    from starlette.testclient import TestClient

    from azaion_training.settings import load_settings
    from azaion_training.web.app import create_app
    from azaion_training.web.auth import add_user

    users = tmp_path / "users"
    token = add_user(users, "olena")
    app = create_app(load_settings(env={**web_tree["env"], "COCKPIT_USERS": str(users)}), warm=False)
    with TestClient(app, base_url="http://127.0.0.1") as browser:
        assert browser.post("/login", data={"token": token}, follow_redirects=False).status_code == 303
        page = browser.get("/models", headers={"Accept": "text/html"}).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        target = f"local:{tmp_path / 'olena-cdn'}"
        response = browser.post(f"/api/models/{web_tree['run']}/promote", data={"target": target, "csrf": csrf})
    assert response.status_code == 200, response.text
    assert response.json()["event"]["by"] == "olena@cockpit"
    events = [json.loads(line) for line in
              (web_tree["root"] / "models" / "published" / "models" / "history.jsonl").read_text().splitlines()]
    assert [e["by"] for e in events if e["target"].endswith("olena-cdn")] == ["olena@cockpit"]


def test_binding_beyond_loopback_needs_a_long_token(web_tree):
    result = run_azaion("serve", "--host", "0.0.0.0", "--port", "1", env=web_tree["env"])
    assert result.returncode == 2
    assert "COCKPIT_TOKEN" in result.stderr and "Traceback" not in result.stderr + result.stdout
    short = run_azaion("serve", "--host", "0.0.0.0", "--port", "1", env={**web_tree["env"], "COCKPIT_TOKEN": "a"})
    assert short.returncode == 2 and "at least 32" in short.stderr


def test_a_port_in_use_is_a_clear_error(server, web_tree):
    port = server.url.rsplit(":", 1)[1]
    result = run_azaion("serve", "--port", port, env=web_tree["env"], timeout=120)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr + result.stdout
