"""Who gets in (docs/cockpit.md): with COCKPIT_TOKEN or COCKPIT_USERS every route but /healthz
and /login needs a session cookie or a Bearer token; cookies are signed, expire and carry a
CSRF token every POST must echo; the Host header is checked; bodies are capped before anything
reads them; every parameter is checked (400, never 500); and the CLI refuses weak setups (exit
2). The app runs in Starlette's TestClient where a real server adds nothing, in uvicorn for the
body cap."""

import os
import re
import socket
import stat
import threading
import time

import pytest
import uvicorn
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from azaion_training.errors import ConfigError
from azaion_training.settings import load_settings
from azaion_training.web.app import create_app
from azaion_training.web.auth import COOKIE, Credentials, add_user, load_users
from tests.conftest import run_azaion
from tests.web.conftest import SECRET, free_port, handmade_tree

TOKEN = "access-test-token-0123456789abcdef-xyz"
SAMPLE = {"run": "azaion-run", "name": "handmade", "split": "train", "image": "ok.jpg", "file": "5.json",
          "path": "no-such-page"}
PUBLIC = {"/healthz", "/login"}


def make_app(root, **env):
    settings = load_settings(env={"AZAION_ROOT_DIR": str(root), **env})
    return create_app(settings, warm=False)


def client(app, **kwargs) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1:8600", **kwargs)


@pytest.fixture
def tree(tmp_path, layout):
    handmade_tree(layout, tmp_path / "outside")
    return layout.root


@pytest.fixture
def app(tree):
    return make_app(tree, COCKPIT_TOKEN=TOKEN)


def login(browser: TestClient, token: str = TOKEN) -> str:
    """Log in; returns the CSRF token of the session (from a page's form)."""
    response = browser.post("/login", data={"token": token, "next": "/models"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    page = browser.get("/models", headers={"accept": "text/html"}).text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def every_request(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the app lists, new ones included."""
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            found.append(("GET", f"{route.path}/cockpit.css"))
        elif isinstance(route, Route):
            path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: SAMPLE[m.group(1)], route.path)
            found += [(method, path) for method in sorted(route.methods or ["GET"]) if method != "HEAD"]
    return found


def test_every_route_needs_a_login(app):
    requests = every_request(app)
    assert len(requests) >= 25 and ("POST", "/api/models/rollback") in requests
    anonymous, bearer = client(app), client(app, headers={"Authorization": f"Bearer {TOKEN}"})
    for method, path in requests:
        if path in PUBLIC:
            continue
        for accept in ("text/html", "application/json"):
            response = anonymous.request(method, path, headers={"accept": accept}, follow_redirects=False)
            if method == "GET" and accept == "text/html" and not path.startswith(("/api/", "/files/")):
                assert response.status_code == 303, (method, path, response.status_code)
                assert response.headers["location"].startswith("/login?next=")
            else:
                assert response.status_code == 401, (method, path, accept, response.status_code)
                assert response.headers["www-authenticate"] == "Bearer"
            assert SECRET not in response.text and "handmade" not in response.text
        if method == "GET":  # the same request with the token gets through (the sample path is right)
            assert bearer.get(path).status_code in (200, 404), path
    assert anonymous.get("/healthz").text == "ok"
    assert anonymous.get("/login").status_code == 200


def test_login_sets_a_strict_http_only_cookie_that_expires(app):
    browser = client(app)
    page = browser.get("/login?next=/datasets")
    assert 'name="token"' in page.text and 'value="/datasets"' in page.text and TOKEN not in page.text
    wrong = browser.post("/login", data={"token": "nope", "next": "/datasets"}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong token" in wrong.text and "set-cookie" not in wrong.headers
    response = browser.post("/login", data={"token": TOKEN, "next": "/datasets"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/datasets"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Max-Age=43200" in cookie and "Secure" not in cookie  # plain http here; https adds Secure
    assert TOKEN not in cookie
    assert browser.get("/api/status").status_code == 200
    https = TestClient(app, base_url="https://127.0.0.1:8600")
    assert "Secure" in https.post("/login", data={"token": TOKEN}, follow_redirects=False).headers["set-cookie"]
    # only a path of this site is a place to go after logging in
    for elsewhere in ("//evil.example/x", "https://evil.example", "/\\evil.example"):
        response = client(app).post("/login", data={"token": TOKEN, "next": elsewhere}, follow_redirects=False)
        assert response.headers["location"] == "/", elsewhere


def test_forged_tampered_and_expired_cookies_are_refused(app, tree):
    credentials: Credentials = app.state.cockpit.credentials
    good = credentials.issue("cockpit")
    payload, signature = good.split(".")
    other_key = Credentials("another-token-of-at-least-32-characters", {}).issue("cockpit")
    expired = credentials.issue("cockpit", now=time.time() - credentials.session_s - 1)
    import base64
    import json

    raised = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raised["exp"] += 10 ** 6
    tampered = base64.urlsafe_b64encode(json.dumps(raised).encode()).rstrip(b"=").decode() + "." + signature
    for value in (other_key, expired, tampered, f"{payload}.{signature[:-2]}xx", "garbage", payload, "a" * 5000,
                  credentials.issue("someone-unknown")):
        browser = client(app, cookies={COOKIE: value})
        assert browser.get("/api/status").status_code == 401, value[:40]
    assert client(app, cookies={COOKIE: good}).get("/api/status").status_code == 200
    # another token: every session of the old one ends
    assert client(make_app(tree, COCKPIT_TOKEN=TOKEN + "-rotated"), cookies={COOKIE: good}).get(
        "/api/status").status_code == 401


def test_posts_need_the_session_csrf_token(app, tmp_path):
    browser = client(app)
    csrf = login(browser)
    target = {"target": f"local:{tmp_path / 'cdn'}"}
    assert browser.post("/api/models/rollback", data=target).status_code == 403
    wrong = browser.post("/api/models/rollback", data={**target, "csrf": csrf[:-1] + "x"})
    assert wrong.status_code == 403 and "CSRF" in wrong.json()["error"]
    other = client(app)
    assert login(other) != csrf  # one per session
    assert browser.post("/api/models/rollback", data={**target, "csrf": login(other)}).status_code == 403
    passed = browser.post("/api/models/rollback", data={**target, "csrf": csrf})
    assert passed.status_code == 400 and "nothing to roll back" in passed.json()["error"]  # got to the work
    header = browser.post("/api/models/rollback", data=target, headers={"X-CSRF-Token": csrf})
    assert header.status_code == 400
    cross = browser.post("/api/models/rollback", data={**target, "csrf": csrf},
                         headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    # a Bearer client needs no CSRF token: a browser never sends that header by itself
    scripted = client(app, headers={"Authorization": f"Bearer {TOKEN}"}).post("/api/models/rollback", data=target)
    assert scripted.status_code == 400
    # logging out ends the session for good, even if the cookie is replayed
    cookie = browser.cookies.get(COOKIE)
    assert browser.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert client(app, cookies={COOKIE: cookie}).get("/api/status").status_code == 401


def test_foreign_host_headers_are_refused(tree):
    app = make_app(tree, COCKPIT_TOKEN=TOKEN)
    anyone = client(app, headers={"Authorization": f"Bearer {TOKEN}"})
    for host in ("attacker.example", "attacker.example:8600", "127.0.0.1.attacker.example", "localhost.evil", ""):
        response = anyone.get("/api/status", headers={"host": host})
        assert response.status_code == 400 and "COCKPIT_ALLOWED_HOSTS" in response.json()["error"], host
        assert "localhost" not in response.text  # the allowed names are not told to a rebinding page
    for host in ("127.0.0.1", "127.0.0.1:9000", "localhost:8600", "LOCALHOST", "[::1]:8600", "[::1]"):
        assert anyone.get("/api/status", headers={"host": host}).status_code == 200, host
    assert anyone.get("/healthz", headers={"host": "probe.internal:8600"}).text == "ok"
    listed = client(make_app(tree, COCKPIT_TOKEN=TOKEN, COCKPIT_ALLOWED_HOSTS="cockpit.example.com, 10.0.0.5:8600"),
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert listed.get("/api/status", headers={"host": "cockpit.example.com:443"}).status_code == 200
    assert listed.get("/api/status", headers={"host": "10.0.0.5:8600"}).status_code == 200
    assert listed.get("/api/status", headers={"host": "10.0.0.5:8601"}).status_code == 400
    assert listed.get("/api/status", headers={"host": "127.0.0.1:8600"}).status_code == 400  # the list replaces


BAD = ["/api/datasets/handmade?page=²", "/api/datasets/handmade?page=-1", "/api/datasets/handmade?page=0",
       "/api/datasets/handmade?page=1.5", "/api/datasets/handmade?page=" + "9" * 5000,
       "/api/datasets/handmade?class=²", "/api/datasets/handmade?class=" + "7" * 5000,
       "/api/datasets/handmade?class=80", "/api/datasets/handmade?class=-3", "/api/datasets/handmade?split=bogus",
       "/api/datasets/.hidden", "/api/datasets/bad%20name", "/api/datasets/handmade/bogus/ok.jpg",
       "/api/datasets/handmade/train/%C2%B2.jpg", "/api/runs/.hidden", "/api/runs/%C2%B2",
       "/files/queue-rejected/abc.txt", "/files/queue-rejected/%C2%B2.bin", "/files/data-corrupted/.x",
       "/runs/azaion-run/report/.htaccess", "/api/quarantine?reason=" + "x" * 300,
       "/api/quarantine?reason=a%00b"]


@pytest.mark.parametrize("path", BAD)
def test_bad_parameters_are_400_with_a_message(app, path):
    browser = client(app, headers={"Authorization": f"Bearer {TOKEN}"})
    response = browser.get(path)
    assert response.status_code == 400, (path, response.status_code, response.text[:300])
    assert response.json()["error"] and "Traceback" not in response.text


def test_bad_parameters_on_pages_and_posts(app):
    browser = client(app)
    csrf = login(browser)
    page = browser.get("/datasets/handmade?class=²", headers={"accept": "text/html"})
    assert page.status_code == 400 and "class must be a whole number" in page.text and "Traceback" not in page.text
    assert browser.get("/datasets/handmade?page=99", headers={"accept": "text/html"}).status_code == 200  # clamped
    for path, data in (("/api/models/rollback", {"target": "bogus"}), ("/api/models/rollback", {"target": "x" * 2000}),
                       ("/api/models/.x/promote", {"target": "azaion"})):
        response = browser.post(path, data={**data, "csrf": csrf})
        assert response.status_code == 400 and response.json()["error"], path


def serve_in_thread(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, port


def raw(port: int, head: str, body: bytes = b"") -> tuple[str, float]:
    """Send a request byte for byte; (the status line, seconds until it came)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = sock.recv(4096).decode("latin-1")
    return answer.split("\r\n", 1)[0], time.monotonic() - started


def test_oversized_bodies_are_413_before_anything_reads_them(app):
    server, thread, port = serve_in_thread(app)
    try:
        host = f"Host: 127.0.0.1:{port}"
        # announced 300 MB, 9 bytes sent: answered at once, before the login check (no token here)
        for path in ("/login", "/api/models/rollback", "/api/status"):
            status, seconds = raw(port, f"POST {path} HTTP/1.1\n{host}\nContent-Length: 300000000\n"
                                        "Content-Type: application/x-www-form-urlencoded\n", b"token=abc")
            assert status == "HTTP/1.1 413 Request Entity Too Large" and seconds < 3, (path, status, seconds)
        # chunked, no length: refused once the count passes 64 KB
        chunk = b"8000\r\n" + b"a" * 0x8000 + b"\r\n"
        status, _ = raw(port, f"POST /login HTTP/1.1\n{host}\nTransfer-Encoding: chunked\n"
                              "Content-Type: application/x-www-form-urlencoded\n", chunk * 3 + b"0\r\n\r\n")
        assert status == "HTTP/1.1 413 Request Entity Too Large"
        # a small form still gets through to the login check
        status, _ = raw(port, f"POST /login HTTP/1.1\n{host}\nContent-Length: 9\n"
                              "Content-Type: application/x-www-form-urlencoded\n", b"token=abc")
        assert status == "HTTP/1.1 401 Unauthorized"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---------------------------------------------------------------------------------- operators


def test_named_operators_log_in_as_themselves(tree, tmp_path):
    users = tmp_path / "users"
    alice, bob = add_user(users, "alice"), add_user(users, "bob")
    assert stat.S_IMODE(users.stat().st_mode) == 0o600 and len(alice) >= 32
    text = users.read_text()
    assert alice not in text and bob not in text and text.startswith("alice:scrypt:")
    with pytest.raises(Exception, match="already in"):
        add_user(users, "alice")
    app = make_app(tree, COCKPIT_USERS=str(users))
    browser = client(app)
    login(browser, bob)
    page = browser.get("/models", headers={"accept": "text/html"}).text
    assert '<span class="muted" id="who">bob:' in page
    assert client(app, headers={"Authorization": f"Bearer {alice}"}).get("/api/status").status_code == 200
    assert client(app, headers={"Authorization": f"Bearer {TOKEN}"}).get("/api/status").status_code == 401
    renewed = add_user(users, "alice", replace=True)
    assert set(load_users(users)[0]) == {"alice", "bob"}
    fresh = make_app(tree, COCKPIT_USERS=str(users))
    assert client(fresh, headers={"Authorization": f"Bearer {alice}"}).get("/api/status").status_code == 401
    assert client(fresh, headers={"Authorization": f"Bearer {renewed}"}).get("/api/status").status_code == 200
    assert "alice" in repr(fresh.state.cockpit.credentials) and renewed not in repr(fresh.state.cockpit.credentials)


def test_users_file_must_be_private_and_well_formed(tree, tmp_path):
    users = tmp_path / "users"
    add_user(users, "alice")
    users.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        make_app(tree, COCKPIT_USERS=str(users))
    result = run_azaion("serve", "--port", str(free_port()), env={"AZAION_ROOT_DIR": str(tree),
                                                                    "COCKPIT_USERS": str(users)})
    assert result.returncode == 2 and "0640" in result.stderr and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr
    users.chmod(0o600)
    users.write_text(users.read_text() + f"mallory:{SECRET}\n")
    with pytest.raises(ConfigError, match=r"users:2: expected NAME:scrypt") as error:
        make_app(tree, COCKPIT_USERS=str(users))
    assert SECRET not in str(error.value)


def test_add_user_command_prints_the_token_once(tree, tmp_path):
    users = tmp_path / "cockpit-users"
    result = run_azaion("serve", "add-user", "carol", env={"AZAION_ROOT_DIR": str(tree), "COCKPIT_USERS": str(users)})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 32 and "\n" not in token and "shown only this once" in result.stderr
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600 and token not in users.read_text()
    assert load_users(users)[0]["carol"].matches(token)
    again = run_azaion("serve", "add-user", "carol", env={"AZAION_ROOT_DIR": str(tree), "COCKPIT_USERS": str(users)})
    assert again.returncode == 2 and "--replace" in again.stderr
    unset = run_azaion("serve", "add-user", "dave", env={"AZAION_ROOT_DIR": str(tree)})
    assert unset.returncode == 2 and "COCKPIT_USERS is not set" in unset.stderr


@pytest.mark.parametrize("token, rule", [("a", "at least 32"), ("changeme", "at least 32"), (" ", "blank"),
                                         ("x" * 31, "at least 32")])
def test_weak_tokens_are_refused_beyond_loopback(tree, token, rule):
    for environment in ("production", "development"):
        result = run_azaion("serve", "--host", "0.0.0.0", "--port", "1",
                            env={"AZAION_ROOT_DIR": str(tree), "COCKPIT_TOKEN": token, "AZAION_ENV": environment})
        assert result.returncode == 2 and rule in result.stderr and "COCKPIT_TOKEN" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert len(token) < 5 or token not in result.stderr  # the token itself is never repeated


def test_models_page_says_when_a_promotion_would_fail_and_why(tree, tmp_path):
    """The fail-fast check of `azaion models promote`, shown before anyone clicks: without a
    model key a promotion to azaion cannot succeed, and the page says so (and the JSON twin)."""
    browser = client(make_app(tree, COCKPIT_TOKEN=TOKEN))
    login(browser)
    page = browser.get("/models", headers={"accept": "text/html"}).text
    assert 'id="promote-unavailable"' in page and "MODEL_ENCRYPTION_KEY is not set" in page
    readiness = browser.get("/api/models").json()["readiness"]
    assert any("MODEL_ENCRYPTION_KEY" in problem for problem in readiness["azaion"])
    ready = client(make_app(tree, COCKPIT_TOKEN=TOKEN, MODEL_ENCRYPTION_KEY="k" * 32,
                            AZAION_API_URL="http://127.0.0.1:9", AZAION_API_EMAIL="a@b.c", AZAION_API_PASSWORD="p"))
    login(ready)
    problems = ready.get("/api/models").json()["readiness"]["azaion"]
    assert problems and "cannot be reached" in problems[0] and "MODEL_ENCRYPTION_KEY" not in problems[0]
