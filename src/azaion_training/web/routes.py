"""The cockpit's pages, each with its JSON twin under /api/. Page handlers are plain functions:
Starlette runs them in its thread pool, so a slow read (a dataset's first indexing) never holds
up other requests."""

import math
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from azaion_training.labels import LabelError, parse_line
from azaion_training.layout import SPLITS
from azaion_training.rootfiles import read_text_inside
from azaion_training.web import error_routes, params
from azaion_training.web import runs as run_data
from azaion_training.web.app import PAGE_SIZE, Cockpit, file_response, not_found
from azaion_training.web.auth import COOKIE
from azaion_training.web.svg import line_chart


def _cockpit(request: Request) -> Cockpit:
    return request.app.state.cockpit


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data)


# ---------------------------------------------------------------------------------- overview


def overview_data(cockpit: Cockpit) -> dict[str, Any]:
    status = cockpit.status.get()
    latest = run_data.latest_record(cockpit.layout)
    return {"status": status, "health": cockpit.health.get(), "ingest_per_min": cockpit.ingest_rate(status),
            "latest_run": run_data.run_summary(cockpit.layout, latest) if latest else None,
            "cycle": cockpit.cycle.get()}


def overview(request: Request) -> Response:
    cockpit = _cockpit(request)
    return cockpit.render(request, "overview.html", **overview_data(cockpit))


def api_overview(request: Request) -> Response:
    return _json(overview_data(_cockpit(request)))


def api_status(request: Request) -> Response:
    """Exactly what `azaion status --json` prints (as of the tree's last change)."""
    return _json(_cockpit(request).status.get())


def api_health(request: Request) -> Response:
    """What `azaion health --json` prints (run at most every 30 s)."""
    return _json(_cockpit(request).health.get())


# ---------------------------------------------------------------------------------- runs


def runs_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    return cockpit.render(request, "runs.html", runs=run_data.runs_newest_first(cockpit.layout))


def api_runs(request: Request) -> Response:
    return _json(run_data.runs_newest_first(_cockpit(request).layout))


def run_detail(cockpit: Cockpit, run: str) -> dict[str, Any] | None:
    layout = cockpit.layout
    run_dir = run_data.find_run_dir(layout, params.name(run, "run name"))
    if run_dir is None:
        return None
    return {**run_data.run_summary(layout, run_data.load_record(layout, run_dir)),
            "curves": run_data.run_curves(layout, run_dir), "evaluation": run_data.run_report(layout, run_dir)}


def run_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    detail = run_detail(cockpit, request.path_params["run"])
    if detail is None:
        return not_found(request, "no such training run")
    curves = detail["curves"]
    charts = [line_chart("losses", curves["epoch"], curves["losses"]),
              line_chart("validation metrics", curves["epoch"], curves["metrics"])]
    return cockpit.render(request, "run.html", run=detail, charts=charts)


def api_run(request: Request) -> Response:
    detail = run_detail(_cockpit(request), request.path_params["run"])
    return _json(detail) if detail is not None else not_found(request, "no such training run")


def run_report_file(request: Request) -> Response:
    run = params.name(request.path_params["run"], "run name")
    name = params.name(request.path_params["name"], "report file name")
    return file_response(run_data.report_file(_cockpit(request).layout, run, name), request)


# ---------------------------------------------------------------------------------- datasets


def datasets_data(cockpit: Cockpit) -> list[dict[str, Any]]:
    found = []
    for name in cockpit.datasets.names():
        index = cockpit.datasets.get(name)
        if index is not None:
            found.append({"name": name, **index.summary})
    return found


def datasets_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    return cockpit.render(request, "datasets.html", datasets=datasets_data(cockpit), splits=SPLITS)


def api_datasets(request: Request) -> Response:
    return _json(datasets_data(_cockpit(request)))


def read_boxes(cockpit: Cockpit, label: Path | None) -> tuple[list[dict[str, Any]], list[str]]:
    """(boxes, label lines) of a label file; a line that is not a valid box is listed, not drawn.
    A label file leading out of the root (or not a regular file) reads as empty."""
    try:
        lines = read_text_inside(cockpit.layout.root, label, LABEL_LIMIT).splitlines() if label else []
    except OSError:
        lines = []
    boxes = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            box = parse_line(line)
        except LabelError as exc:
            boxes.append({"line": number, "error": str(exc)})
            continue
        boxes.append({"line": number, "cls": box.cls, "cx": box.cx, "cy": box.cy, "w": box.w, "h": box.h})
    return boxes, lines


LABEL_LIMIT = 1 << 20  # a label file is a few lines: a bigger one is not shown


def dataset_page_data(cockpit: Cockpit, request: Request) -> dict[str, Any] | None:
    name = params.name(request.path_params["name"], "dataset name")
    split = params.split(request.query_params.get("split", ""), optional=True)
    cls, page = params.class_id(request), params.page(request)
    index = cockpit.datasets.get(name)
    if index is None:
        return None
    present = sorted({c for counts in index.summary["boxes"].values() for c in counts})
    common = {"name": index.name, "summary": index.summary, "class": cls, "classes_present": present}
    if request.query_params.get("model"):  # a model's predictions, judged (read from its cache)
        return common | error_routes.browse_with_outcomes(cockpit, request, name, split, cls, page)
    selected = index.select(split, cls)
    pages = max(1, math.ceil(len(selected) / PAGE_SIZE))
    page = min(page, pages)
    images = []
    for item in selected[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]:
        boxes, _ = read_boxes(cockpit, index.label_path(item.split, item.image))
        images.append({"split": item.split, "image": item.image, "boxes": [b for b in boxes if "cls" in b],
                       "classes": sorted(set(item.classes))})
    return common | {"split": split, "page": page, "pages": pages, "matching": len(selected), "images": images,
                     "analysis": None}


def _page_link(data: dict[str, Any], page: int) -> str:
    return f"/datasets/{data['name']}?{error_routes.browse_query(data, page=page)}"


def dataset_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    data = dataset_page_data(cockpit, request)
    if data is None:
        return not_found(request, "no such dataset")
    return cockpit.render(request, "dataset.html", data=data, splits=SPLITS,
                          page_link=lambda p: _page_link(data, p), models=cockpit.errors.choices(),
                          kinds=error_routes.KINDS, query=lambda **o: error_routes.browse_query(data, **o))


def api_dataset(request: Request) -> Response:
    data = dataset_page_data(_cockpit(request), request)
    return _json(data) if data is not None else not_found(request, "no such dataset")


def _image_params(request: Request) -> tuple[str, str, str]:
    return (params.name(request.path_params["name"], "dataset name"), params.split(request.path_params["split"]),
            params.name(request.path_params["image"], "image name"))


def image_detail(cockpit: Cockpit, request: Request) -> dict[str, Any] | None:
    name, split, image = _image_params(request)
    index = cockpit.datasets.get(name)
    if index is None or index.image_path(split, image) is None:
        return None
    boxes, lines = read_boxes(cockpit, index.label_path(split, image))
    return {"dataset": name, "split": split, "image": image, "boxes": boxes, "label_lines": lines,
            "annotation": error_routes.annotation_of(cockpit, image),
            "outcomes": error_routes.image_outcomes(cockpit, request, name, split, image)}


def image_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    detail = image_detail(cockpit, request)
    if detail is None:
        return not_found(request, "no such image in this dataset")
    return cockpit.render(request, "image.html", detail=detail)


def api_image(request: Request) -> Response:
    detail = image_detail(_cockpit(request), request)
    return _json(detail) if detail is not None else not_found(request, "no such image in this dataset")


def image_file(request: Request) -> Response:
    cockpit = _cockpit(request)
    name, split, image = _image_params(request)
    index = cockpit.datasets.get(name)
    return file_response(index.image_path(split, image) if index else None, request)


# ---------------------------------------------------------------------------------- quarantine


def quarantine_data(cockpit: Cockpit, reason: str) -> dict[str, Any]:
    records = cockpit.quarantine.records()
    reasons: dict[str, dict[str, int]] = {"rejected": {}, "corrupted": {}}
    for kind in reasons:
        for record in records[kind]:
            reasons[kind][record["reason"]] = reasons[kind].get(record["reason"], 0) + 1
    return {"reason": reason, "reasons": reasons,
            "rejected": [r for r in records["rejected"] if not reason or r["reason"] == reason],
            "corrupted": [{k: v for k, v in r.items() if k != "text"} | {"detail": r["text"]}
                          for r in records["corrupted"] if not reason or r["reason"] == reason]}


def _reason(request: Request) -> str:
    return params.text(request.query_params.get("reason", ""), "reason")


def quarantine_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    return cockpit.render(request, "quarantine.html", data=quarantine_data(cockpit, _reason(request)))


def api_quarantine(request: Request) -> Response:
    return _json(quarantine_data(_cockpit(request), _reason(request)))


def rejected_file(request: Request) -> Response:
    path = _cockpit(request).quarantine.rejected_file(params.rejected_file(request.path_params["file"]))
    return file_response(path, request, download=True)


def corrupted_image(request: Request) -> Response:
    path = _cockpit(request).quarantine.corrupted_image(params.name(request.path_params["name"], "annotation name"))
    return file_response(path, request)


# ---------------------------------------------------------------------------------- models


def models_data(cockpit: Cockpit) -> dict[str, Any]:
    """What `azaion models list --json` prints, plus production per target; runs whose record
    leads out of the root are left out, and a history file that does is refused."""
    from azaion_training.lifecycle.registry import history_path, list_versions

    history = history_path(cockpit.layout)
    if history.is_symlink() or history.exists():
        try:
            read_text_inside(cockpit.layout.root, history)
        except OSError as exc:
            return {"versions": [], "production": {}, "error": f"promotion history not shown: {exc}"}
    layout = cockpit.layout
    versions = [v for v in reversed(list_versions(layout, settings=cockpit.settings))
                if not run_data.record_refused(layout, layout.models / v["run"])]
    production = {target: v["run"] for v in versions for target in v["production_on"]}
    return {"versions": versions, "production": production,
            "readiness": publish_readiness(cockpit, ["azaion", *production])}


READINESS_TTL_S = 30.0  # the azaion check logs in to the API (at most 1.5 s): once per this many seconds


def publish_readiness(cockpit: Cockpit, targets: list[str]) -> dict[str, list[str]]:
    """Per target, what would make a promotion or rollback fail right now (empty: ready); the
    same fail-fast check `azaion models promote` runs before exporting anything."""
    from azaion_training.lifecycle.promote import publish_problems

    cache: dict[str, tuple[float, list[str]]] = cockpit.__dict__.setdefault("_readiness", {})
    now = time.monotonic()
    found = {}
    for target in dict.fromkeys(targets):
        spec = target if target == "azaion" or target.startswith("local:") else "azaion"  # identities: azaion:URL
        if spec not in cache or now - cache[spec][0] > READINESS_TTL_S:
            cache[spec] = (now, publish_problems(cockpit.settings, spec))
        found[target] = cache[spec][1]
    return found


def models_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    return cockpit.render(request, "models.html", **models_data(cockpit))


def api_models(request: Request) -> Response:
    return _json(models_data(_cockpit(request)))


def _writable(request: Request) -> Response | None:
    """None, or the refusal of a read-only cockpit (no credential configured: 403). Who the
    operator is and the CSRF check are the middleware's (guard.Authenticate)."""
    if not _cockpit(request).writable:
        return _refusal(request, 403, "the cockpit is read-only: set COCKPIT_TOKEN or COCKPIT_USERS to promote "
                                      "or roll back")
    return None


async def _form(request: Request) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    return {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}


def _browser_form(request: Request) -> bool:
    """A page's form posted by a browser (answered with a page), not a script (answered in JSON)."""
    return "text/html" in request.headers.get("accept", "") and "authorization" not in request.headers


def _refusal(request: Request, status: int, message: str) -> Response:
    if not _browser_form(request):
        return JSONResponse({"error": message}, status_code=status)
    return _cockpit(request).render(request, "message.html", status, title="Refused", message=message, back="/models")


def _by(request: Request) -> str:
    """How the promotion history names the operator who clicked: NAME@cockpit."""
    return f"{request.state.operator}@cockpit"


async def _decide(request: Request, action) -> Response:
    """Run a promote/rollback decision (the CLI's functions: same gate, same history)."""
    from azaion_training.errors import AzaionError

    try:
        decision = (await run_in_threadpool(action)).to_dict()
        status, message = (409 if decision["action"] == "refused" else 200), _decision_text(decision)
    except AzaionError as exc:
        decision, status, message = {"error": str(exc)}, 400 if exc.exit_code == 2 else 500, str(exc)
    if not _browser_form(request):  # an API client
        return JSONResponse(decision, status_code=status)
    return _cockpit(request).render(request, "message.html", status, title="Decision", message=message,
                                    back="/models")


def _decision_text(decision: dict[str, Any]) -> str:
    run, target, action, before = decision["run"], decision["target"], decision["action"], decision["production"]
    return {"promote": f"promoted {run} on {target}" + (f", replacing {before}" if before else " (first)"),
            "refused": f"the gate refused {run} on {target}: production {before} stays",
            "unchanged": f"{run} already is production on {target}",
            "rollback": f"rolled back {target}: {run} is production again (replacing {before})"}.get(action, action)


async def promote_run(request: Request) -> Response:
    from azaion_training.lifecycle.promote import promote

    refusal = _writable(request)
    if refusal is not None:
        return refusal
    form = await _form(request)
    run = params.name(request.path_params["run"], "run name")
    target = params.target(form.get("target") or request.query_params.get("target", "azaion"))
    settings, by = _cockpit(request).settings, _by(request)
    return await _decide(request, lambda: promote(settings, run, target, operator=by))


async def rollback_target(request: Request) -> Response:
    from azaion_training.lifecycle.promote import rollback

    refusal = _writable(request)
    if refusal is not None:
        return refusal
    form = await _form(request)
    target = params.target(form.get("target") or request.query_params.get("target", "azaion"))
    settings, by = _cockpit(request).settings, _by(request)
    return await _decide(request, lambda: rollback(settings, target, operator=by))


# ---------------------------------------------------------------------------------- login


def _next(value: str) -> str:
    """Where to go after logging in: a path of this site only (never //host or a scheme)."""
    return value if re.fullmatch(r"/(?![/\\])[^\x00-\x20\x7f\\]{0,1999}", value) else "/"


def login_page(request: Request, status_code: int = 200, error: str | None = None) -> Response:
    cockpit = _cockpit(request)
    target = _next(request.query_params.get("next", "/"))
    if not cockpit.credentials.protected or request.state.operator is not None:
        return RedirectResponse(target, status_code=303)
    return cockpit.render(request, "login.html", status_code, next=target, error=error, css=cockpit.css,
                          hours=f"{cockpit.credentials.session_s / 3600:g}")


async def login(request: Request) -> Response:
    """Exchange a token for a session cookie (HttpOnly, SameSite=Strict, Secure over https)."""
    cockpit = _cockpit(request)
    if not cockpit.credentials.protected:
        return _refusal(request, 404, "this cockpit has no login: it is open to loopback only (set COCKPIT_TOKEN "
                                      "or COCKPIT_USERS)")
    form = await _form(request)
    operator = await run_in_threadpool(cockpit.credentials.operator_of, form.get("token", ""))
    if operator is None:
        request.scope["query_string"] = urlencode({"next": form.get("next", "/")}).encode()
        return login_page(request, 401, "wrong token")
    response = RedirectResponse(_next(form.get("next", "/")), status_code=303)
    response.set_cookie(COOKIE, cockpit.credentials.issue(operator), max_age=cockpit.credentials.session_s,
                        path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def logout(request: Request) -> Response:
    cockpit = _cockpit(request)
    cockpit.credentials.revoke(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


ROUTES = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/", overview),
    Route("/api/overview", api_overview),
    Route("/api/status", api_status),
    Route("/api/health", api_health),
    Route("/runs", runs_page),
    Route("/api/runs", api_runs),
    Route("/runs/{run}", run_page),
    Route("/api/runs/{run}", api_run),
    Route("/runs/{run}/report/{name}", run_report_file),
    Route("/datasets", datasets_page),
    Route("/api/datasets", api_datasets),
    Route("/datasets/{name}", dataset_page),
    Route("/api/datasets/{name}", api_dataset),
    Route("/datasets/{name}/{split}/{image}", image_page),
    Route("/api/datasets/{name}/{split}/{image}", api_image),
    Route("/files/datasets/{name}/{split}/{image}", image_file),
    Route("/quarantine", quarantine_page),
    Route("/api/quarantine", api_quarantine),
    Route("/files/queue-rejected/{file}", rejected_file),
    Route("/files/data-corrupted/{name}", corrupted_image),
    Route("/models", models_page),
    Route("/api/models", api_models),
    Route("/api/models/{run}/promote", promote_run, methods=["POST"]),
    Route("/api/models/rollback", rollback_target, methods=["POST"]),
]
error_routes.attach(ROUTES)
