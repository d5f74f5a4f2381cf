"""The cockpit's ASGI app: server-rendered pages with a JSON twin each, over the same
functions as the CLI (`azaion status`, `azaion health`, training runs, dataset manifests,
queue-rejected records). Access (docs/cockpit.md): loopback-only and read-only without
credentials; with COCKPIT_TOKEN or COCKPIT_USERS every route but /healthz and /login needs a
login, checked by the middleware in guard.py together with the Host allow-list, the body cap
and CSRF. Every file a page shows is read through rootfiles.open_inside (never beyond the
data root, never a FIFO or device); files are served only by names the server resolves itself
inside the data root (docs/data-tree.md)."""

import mimetypes
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from azaion_training.classes import load_classes, model_class_names
from azaion_training.layout import Layout
from azaion_training.ops.health import HealthOptions, run_health
from azaion_training.report.status import collect_status
from azaion_training.rootfiles import open_inside
from azaion_training.settings import Settings
from azaion_training.web import guard
from azaion_training.web.auth import Credentials, check_bind, is_loopback  # noqa: F401  (the CLI's imports)
from azaion_training.web.cache import Refreshing, tree_signature
from azaion_training.web.colours import UNKNOWN, variant_colour
from azaion_training.web.datasets import DatasetIndexes
from azaion_training.web.errors import KIND_NAMES, OUTCOME_COLOURS, ErrorViews
from azaion_training.web.params import BadRequest
from azaion_training.web.quarantine import Quarantine

HERE = Path(__file__).parent
HEALTH_TTL_S = 30.0  # `azaion health` probes the broker: at most one run per this many seconds
INGEST_WINDOW_S = 600.0
PAGE_SIZE = 48
CHUNK = 64 * 1024


class Cockpit:
    """What the routes share: settings, the tree, and the indexes kept between requests."""

    def __init__(self, settings: Settings, config: Path | None, health_options: HealthOptions | None,
                 credentials: Credentials | None = None):
        self.settings = settings
        self.layout = Layout(settings.paths)
        self.credentials = credentials or Credentials.from_settings(settings)
        self.classes = load_classes(self.layout.classes_json)
        self.class_names = model_class_names(self.layout.classes_json)
        self.status = Refreshing("status", lambda: collect_status(settings), lambda: tree_signature(self.layout))
        # thresholds from settings.health, as the CLI's; the cockpit only looks, it records no reading
        health_options = health_options or HealthOptions(record_reading=False)
        self.health = Refreshing("health", lambda: run_health(config, health_options).as_dict(),
                                 lambda: int(time.time() // HEALTH_TTL_S), min_interval_s=HEALTH_TTL_S)
        self.datasets = DatasetIndexes(self.layout)
        self.quarantine = Quarantine(self.layout)
        self.errors = ErrorViews(settings, self.layout)
        self.cycle = Refreshing("cycle", self._cycle, lambda: int(time.time() // HEALTH_TTL_S),
                                min_interval_s=HEALTH_TTL_S)  # counting new annotations lists data/labels
        self._offsets: deque[tuple[float, int]] = deque()
        self._offsets_lock = threading.Lock()
        self.css = (HERE / "static" / "cockpit.css").read_text(encoding="utf-8")  # inlined in the login page
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(["html"]))
        self.templates.globals.update(writable=self.writable, colour=self.colour, class_name=self.class_name,
                                      outcome_colours=OUTCOME_COLOURS, kind_names=KIND_NAMES)

    # ------------------------------------------------------------------ auth

    @property
    def writable(self) -> bool:
        """Promote and roll back need someone to answer for them: a configured credential."""
        return self.credentials.protected

    # ------------------------------------------------------------------ helpers

    def colour(self, cls: int) -> str:
        """classes.json's colour of the class's family, lighter for Wint, darker for Night."""
        known = self.classes.get(cls)
        return variant_colour(known.color, cls) if known else UNKNOWN

    def _cycle(self) -> dict[str, Any]:
        from azaion_training.web.error_routes import cycle_data

        return cycle_data(self)

    def class_name(self, cls: int) -> str:
        return self.class_names.get(cls, f"Class-{cls}")

    def ingest_rate(self, status: dict[str, Any]) -> float | None:
        """Messages per minute over the last minutes, from the consumer's committed position as
        successive status readings saw it (None until two readings span 10 s)."""
        offset = status["queue"].get("index_last_offset")
        if offset is None:
            offset = status["queue"].get("offset")
        now = time.monotonic()
        if offset is None:
            return None
        with self._offsets_lock:
            if not self._offsets or self._offsets[-1][1] != offset or now - self._offsets[-1][0] > 5:
                self._offsets.append((now, offset))
            while self._offsets and now - self._offsets[0][0] > INGEST_WINDOW_S:
                self._offsets.popleft()
            first_time, first_offset = self._offsets[0]
        if now - first_time < 10:
            return None
        return round((offset - first_offset) / (now - first_time) * 60, 1)

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        """A page, with who is logged in and the session's CSRF token for its forms."""
        state = request.scope.get("state", {})
        context = {"operator": state.get("operator"), "csrf": state.get("csrf"),
                   "protected": self.credentials.protected, **context}
        return HTMLResponse(self.templates.get_template(template).render(**context), status_code=status_code)


def _cockpit(request: Request) -> Cockpit:
    return request.app.state.cockpit


def wants_html(request: Request) -> bool:
    return (not request.url.path.startswith("/api/") and "authorization" not in request.headers
            and "text/html" in request.headers.get("accept", ""))


def not_found(request: Request, what: str = "not found") -> Response:
    if not wants_html(request):
        return JSONResponse({"error": what}, status_code=404)
    return _cockpit(request).render(request, "message.html", 404, title="Not found", message=what)


def bad_request(request: Request, exc: Exception) -> Response:
    message = exc.message if isinstance(exc, BadRequest) else "bad request"
    if not wants_html(request):
        return JSONResponse({"error": message}, status_code=400)
    return _cockpit(request).render(request, "message.html", 400, title="Bad request", message=message)


def _chunks(handle) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def file_response(path: Path | None, request: Request, download: bool = False) -> Response:
    """A file the caller resolved inside the root, streamed from the descriptor open_inside
    checked (None, or a symlink out of the root, a FIFO or a device: 404); its type guessed from
    its name."""
    if path is None:
        return not_found(request)
    try:
        handle = open_inside(_cockpit(request).layout.root, path)
    except OSError:
        return not_found(request)
    size = os.fstat(handle.fileno()).st_size
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    disposition = f'attachment; filename="{path.name}"' if download else "inline"
    return StreamingResponse(_chunks(handle), media_type=kind,
                             headers={"content-length": str(size), "content-disposition": disposition,
                                      "cache-control": "private, no-cache"})


def allowed_hosts(settings: Settings, bind_host: str) -> list[str]:
    """COCKPIT_ALLOWED_HOSTS, or: the bind address, localhost, 127.0.0.1 and [::1] (any port)."""
    configured = [h.strip() for h in settings.cockpit.allowed_hosts.split(",") if h.strip()]
    if configured:
        return configured
    bind = f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host
    return [bind, "localhost", "127.0.0.1", "[::1]"]


def healthz(request: Request) -> Response:
    """Liveness only: answers without a login and shows nothing."""
    return PlainTextResponse("ok")


def create_app(settings: Settings, config: Path | None = None, health_options: HealthOptions | None = None,
               warm: bool = True, bind_host: str | None = None) -> Starlette:
    from azaion_training.web import routes

    cockpit = Cockpit(settings, config, health_options)
    middleware = [Middleware(guard.BodyLimit),
                  Middleware(guard.AllowedHosts, allowed=allowed_hosts(settings, bind_host or settings.cockpit.host)),
                  Middleware(guard.Authenticate, credentials=cockpit.credentials)]
    app = Starlette(routes=[Route("/healthz", healthz), *routes.ROUTES,
                            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
                            Route("/{path:path}", lambda r: not_found(r))],
                    middleware=middleware,
                    exception_handlers={404: lambda r, e: not_found(r), BadRequest: bad_request})
    app.state.cockpit = cockpit
    if warm:  # the first visitor should not wait for the first status, health or dataset index
        cockpit.status.warm()
        cockpit.health.warm()
        cockpit.cycle.warm()
        latest = cockpit.datasets.names()[:1]
        if latest:
            threading.Thread(target=cockpit.datasets.get, args=(latest[0],), daemon=True).start()
    return app
