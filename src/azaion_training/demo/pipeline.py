"""`azaion demo`: the whole product on generated data, through the same functions the stage
commands call -- stream messages -> consumer handler -> dataset -> training -> ONNX export
with parity check -> encrypted split publish to a local target -> verified fetch ->
inference on a rendered video -> HTML report. No broker (unless asked), GPU, cloud or network.
"""

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from azaion_training.layout import Layout
from azaion_training.logs import get_logger, log, register_secret
from azaion_training.settings import Settings
from azaion_training.training.runs import RUN_ONNX

logger = get_logger("demo")
MODEL_NAME = RUN_ONNX  # what a promotion publishes

# Ultralytics' defaults suit long GPU runs on real data; a 2-minute CPU run from scratch
# learns with these (auto-optimizer would pick AdamW at lr 1e-4 for 80 classes, far too slow,
# and mosaic/colour jitter hide the cues the weather classes need).
DEMO_HYPERPARAMETERS = {"optimizer": "AdamW", "lr0": 0.004, "warmup_epochs": 1, "mosaic": 0.0,
                        "hsv_s": 0.2, "hsv_v": 0.2, "plots": False}


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    images: int = 240
    epochs: int = 30
    imgsz: int = 128
    batch: int = 8
    video_frames: int = 48
    seed: int = 0
    broker: Settings | None = None  # publish/consume through this broker instead of a dump replay
    # the gate's floor for the demo's promotion (the product's default); a deliberately tiny demo
    # (a test's) lowers it, and the parity floor with it
    min_map50: float = 0.1


@dataclass
class DemoResult:
    report: Path
    map50: float | None
    timings_s: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    promoted: bool = False  # the gate published the run to <workdir>/published
    refused: str | None = None  # why the gate refused it


def demo_settings(options: DemoOptions, base: Settings | None = None) -> Settings:
    """Settings for a tree under the workdir: a small CPU model, a random model key made for this
    tree (redacted from logs; `save_demo_config` keeps it beside the tree's config.yaml), the
    broker connection of `base` when given."""
    key = secrets.token_urlsafe(32)
    register_secret(key)
    data = (base or Settings()).model_dump()
    data["environment"] = "development"
    data["paths"].update(root_dir=str(options.workdir / "azaion"))
    data["training"].update(model="yolo26n.yaml", epochs=options.epochs, batch_size=options.batch,
                            imgsz=options.imgsz, save_period=-1, workers=0, device="cpu")
    data["export"].update(onnx_imgsz=options.imgsz, max_batch=4,
                          parity_min_map50=min(data["export"]["parity_min_map50"], options.min_map50))
    data["lifecycle"].update(promotion_min_map50=options.min_map50)
    data["security"]["model_encryption_key"] = key
    data["inference"].update(every=1, batch=4, conf=0.3, iou=0.3)
    # With --broker: a stream of its own, so production's stream and stored offset stay untouched.
    data["rabbitmq"].update(queue_name=f"azaion-demo-{secrets.token_hex(4)}", consumer_name="azaion-demo")
    return Settings.model_validate(data)


DEMO_CONFIG = "config.yaml"
DEMO_KEY = "model.key"


def save_demo_config(settings: Settings, workdir: Path) -> tuple[Path, Path]:
    """Write `<workdir>/config.yaml` (the settings of the demo's tree, its model key included) and
    `<workdir>/model.key` (the key alone), both mode 0600, so the tree stays usable after the demo:
    `azaion --config <workdir>/config.yaml models list | fetch-model | infer | cycle`. A broker
    password from the caller's own config (--broker) is not copied: export RABBITMQ_PASSWORD."""
    from azaion_training.fsutil import atomic_write_text
    from azaion_training.settings import require_secret, to_yaml

    no_password = settings.rabbitmq.model_copy(update={"password": None})  # nosec B105 # removes one, sets none
    kept = settings.model_copy(update={"rabbitmq": no_password})
    config, key = workdir / DEMO_CONFIG, workdir / DEMO_KEY
    atomic_write_text(key, require_secret(settings.security.model_encryption_key, "MODEL_ENCRYPTION_KEY") + "\n",
                      mode=0o600)
    atomic_write_text(config, to_yaml(kept).replace("Rendered by `azaion config render`",
                                                    "Written by `azaion demo` for its tree", 1), mode=0o600)
    return config, key


class Steps:
    """Times each step and logs it (one JSON line per step when not on a terminal)."""

    def __init__(self, total: int):
        self.total, self.done, self.timings = total, 0, {}

    def run(self, name: str, work: Callable[[], Any]) -> Any:
        self.done += 1
        log(logger, logging.INFO, f"demo step {self.done}/{self.total}: {name}")
        started = time.monotonic()
        result = work()
        self.timings[name] = round(time.monotonic() - started, 1)
        log(logger, logging.INFO, f"demo step {name} done", seconds=self.timings[name])
        return result


def run_demo(options: DemoOptions) -> DemoResult:
    from azaion_training.demo.stream import StreamPlan, write_stream_dump

    workdir = options.workdir.absolute()
    options = replace(options, workdir=workdir)
    settings = demo_settings(options, options.broker)
    layout = Layout(settings.paths)
    layout.init()
    config, key = save_demo_config(settings, workdir)  # first: the published model stays decryptable
    steps = Steps(9)
    started = time.monotonic()

    plan = StreamPlan(images=options.images, size=options.imgsz, seed=options.seed)
    dump = workdir / "stream.azqdump"
    stream = steps.run("generate annotated scenes as stream messages", lambda: write_stream_dump(dump, plan))
    ingest = steps.run("consume the stream", lambda: ingest_stream(settings, dump, options.broker is not None))
    formed = steps.run("form the dataset", lambda: _form(settings, options.seed))
    trained = steps.run("train yolo26n on CPU", lambda: _train(settings, formed))
    exported = steps.run("export ONNX with the parity check", lambda: _export(settings, trained))
    published = steps.run("judge, encrypt, split and publish (promote)",
                          lambda: _publish(settings, trained, workdir))
    video = steps.run("render a flight video", lambda: _video(options))
    inference = steps.run("infer on the video with the fetched model",
                          lambda: _infer(settings, video, workdir, published, exported["path"]))
    report = steps.run("write the report", lambda: _report(settings, trained, exported, stream, ingest,
                                                           published, inference, steps.timings, options))
    steps.timings["total"] = round(time.monotonic() - started, 1)
    result = DemoResult(
        report=report.index_html, map50=report.evaluation.map50 if report.evaluation else None,
        timings_s=steps.timings,
        artefacts={"dump": str(dump), "dataset": str(formed.path), "run": str(trained.run_dir),
                   "pt": str(trained.best), "onnx": str(exported["path"]),
                   "manifest": str(published["manifest_path"]) if published["promoted"] else None, "video": str(video),
                   "inference": str(workdir / "inference"), "report": str(report.index_html),
                   "root": str(layout.root), "config": str(config), "model_key": str(key),
                   "target": published["target"]},
        counts={"stream": stream.as_dict(), "ingest": ingest},
        promoted=published["promoted"], refused=None if published["promoted"] else published["reasons"])
    log(logger, logging.INFO, "demo finished", seconds=steps.timings["total"], mAP50=result.map50,
        report=str(result.report))
    return result


def ingest_stream(settings: Settings, dump: Path, broker: bool) -> dict[str, Any]:
    """Apply the dump's entries: replayed through the consumer's handler, or published to the
    configured stream and consumed from it until idle."""
    if not broker:
        from azaion_training.queue.replay import replay_dump

        return asdict(replay_dump(settings, dump))
    from azaion_training.queue.consumer import consume
    from azaion_training.queue.dumpfile import iter_dump
    from azaion_training.queue.streamio import publish

    sent = publish(settings.rabbitmq, (record.data for record in iter_dump(dump)))
    result = consume(settings, exit_when_idle=5.0, create_stream=True)
    return {"published": sent, **result.counts.as_dict(), "committed_offset": result.committed_offset}


def _form(settings: Settings, seed: int):
    from azaion_training.dataset.form import form_dataset

    # the default name (azaion-YYYY-MM-DD): the tree's latest dataset for `azaion status`, train, export
    return form_dataset(settings, seed=seed, progress=False)


def _train(settings: Settings, formed):
    from azaion_training.training.train import TrainRequest, train

    return train(settings, TrainRequest(dataset=str(formed.path), hyperparameters=DEMO_HYPERPARAMETERS))


def _export(settings: Settings, trained) -> dict[str, Any]:
    """The run's ONNX as promotion exports it: once, at the size the run trained at, with the
    parity check (PyTorch vs our ONNX inference on the valid split, at most 0.01 mAP50 apart)."""
    from azaion_training.training.export import run_onnx
    from azaion_training.training.runs import RunRecord

    return run_onnx(settings, RunRecord.load(trained.run_dir))[1]


def _publish(settings: Settings, trained, workdir: Path) -> dict[str, Any]:
    """Promote the run to a local API/CDN stand-in through the gate, as production does: its
    ONNX judged on the test split, encrypted, split, published atomically, then fetched back,
    decrypted in memory and checked against what was judged (SHA-256 and sample scores)."""
    from azaion_training.distribution.publish import local_manifest_path
    from azaion_training.lifecycle.promote import promote
    from azaion_training.lifecycle.registry import FOLDER

    target = f"local:{workdir / 'published'}"
    decision = promote(settings, trained.run_dir.name, target=target)
    comparison = decision.comparison
    gate = comparison.candidate if comparison is not None else None
    if decision.action != "promote":
        # A run too small to learn (a few images, a few epochs) stays below the gate's floor: as in
        # production nothing is published, and the demo goes on with the run's ONNX file.
        reasons = "; ".join(decision.reasons or []) or decision.action
        log(logger, logging.WARNING, "the gate refused the demo's model: nothing published, inference uses "
            "the run's ONNX file", reasons=reasons)
        return {"target": target, "promoted": False, "reasons": reasons, "manifest_path": None, "manifest": None,
                "gate": gate.metrics if gate else None,
                "fetch_check": f"not published: the gate refused it ({reasons})"}
    manifest_path = local_manifest_path(Layout(settings.paths), FOLDER, MODEL_NAME)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return {"target": target, "promoted": True, "manifest_path": manifest_path, "manifest": manifest,
            "gate": gate.metrics,
            "fetch_check": f"judged mAP50 {gate.metrics['mAP50']:.3f} [{comparison.where(gate)}]; fetched back, "
                           f"decrypted in memory, SHA-256 {gate.onnx_sha256[:16]}... matches the judged ONNX"}


def _video(options: DemoOptions) -> Path:
    from azaion_training.demo.stream import DEMO_CLASSES
    from azaion_training.demo.video import render_flight

    rng = np.random.default_rng(options.seed + 1)
    return render_flight(options.workdir / "flight.mp4", rng, options.imgsz, DEMO_CLASSES, options.video_frames)


def _infer(settings: Settings, video: Path, workdir: Path, published: dict[str, Any], onnx: Path):
    """With the published model, fetched and decrypted in memory; the run's ONNX file when the gate
    refused to publish it."""
    from azaion_training.inference.pipeline import run_inference

    if not published["promoted"]:
        return run_inference(settings, video, str(onnx), workdir / "inference", engine="onnx")
    return run_inference(settings, video, MODEL_NAME, workdir / "inference", target=published["target"],
                         engine="onnx")


def ingest_rows(stream, ingest: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's ingest table. Every count is of stream messages except the `annotations`
    column: a bulk message names many annotations. `ingest` is a dump replay's result or the
    consumer's counts (--broker)."""
    by_status = ingest.get("by_status") or {status: ingest.get(status.lower(), 0)
                                            for status in ("Created", "Edited", "Validated", "Deleted")}
    rejected = ingest["rejected"] if isinstance(ingest["rejected"], int) else sum(ingest["rejected"].values())
    row = dict.fromkeys(("messages", "sent", "annotations", "applied", "skipped", "rejected"))
    return [
        {**row, "messages": "Created (one annotation and its image each)", "sent": stream.annotations,
         "annotations": stream.annotations, "applied": by_status.get("Created", 0)},
        {**row, "messages": "Validated (bulk: a list of names)", "sent": stream.validated_messages,
         "annotations": stream.validated, "applied": by_status.get("Validated", 0)},
        {**row, "messages": "Deleted (bulk: a list of names)", "sent": stream.deleted_messages,
         "annotations": stream.deleted, "applied": by_status.get("Deleted", 0)},
        {**row, "messages": "malformed (garbage, an unsafe name, a box off the image)", "sent": stream.malformed},
        {**row, "messages": "all messages", "sent": stream.messages, "applied": ingest["applied"],
         "skipped": ingest["skipped"], "rejected": rejected},
    ]


def _report(settings: Settings, trained, exported, stream, ingest, published, inference, timings,
            options: DemoOptions):
    from azaion_training.report.build import ReportInputs, annotated_frames, build_report

    summary = asdict(inference)
    parity = exported["parity"]
    inputs = ReportInputs(
        run_dir=trained.run_dir, title="Azaion demo: annotations to an encrypted model on video",
        ingest=ingest_rows(stream, ingest),
        publish={"manifest": published["manifest"], "fetch": published["fetch_check"]},
        inference=summary, inference_frames=annotated_frames(summary),
        extra={"images generated": options.images, "imgsz": options.imgsz, "epochs": options.epochs,
               "ONNX parity (valid split mAP50)": f"PyTorch {parity['pytorch_map50']:.3f}, ONNX "
                                                  f"{parity['onnx_map50']:.3f} on {parity['images']} images "
                                                  f"at imgsz {parity['imgsz']}",
               **{f"time: {k} (s)": v for k, v in timings.items()}})
    return build_report(settings, inputs, options.workdir / "report")
