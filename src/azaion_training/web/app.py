"""The cockpit's ASGI app: server-rendered pages with a JSON twin each, over the same
functions as the CLI (`azaion status`, `azaion health`, training runs, dataset manifests,
queue-rejected records). Read-only unless COCKPIT_TOKEN is set; files are served only by
names the server resolves itself inside the data root (docs/data-tree.md)."""

import hmac
import ipaddress
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from azaion_training.classes import load_classes, model_class_names
from azaion_training.errors import ConfigError
from azaion_training.layout import Layout
from azaion_training.ops.health import HealthOptions, run_health
from azaion_training.report.status import collect_status
from azaion_training.settings import Settings
from azaion_training.web.cache import Refreshing, tree_signature
from azaion_training.web.datasets import DatasetIndexes
from azaion_training.web.quarantine import Quarantine

HERE = Path(__file__).parent
HEALTH_TTL_S = 30.0  # `azaion health` probes the broker: at most one run per this many seconds
INGEST_WINDOW_S = 600.0
PAGE_SIZE = 48


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: Settings) -> None:
    """Anything but loopback needs COCKPIT_TOKEN (the pages show the whole data tree)."""
    if not is_loopback(host) and settings.cockpit.token is None:
        raise ConfigError(f"refusing to listen on {host}: anything but loopback (127.0.0.1, ::1, localhost) "
                          "needs COCKPIT_TOKEN; set it, or use --host 127.0.0.1 (behind an SSH tunnel or a proxy)")


class Cockpit:
    """What the routes share: settings, the tree, and the indexes kept between requests."""

    def __init__(self, settings: Settings, config: Path | None, health_options: HealthOptions | None):
        self.settings = settings
        self.layout = Layout(settings.paths)
        self.classes = load_classes(self.layout.classes_json)
        self.class_names = model_class_names(self.layout.classes_json)
        self.status = Refreshing("status", lambda: collect_status(settings), lambda: tree_signature(self.layout))
        # thresholds from settings.health, as the CLI's; the cockpit only looks, it records no reading
        health_options = health_options or HealthOptions(record_reading=False)
        self.health = Refreshing("health", lambda: run_health(config, health_options).as_dict(),
                                 lambda: int(time.time() // HEALTH_TTL_S), min_interval_s=HEALTH_TTL_S)
        self.datasets = DatasetIndexes(self.layout)
        self.quarantine = Quarantine(self.layout)
        self._offsets: deque[tuple[float, int]] = deque()
        self._offsets_lock = threading.Lock()
        token = settings.cockpit.token
        self._token = token.get_secret_value().encode() if token is not None else None
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(["html"]))
        self.templates.globals.update(writable=self.writable, colour=self.colour, class_name=self.class_name)

    # ------------------------------------------------------------------ auth

    @property
    def writable(self) -> bool:
        return self._token is not None

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token)

    # ------------------------------------------------------------------ helpers

    def colour(self, cls: int) -> str:
        known = self.classes.get(cls)
        return known.color if known else "#808080"

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

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.templates.get_template(template).render(**context), status_code=status_code)


def not_found(request: Request, what: str = "not found") -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": what}, status_code=404)
    cockpit: Cockpit = request.app.state.cockpit
    return cockpit.render("message.html", 404, title="Not found", message=what)


def file_response(path: Path | None, request: Request, download: bool = False) -> Response:
    """A file the caller resolved inside the root (None: 404); its type guessed from its name."""
    if path is None:
        return not_found(request)
    return FileResponse(path, filename=path.name if download else None,
                        content_disposition_type="attachment" if download else "inline")


def create_app(settings: Settings, config: Path | None = None, health_options: HealthOptions | None = None,
               warm: bool = True) -> Starlette:
    from azaion_training.web import routes

    cockpit = Cockpit(settings, config, health_options)
    app = Starlette(routes=[*routes.ROUTES, Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
                            Route("/{path:path}", lambda r: not_found(r))],
                    exception_handlers={404: lambda r, e: not_found(r)})
    app.state.cockpit = cockpit
    if warm:  # the first visitor should not wait for the first status, health or dataset index
        cockpit.status.warm()
        cockpit.health.warm()
        latest = cockpit.datasets.names()[:1]
        if latest:
            threading.Thread(target=cockpit.datasets.get, args=(latest[0],), daemon=True).start()
    return app
