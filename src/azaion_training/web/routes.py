"""The cockpit's pages, each with its JSON twin under /api/. Page handlers are plain functions:
Starlette runs them in its thread pool, so a slow read (a dataset's first indexing) never holds
up other requests."""

import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from azaion_training.labels import LabelError, parse_line
from azaion_training.layout import SPLITS
from azaion_training.training.runs import latest_run
from azaion_training.web import runs as run_data
from azaion_training.web.app import PAGE_SIZE, Cockpit, file_response, not_found
from azaion_training.web.svg import line_chart


def _cockpit(request: Request) -> Cockpit:
    return request.app.state.cockpit


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data)


# ---------------------------------------------------------------------------------- overview


def overview_data(cockpit: Cockpit) -> dict[str, Any]:
    status = cockpit.status.get()
    latest = latest_run(cockpit.layout)
    return {"status": status, "health": cockpit.health.get(), "ingest_per_min": cockpit.ingest_rate(status),
            "latest_run": run_data.run_summary(latest) if latest else None}


def overview(request: Request) -> Response:
    cockpit = _cockpit(request)
    return cockpit.render("overview.html", **overview_data(cockpit))


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
    return _cockpit(request).render("runs.html", runs=run_data.runs_newest_first(_cockpit(request).layout))


def api_runs(request: Request) -> Response:
    return _json(run_data.runs_newest_first(_cockpit(request).layout))


def run_detail(cockpit: Cockpit, run: str) -> dict[str, Any] | None:
    from azaion_training.training.runs import RunRecord

    run_dir = run_data.find_run_dir(cockpit.layout, run)
    if run_dir is None:
        return None
    return {**run_data.run_summary(RunRecord.load(run_dir)), "curves": run_data.run_curves(run_dir),
            "evaluation": run_data.run_report(run_dir)}


def run_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    detail = run_detail(cockpit, request.path_params["run"])
    if detail is None:
        return not_found(request, "no such training run")
    curves = detail["curves"]
    charts = [line_chart("losses", curves["epoch"], curves["losses"]),
              line_chart("validation metrics", curves["epoch"], curves["metrics"])]
    return cockpit.render("run.html", run=detail, charts=charts)


def api_run(request: Request) -> Response:
    detail = run_detail(_cockpit(request), request.path_params["run"])
    return _json(detail) if detail is not None else not_found(request, "no such training run")


def run_report_file(request: Request) -> Response:
    path = run_data.report_file(_cockpit(request).layout, request.path_params["run"], request.path_params["name"])
    return file_response(path, request)


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
    return cockpit.render("datasets.html", datasets=datasets_data(cockpit), splits=SPLITS)


def api_datasets(request: Request) -> Response:
    return _json(datasets_data(_cockpit(request)))


def read_boxes(label: Path | None) -> tuple[list[dict[str, Any]], list[str]]:
    """(boxes, label lines) of a label file; a line that is not a valid box is listed, not drawn."""
    try:
        lines = label.read_text(encoding="utf-8", errors="replace").splitlines() if label else []
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


def _query_int(request: Request, key: str) -> int | None:
    value = request.query_params.get(key, "")
    return int(value) if value.isdigit() else None


def dataset_page_data(cockpit: Cockpit, request: Request) -> dict[str, Any] | None:
    index = cockpit.datasets.get(request.path_params["name"])
    if index is None:
        return None
    split = request.query_params.get("split", "")
    split = split if split in SPLITS else ""
    cls = _query_int(request, "class")
    selected = index.select(split, cls)
    pages = max(1, math.ceil(len(selected) / PAGE_SIZE))
    page = min(max(_query_int(request, "page") or 1, 1), pages)
    images = []
    for item in selected[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]:
        boxes, _ = read_boxes(index.label_path(item.split, item.image))
        images.append({"split": item.split, "image": item.image, "boxes": [b for b in boxes if "cls" in b],
                       "classes": sorted(set(item.classes))})
    present = sorted({c for counts in index.summary["boxes"].values() for c in counts})
    return {"name": index.name, "summary": index.summary, "split": split, "class": cls, "page": page,
            "pages": pages, "matching": len(selected), "images": images, "classes_present": present}


def _page_link(data: dict[str, Any], page: int) -> str:
    pairs = (("split", data["split"]), ("class", data["class"]), ("page", page))
    query = {k: v for k, v in pairs if v not in ("", None)}
    return f"/datasets/{data['name']}?{urlencode(query)}"


def dataset_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    data = dataset_page_data(cockpit, request)
    if data is None:
        return not_found(request, "no such dataset")
    return cockpit.render("dataset.html", data=data, splits=SPLITS, page_link=lambda p: _page_link(data, p))


def api_dataset(request: Request) -> Response:
    data = dataset_page_data(_cockpit(request), request)
    return _json(data) if data is not None else not_found(request, "no such dataset")


def image_detail(cockpit: Cockpit, request: Request) -> dict[str, Any] | None:
    name, split, image = (request.path_params[k] for k in ("name", "split", "image"))
    index = cockpit.datasets.get(name)
    if index is None or index.image_path(split, image) is None:
        return None
    boxes, lines = read_boxes(index.label_path(split, image))
    return {"dataset": name, "split": split, "image": image, "boxes": boxes, "label_lines": lines}


def image_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    detail = image_detail(cockpit, request)
    if detail is None:
        return not_found(request, "no such image in this dataset")
    return cockpit.render("image.html", detail=detail)


def api_image(request: Request) -> Response:
    detail = image_detail(_cockpit(request), request)
    return _json(detail) if detail is not None else not_found(request, "no such image in this dataset")


def image_file(request: Request) -> Response:
    cockpit = _cockpit(request)
    name, split, image = (request.path_params[k] for k in ("name", "split", "image"))
    index = cockpit.datasets.get(name)
    path = index.image_path(split, image) if index else None
    if path is None or not path.is_file() or not cockpit.layout.inside_root(path):
        return not_found(request)
    return file_response(path, request)


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


def quarantine_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    return cockpit.render("quarantine.html", data=quarantine_data(cockpit, request.query_params.get("reason", "")))


def api_quarantine(request: Request) -> Response:
    return _json(quarantine_data(_cockpit(request), request.query_params.get("reason", "")))


def rejected_file(request: Request) -> Response:
    path = _cockpit(request).quarantine.rejected_file(request.path_params["file"])
    return file_response(path, request, download=True)


def corrupted_image(request: Request) -> Response:
    path = _cockpit(request).quarantine.corrupted_image(request.path_params["name"])
    return file_response(path, request)


# ---------------------------------------------------------------------------------- models


def models_data(cockpit: Cockpit) -> dict[str, Any]:
    """What `azaion models list --json` prints, plus production per target."""
    from azaion_training.lifecycle.registry import list_versions

    versions = list(reversed(list_versions(cockpit.layout)))
    production = {target: v["run"] for v in versions for target in v["production_on"]}
    return {"versions": versions, "production": production}


def models_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    return cockpit.render("models.html", **models_data(cockpit))


def api_models(request: Request) -> Response:
    return _json(models_data(_cockpit(request)))


async def _authorised_form(request: Request) -> tuple[dict[str, str], Response | None]:
    """The POST's form fields, or the refusal: read-only cockpit or cross-site request (403),
    missing or wrong token (401). The token travels in the request itself (Authorization:
    Bearer, or the form's password field); no cookie is ever set, so another site cannot make
    a browser send it."""
    cockpit = _cockpit(request)
    form: dict[str, str] = {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    if not cockpit.writable:
        return form, _refusal(request, 403, "the cockpit is read-only: set COCKPIT_TOKEN to promote or roll back")
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if (origin and origin != own) or request.headers.get("sec-fetch-site") == "cross-site":
        return form, _refusal(request, 403, "cross-origin request refused")
    header = request.headers.get("authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else form.get("token", "")
    if not given or not cockpit.token_matches(given):
        response = _refusal(request, 401, "a valid COCKPIT_TOKEN is needed (Authorization: Bearer TOKEN)")
        response.headers["WWW-Authenticate"] = "Bearer"
        return form, response
    return form, None


def _refusal(request: Request, status: int, message: str) -> Response:
    if request.headers.get("authorization") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": message}, status_code=status)
    return _cockpit(request).render("message.html", status, title="Refused", message=message, back="/models")


async def _decide(request: Request, form: dict[str, str], action) -> Response:
    """Run a promote/rollback decision (the CLI's functions: same gate, same history)."""
    from azaion_training.errors import AzaionError

    try:
        decision = (await run_in_threadpool(action)).to_dict()
        status, message = (409 if decision["action"] == "refused" else 200), _decision_text(decision)
    except AzaionError as exc:
        decision, status, message = {"error": str(exc)}, 400 if exc.exit_code == 2 else 500, str(exc)
    if "token" not in form:  # an API client
        return JSONResponse(decision, status_code=status)
    return _cockpit(request).render("message.html", status, title="Decision", message=message, back="/models")


def _decision_text(decision: dict[str, Any]) -> str:
    run, target, action, before = decision["run"], decision["target"], decision["action"], decision["production"]
    return {"promote": f"promoted {run} on {target}" + (f", replacing {before}" if before else " (first)"),
            "refused": f"the gate refused {run} on {target}: production {before} stays",
            "unchanged": f"{run} already is production on {target}",
            "rollback": f"rolled back {target}: {run} is production again (replacing {before})"}.get(action, action)


async def promote_run(request: Request) -> Response:
    from azaion_training.lifecycle.promote import promote

    form, refusal = await _authorised_form(request)
    if refusal is not None:
        return refusal
    run, target = request.path_params["run"], form.get("target") or request.query_params.get("target", "azaion")
    settings = _cockpit(request).settings
    return await _decide(request, form, lambda: promote(settings, run, target))


async def rollback_target(request: Request) -> Response:
    from azaion_training.lifecycle.promote import rollback

    form, refusal = await _authorised_form(request)
    if refusal is not None:
        return refusal
    target = form.get("target") or request.query_params.get("target", "azaion")
    settings = _cockpit(request).settings
    return await _decide(request, form, lambda: rollback(settings, target))


ROUTES = [
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
