"""The cockpit's cross-cutting checks, as pure ASGI middleware wrapped around every route
(outermost first; docs/cockpit.md):

1. BodyLimit: a request body over MAX_BODY bytes answers 413 before anything reads it (a
   Content-Length over the cap at once, a chunked body as soon as the count passes it).
2. AllowedHosts: a Host header outside COCKPIT_ALLOWED_HOSTS answers 400 (DNS rebinding).
3. Authenticate: with credentials configured, every path but PUBLIC needs a session cookie or
   `Authorization: Bearer TOKEN` (a page redirects to /login, anything else answers 401); a
   state-changing request must come from the cockpit's own origin and, with a cookie, carry
   the session's CSRF token (form field `csrf` or header X-CSRF-Token), else 403.

Each sets nothing but plain responses; the operator's name reaches the routes as
`request.state.operator` (None on an open, loopback-only cockpit), the CSRF token as
`request.state.csrf`.
"""

import hmac
import json
from collections.abc import Awaitable, Callable
from html import escape
from typing import Any
from urllib.parse import parse_qs, quote

from azaion_training.web.auth import COOKIE, Credentials

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 64 * 1024
PUBLIC = frozenset({"/healthz", "/login"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"referrer-policy", b"same-origin"),
]


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def wants_json(scope: Scope) -> bool:
    return (scope["path"].startswith(("/api/", "/files/")) or header(scope, b"authorization") is not None
            or "text/html" not in (header(scope, b"accept") or ""))


async def refuse(scope: Scope, send: Send, status: int, message: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A plain refusal: JSON {"error": message} for scripts, a small HTML page for a browser."""
    if wants_json(scope):
        body, kind = json.dumps({"error": message}).encode(), b"application/json"
    else:
        body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Refused</title></head>'
                f'<body><h1>Refused</h1><p id="message">{escape(message)}</p></body></html>').encode()
        kind = b"text/html; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over `limit` bytes, decided before the app reads it; also adds the
    security headers to every response."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body over {self.limit // 1024} KB: the cockpit takes small forms only"
        length = header(scope, b"content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                return await refuse(scope, send, 400, "bad Content-Length header")
            if int(length) > self.limit:
                return await refuse(scope, send, 413, too_large)
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, counted, with_headers)
        except BodyTooLarge:
            if not started:
                await refuse(scope, send, 413, too_large)


def split_host(value: str) -> tuple[str, str | None]:
    """("name", "port" or None) of a Host header or an allow-list entry; IPv6 in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") and rest[1:] else None
    if value.count(":") == 1:
        name, port = value.split(":")
        return name, port or None
    return value, None


class AllowedHosts:
    """400 unless the Host header is allowed (GET /healthz is answered for any Host)."""

    def __init__(self, app: ASGIApp, allowed: list[str]):
        self.app = app
        self.allowed = [split_host(entry) for entry in allowed if entry.strip()]

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        name, port = split_host(host)
        return any(name == allowed and (allowed_port is None or port == allowed_port)
                   for allowed, allowed_port in self.allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/healthz" and not self.allows(header(scope, b"host")):
            # the allowed names are not listed: a rebinding page could read them here
            return await refuse(scope, send, 400, "this Host header is not served: add the name you browse "
                                "to to COCKPIT_ALLOWED_HOSTS (name or name:port, comma-separated)")
        await self.app(scope, receive, send)


def cookie_value(scope: Scope, name: str) -> str | None:
    for part in (header(scope, b"cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def bearer(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def same_origin(scope: Scope) -> bool:
    """False for a request a browser marks as coming from another site."""
    origin = header(scope, b"origin")
    own = f"{scope.get('scheme', 'http')}://{header(scope, b'host') or ''}"
    if origin is not None and origin != own:
        return False
    return header(scope, b"sec-fetch-site") not in ("cross-site", "same-site")


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class Authenticate:
    def __init__(self, app: ASGIApp, credentials: Credentials):
        self.app, self.credentials = app, credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        state["operator"], state["csrf"] = None, None
        method, path = scope["method"], scope["path"]
        if method not in SAFE_METHODS and not same_origin(scope):
            return await refuse(scope, send, 403, "cross-origin request refused")
        if not self.credentials.protected:  # loopback only (check_bind), read-only
            return await self.app(scope, receive, send)
        token = bearer(scope)
        session = None
        if token is not None:
            operator = self.credentials.operator_of(token) if token else None
            if operator is None:
                return await refuse(scope, send, 401, "a valid token is needed: Authorization: Bearer TOKEN",
                                    [(b"www-authenticate", b"Bearer")])
        else:
            session = self.credentials.session(cookie_value(scope, COOKIE))
            operator = session.operator if session else None
        if operator is None and path not in PUBLIC:
            if method in ("GET", "HEAD") and not wants_json(scope):
                query = scope.get("query_string", b"").decode("latin-1")
                target = quote(path + (f"?{query}" if query else ""), safe="")
                location = f"/login?next={target}".encode()
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", location), (b"content-length", b"0")]})
                return await send({"type": "http.response.body", "body": b""})
            return await refuse(scope, send, 401, "log in first (/login), or send Authorization: Bearer TOKEN",
                                [(b"www-authenticate", b"Bearer")])
        state["operator"] = operator
        state["csrf"] = session.csrf if session else None
        if session is not None and method not in SAFE_METHODS and path not in PUBLIC:
            body = await read_body(receive)  # BodyLimit has capped it
            given = header(scope, b"x-csrf-token")
            if given is None and (header(scope, b"content-type") or "").startswith(
                    "application/x-www-form-urlencoded"):
                given = (parse_qs(body.decode("utf-8", "replace")).get("csrf") or [""])[-1]
            if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
                return await refuse(scope, send, 403, "missing or wrong CSRF token: reload the page and try again")
            receive = replaying(body, receive)
        await self.app(scope, receive, send)
