"""The cockpit's error-analysis pages (docs/cockpit.md, docs/error-analysis.md "In the
cockpit"): the dataset browser and image page with a model's predictions coloured by outcome,
the error view of a model on a split (figures, per class, confusion matrix whose cells link to
their images, worst images), the comparison of two runs (curves overlaid, per-class AP and error
deltas), the cycle panel of the overview. Nothing here predicts or exports: a page reads the
predictions cache and, when a split is not in it, names the command that fills it."""

import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from azaion_training.analysis.compare import compare_analyses
from azaion_training.analysis.predictions import PRODUCTION
from azaion_training.errors import AzaionError
from azaion_training.layout import SPLITS, DatasetDir
from azaion_training.web import params
from azaion_training.web import runs as run_data
from azaion_training.web.app import PAGE_SIZE, Cockpit, not_found
from azaion_training.web.errors import ERRORS, KINDS, View, box_dict
from azaion_training.web.svg import bar_chart, overlay_chart

WORST = 12
# results.csv columns in plain words (report.plots' METRIC_COLUMNS / LOSS_COLUMNS)
PLAIN = {"metrics/mAP50(B)": "mAP50: objects found at overlap >= 0.5",
         "metrics/mAP50-95(B)": "mAP50-95: found and tightly boxed",
         "metrics/precision(B)": "precision: share of boxes that are right",
         "metrics/recall(B)": "recall: share of objects found",
         "val/box_loss": "box position loss (validation)", "val/cls_loss": "class loss (validation)",
         "val/dfl_loss": "box edge loss (validation)", "train/box_loss": "box position loss (training)",
         "train/cls_loss": "class loss (training)", "train/dfl_loss": "box edge loss (training)"}
CURVES = ("metrics/mAP50(B)", "metrics/mAP50-95(B)", "metrics/precision(B)", "metrics/recall(B)", "val/box_loss",
          "val/cls_loss")
A_COLOUR, B_COLOUR = "#1f77b4", "#d62728"


def _cockpit(request: Request) -> Cockpit:
    return request.app.state.cockpit


def _conf(cockpit: Cockpit, request: Request) -> float:
    chosen = params.conf(request.query_params.get("conf", ""))
    return cockpit.settings.inference.conf if chosen is None else chosen


# ---------------------------------------------------------------------------------- analyses


def analysis_of(cockpit: Cockpit, ref: str, dataset: str, split: str, conf: float) -> tuple[View | None, dict]:
    """(the view or None, what the page says about it): the model's label and where it was
    measured, or why nothing is shown and the command that would fill the cache."""
    index = cockpit.datasets.get(dataset)
    about: dict[str, Any] = {"model": ref, "dataset": dataset, "split": split, "conf": conf,
                             "default_conf": conf == cockpit.settings.inference.conf}
    model = cockpit.errors.model(ref)
    if index is None:
        return None, {**about, "message": f"no dataset {dataset}"}
    if model is None:
        what = "nothing is promoted on azaion (or its ONNX is not on this machine)" if ref == PRODUCTION else \
            f"run {ref} has no exported ONNX (or is not a run)"
        return None, {**about, "message": f"no predictions to show: {what}",
                      "command": f"azaion predict-dataset --model {ref} --dataset {dataset} --split {split}"}
    about |= {"label": model.label, "sha256": model.sha256[:12], "imgsz": model.imgsz}
    try:
        view = cockpit.errors.view(ref, model, DatasetDir(index.path), split, conf)
    except AzaionError as exc:
        return None, {**about, "message": f"predictions not cached: {exc}",
                      "command": cockpit.errors.command(ref, dataset, split)}
    return view, {**about, "where": view.analysis.where()}


def browse_params(request: Request) -> dict[str, Any]:
    """The outcome filters of the dataset browser and image page (validated; 400 when bad)."""
    query = request.query_params
    return {"model": params.model_ref(query["model"]) if query.get("model") else "",
            "kind": params.kind(query.get("kind", "")), "sort": params.sort(query.get("sort", "")),
            "true": params.cell_class(query.get("true", ""), "true"),
            "pred": params.cell_class(query.get("pred", ""), "pred"), "conf": query.get("conf", "")}


def _cell(chosen: dict[str, Any]) -> tuple[int, int] | None:
    if chosen["true"] is None and chosen["pred"] is None:
        return None
    if chosen["true"] is None or chosen["pred"] is None:
        raise params.BadRequest("a confusion-matrix cell needs both true and pred")
    return chosen["true"], chosen["pred"]


def _normalised(box: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    x1, y1, x2, y2 = box["box"]
    return {**box, "x": x1 / width, "y": y1 / height, "w": (x2 - x1) / width, "h": (y2 - y1) / height}


def browse_with_outcomes(cockpit: Cockpit, request: Request, name: str, split: str, cls: int | None,
                         page: int) -> dict[str, Any]:
    """The dataset browser's page when a model is chosen: the split's images with their judged
    boxes, filtered by outcome kind, confusion-matrix cell and class, optionally worst first."""
    chosen = browse_params(request)
    split = split or "test"
    conf = _conf(cockpit, request)
    cell = _cell(chosen)
    view, about = analysis_of(cockpit, chosen["model"], name, split, conf)
    data: dict[str, Any] = {"analysis": {**about, **{k: chosen[k] for k in ("kind", "sort", "true", "pred")}},
                            "split": split, "images": [], "matching": 0, "pages": 1, "page": 1}
    if view is None:
        return data
    selected = view.select(chosen["kind"], chosen["sort"], cell, cls)
    pages = max(1, math.ceil(len(selected) / PAGE_SIZE))
    page = min(page, pages)
    names = cockpit.class_names
    images = []
    for k in selected[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]:
        image = view.analysis.images[k]
        boxes = [_normalised(box_dict(b, names), image.width, image.height) for b in image.boxes]
        images.append({"split": split, "image": Path(image.name).name, "error_score": round(image.error_score, 4),
                       "counts": image.counts.to_dict(), "outcomes": boxes})
    return data | {"images": images, "matching": len(selected), "pages": pages, "page": page}


def browse_query(data: dict[str, Any], **override: Any) -> str:
    """The browser's query string for the same selection (override: page, ...)."""
    a = data.get("analysis") or {}
    pairs = {"split": data["split"], "class": data["class"], "model": a.get("model"), "kind": a.get("kind"),
             "sort": a.get("sort"), "true": a.get("true"), "pred": a.get("pred"),
             "conf": None if a.get("default_conf", True) else a.get("conf"), **override}
    return urlencode({k: ("background" if k in ("true", "pred") and v == -1 else v) for k, v in pairs.items()
                      if v not in ("", None)})


def image_outcomes(cockpit: Cockpit, request: Request, name: str, split: str, image: str) -> dict[str, Any] | None:
    """The image page's predictions when a model is chosen: its judged boxes (pixels), error
    score and counts, and the previous/next image of the same selection."""
    chosen = browse_params(request)
    if not chosen["model"]:
        return None
    conf = _conf(cockpit, request)
    view, about = analysis_of(cockpit, chosen["model"], name, split, conf)
    about |= {k: chosen[k] for k in ("kind", "sort", "true", "pred")}
    if view is None:
        return {"analysis": about}
    k = view.by_file.get(image)
    if k is None:
        return {"analysis": {**about, "message": "this image is not in the analysed split"}}
    found = view.analysis.images[k]
    cls = params.class_id(request)
    selected = view.select(chosen["kind"], chosen["sort"], _cell(chosen), cls)
    position = selected.index(k) if k in selected else None
    neighbour = {}
    if position is not None:
        for side, at in (("previous", position - 1), ("next", position + 1)):
            if 0 <= at < len(selected):
                neighbour[side] = Path(view.analysis.images[selected[at]].name).name
    return {"analysis": about, "width": found.width, "height": found.height,
            "error_score": round(found.error_score, 4), "counts": found.counts.to_dict(),
            "predictions": [box_dict(b, cockpit.class_names) for b in found.boxes],
            "position": None if position is None else position + 1, "selected": len(selected), **neighbour,
            "query": browse_query({"split": split, "class": cls, "analysis": about})}


def annotation_of(cockpit: Cockpit, image: str) -> dict[str, Any] | None:
    """The annotation behind a dataset image, from the annotation index: its flight (source
    media), position in it, author role and source (AI or manual); None when not indexed."""
    from azaion_training.annotation_index import reading
    from azaion_training.queue.messages import Role, Source

    stem = image.rsplit(".", 1)[0]
    try:
        with reading(cockpit.layout.index_db) as index:
            entry = index.get(stem) if index else None
    except (OSError, AzaionError, ValueError) as exc:
        return {"error": f"annotation index not readable: {exc}"}
    except Exception as exc:  # noqa: BLE001  (a locked or damaged SQLite file: say so, never a 500)
        return {"error": f"annotation index not readable: {type(exc).__name__}"}
    if entry is None:
        return None

    def named(enum, value):
        try:
            return enum(value).name
        except ValueError:
            return str(value)

    return {"name": entry.name, "area": entry.area, "flight": entry.source_media,
            "media_time_s": None if entry.media_time_us is None else round(entry.media_time_us / 1e6, 3),
            "role": None if entry.role is None else named(Role, entry.role),
            "source": None if entry.source is None else named(Source, entry.source), "created": entry.created_date}


# ---------------------------------------------------------------------------------- error view


def errors_index(request: Request) -> Response:
    """Every model with an ONNX and the splits its predictions cache holds."""
    cockpit = _cockpit(request)
    choices = cockpit.errors.choices()
    if request.url.path.startswith("/api/"):
        return JSONResponse({"models": choices})
    latest = cockpit.datasets.names()[:1]
    return cockpit.render(request, "errors_index.html", models=choices, dataset=latest[0] if latest else None)


def _error_choice(cockpit: Cockpit, request: Request) -> tuple[str, str, str, float]:
    name = params.name(request.path_params["name"], "dataset name")
    split = params.split(request.query_params.get("split", "") or "test")
    ref = request.query_params.get("model", "")
    ref = params.model_ref(ref) if ref else (cockpit.errors.default_model() or PRODUCTION)
    return name, split, ref, _conf(cockpit, request)


def error_view_data(cockpit: Cockpit, request: Request) -> dict[str, Any] | None:
    name, split, ref, conf = _error_choice(cockpit, request)
    if cockpit.datasets.get(name) is None:
        return None
    view, about = analysis_of(cockpit, ref, name, split, conf)
    data: dict[str, Any] = {"analysis": about, "name": name, "split": split}
    if view is None:
        return data
    a = view.analysis
    result = a.to_dict(worst=WORST)
    link = {"split": split, "model": ref, **({} if about["default_conf"] else {"conf": conf})}
    return data | {"metrics": result["metrics"], "totals": result["totals"], "classes": result["classes"],
                   "confusion": result["confusion"], "images": len(a.images),
                   "worst": [{"image": Path(i.name).name, "error_score": round(i.error_score, 4),
                              "counts": i.counts.to_dict()} for i in a.worst(WORST)],
                   "link": urlencode(link)}


def error_view(request: Request) -> Response:
    cockpit = _cockpit(request)
    data = error_view_data(cockpit, request)
    if data is None:
        return not_found(request, "no such dataset")
    if request.url.path.startswith("/api/"):
        return JSONResponse(data)
    return cockpit.render(request, "errors.html", data=data, models=cockpit.errors.choices(), splits=SPLITS,
                          kinds=KINDS, errors_kind=ERRORS)


# ---------------------------------------------------------------------------------- compare


def _run_of(cockpit: Cockpit, ref: str) -> str | None:
    """The training run behind a model reference (production: the run it was promoted from)."""
    if ref == PRODUCTION:
        from azaion_training.lifecycle.registry import production, target_key

        try:
            return production(cockpit.layout, target_key("azaion", cockpit.settings), settings=cockpit.settings)
        except (AzaionError, OSError, ValueError):
            return None
    return ref if run_data.find_run_dir(cockpit.layout, ref) else None


def default_pair(cockpit: Cockpit) -> tuple[str | None, str | None]:
    """(production, the newest finished run that is not production): the candidate against what
    it would replace; without production, the two newest finished runs."""
    finished = [r.run for r in reversed(run_data.list_records(cockpit.layout)) if r.status == "finished"]
    current = _run_of(cockpit, PRODUCTION)
    if current is not None:
        others = [r for r in finished if r != current]
        return PRODUCTION, others[0] if others else None
    return (finished[1] if len(finished) > 1 else None), (finished[0] if finished else None)


def compare_data(cockpit: Cockpit, request: Request) -> dict[str, Any]:
    query = request.query_params
    first, second = default_pair(cockpit)
    a = params.model_ref(query["a"]) if query.get("a") else first
    b = params.model_ref(query["b"]) if query.get("b") else second
    split = params.split(query.get("split", "") or "test")
    conf = _conf(cockpit, request)
    runs = {"a": _run_of(cockpit, a) if a else None, "b": _run_of(cockpit, b) if b else None}
    data: dict[str, Any] = {"a": a, "b": b, "runs": runs, "split": split, "conf": conf, "curves": {}}
    for side, run in runs.items():
        run_dir = run_data.find_run_dir(cockpit.layout, run) if run else None
        results = run_data.read_results(cockpit.layout, run_dir / "results.csv") if run_dir else {}
        data["curves"][side] = {"epoch": results.get("epoch", []),
                                **{c: results[c] for c in CURVES if c in results}}
    dataset = params.name(query["dataset"], "dataset name") if query.get("dataset") else None
    if dataset is None and runs["b"]:
        record_dir = run_data.find_run_dir(cockpit.layout, runs["b"])
        trained = run_data.load_record(cockpit.layout, record_dir).dataset if record_dir else None
        dataset = Path(trained).name if trained and cockpit.datasets.get(Path(trained).name) else None
    dataset = dataset or next(iter(cockpit.datasets.names()), None)
    data["dataset"] = dataset
    if not (a and b and dataset):
        data["message"] = "two runs are needed to compare (production and a candidate, or two finished runs)"
        return data
    views = {}
    for side, ref in (("a", a), ("b", b)):
        views[side], data[f"about_{side}"] = analysis_of(cockpit, ref, dataset, split, conf)
    if views["a"] is None or views["b"] is None:
        data["message"] = "the per-class comparison needs both models' predictions on the same split"
        data["commands"] = [data[f"about_{s}"].get("command") for s in ("a", "b") if data[f"about_{s}"].get("command")]
        return data
    try:
        comparison = compare_analyses(views["a"].analysis, views["b"].analysis)
    except AzaionError as exc:
        data["message"] = str(exc)
        return data
    return data | {"comparison": comparison.to_dict()}


def compare_page(request: Request) -> Response:
    cockpit = _cockpit(request)
    data = compare_data(cockpit, request)
    if request.url.path.startswith("/api/"):
        return JSONResponse(data)
    names = {"a": f"A: {data['a'] or '-'}" + (f" ({data['runs']['a']})" if data["a"] == PRODUCTION else ""),
             "b": f"B: {data['b'] or '-'}" + (f" ({data['runs']['b']})" if data["b"] == PRODUCTION else "")}
    charts = []
    for column in CURVES:
        series = {names[s]: (c.get("epoch", []), c[column]) for s, c in data["curves"].items() if column in c}
        if series:
            charts.append(overlay_chart(PLAIN.get(column, column), series, [A_COLOUR, B_COLOUR]))
    deltas = None
    if "comparison" in data:
        rows = [c for c in data["comparison"]["classes"] if c["ap50_delta"] is not None]
        deltas = bar_chart("AP50 change per class (B - A)", [c["name"] for c in rows],
                           [c["ap50_delta"] for c in rows], [cockpit.colour(c["cls"]) for c in rows])
    return cockpit.render(request, "compare.html", data=data, charts=charts, deltas=deltas, names=names,
                          choices=cockpit.errors.choices(), runs=run_data.runs_newest_first(cockpit.layout),
                          splits=SPLITS)


# ---------------------------------------------------------------------------------- cycle panel


def cycle_data(cockpit: Cockpit) -> dict[str, Any]:
    """The last cycle and its decision, new annotations against CYCLE_MIN_NEW, the next run."""
    from datetime import datetime, timedelta

    from azaion_training.lifecycle.cycle import cycle_history, load_state, new_annotations
    from azaion_training.lifecycle.registry import target_key

    lifecycle = cockpit.settings.lifecycle
    data: dict[str, Any] = {"min_new": lifecycle.cycle_min_new, "interval_s": lifecycle.cycle_interval_s,
                            "checked": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        history = cycle_history(cockpit.layout)
        last = history[-1] if history else None
        new, validated, reference = new_annotations(cockpit.layout, target_key("azaion", cockpit.settings),
                                                    cockpit.settings)
        state = load_state(cockpit.layout)
    except (AzaionError, OSError, ValueError, TypeError) as exc:
        return data | {"error": str(exc)}
    next_at = None
    if last and last.get("ended"):
        try:
            ended = datetime.fromisoformat(last["ended"])
            next_at = (ended + timedelta(seconds=lifecycle.cycle_interval_s)).isoformat(timespec="seconds")
        except (TypeError, ValueError):
            next_at = None
    if last:
        last = {k: last.get(k) for k in ("cycle", "ended", "action", "run", "dataset", "new", "target", "reasons",
                                         "production_before", "candidate_mAP50")}
        last["dataset"] = Path(last["dataset"]).name if last.get("dataset") else None
    return data | {"cycles": len(history), "last": last, "new": new, "validated": validated, "reference": reference,
                   "next_at": next_at, "in_progress": {"cycle": state.cycle, "step": state.step} if state else None}


def attach(routes: list) -> None:
    """The error-analysis routes, inserted into the cockpit's route list."""
    from starlette.routing import Route

    routes += [Route("/errors", errors_index), Route("/api/errors", errors_index),
               Route("/errors/{name}", error_view), Route("/api/errors/{name}", error_view),
               Route("/compare", compare_page), Route("/api/compare", compare_page)]
