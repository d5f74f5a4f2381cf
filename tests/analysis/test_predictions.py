"""The predictions cache with a real detector: its detections are the gate's, bit for bit, and
so are the figures built on them; a second run runs no inference; a new dataset version
predicts only its new images; a run killed midway continues where it stopped."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from azaion_training.analysis import predictions
from azaion_training.analysis.outcomes import Outcome, analyse_split, class_names
from azaion_training.analysis.predictions import (
    cached_views,
    load_split,
    predict_dataset,
    resolve_model,
    resolve_split,
    split_predictions,
)
from azaion_training.errors import InputError, OperationFailed
from azaion_training.inference.scoring import detect_labelled, score_onnx
from azaion_training.layout import SPLITS, Layout
from azaion_training.metrics import prediction_array, truth_array
from azaion_training.settings import load_settings
from tests.analysis.conftest import TRAINED_IMGSZ, form, write_annotations


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _no_inference(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the engine was constructed although every image is cached")

    monkeypatch.setattr(predictions, "open_detector", refuse)


def test_cached_detections_and_figures_are_the_gates(clean_cache):
    fall = clean_cache
    settings = fall.settings()
    model = resolve_model(settings, fall.good)
    assert model.imgsz == TRAINED_IMGSZ and model.run == fall.good
    formed = resolve_split(settings, None, "test", model)
    assert formed.name == fall.dataset  # the dataset the run trained on
    images = formed.images("test")
    run = predict_dataset(settings, model, formed, "test", progress=False)
    assert (run.images, run.predicted, run.reused) == (len(images), len(images), 0)
    assert run.store == Layout(settings.paths).predictions_file(model.sha256, TRAINED_IMGSZ, 0.001, 0.3)
    loaded = load_split(settings, model, formed, "test")
    assert loaded.where() == f"test, {len(images)} images, imgsz {TRAINED_IMGSZ}, ONNX"

    gate_predictions, gate_truths = detect_labelled(model.onnx.read_bytes(), images, settings)
    for image, found, labelled in zip(loaded.images, gate_predictions, gate_truths, strict=True):
        assert np.array_equal(image.predictions, prediction_array(found))  # the gate's detections, bit for bit
        assert np.array_equal(image.truths, truth_array(labelled))
    assert sum(len(i.predictions) for i in loaded.images) > 50  # down to EVAL_CONF, not the field's threshold

    analysis = analyse_split(loaded, class_names(settings), settings.inference.conf)
    score, evaluation = score_onnx(fall.good, model.onnx, images, settings, timed=False)
    assert analysis.map50 == evaluation.map50 and analysis.map50_95 == evaluation.map50_95
    assert {"mAP50": round(analysis.map50, 4), "mAP50-95": round(analysis.map50_95, 4),
            "precision": round(analysis.precision, 4), "recall": round(analysis.recall, 4)} == score.metrics
    assert {c.name: {"ap50": round(c.ap50, 4), "instances": c.instances} for c in analysis.classes
            if c.ap50 is not None} == score.per_class
    # the detector calls zidane's people (labelled class 1) class 0: wrong class, with what they were
    assert analysis.confusion.cell(1, 0) == analysis.totals.wrong_class > 0
    wrong = [o for i in analysis.images for o in i.boxes if o.kind is Outcome.WRONG_CLASS]
    assert {(o.cls, o.true_cls) for o in wrong} == {(0, 1)}
    assert all(i.name.startswith("test/images/") for i in analysis.images)


def test_a_second_run_runs_no_inference_and_writes_nothing(clean_cache, monkeypatch):
    fall = clean_cache
    settings = fall.settings()
    first, run = split_predictions(settings, fall.good, progress=False)
    assert run.predicted == len(first.images)
    before = _digest(run.store)
    _no_inference(monkeypatch)
    again, rerun = split_predictions(settings, fall.good, progress=False)
    assert (rerun.predicted, rerun.reused) == (0, len(first.images))
    assert _digest(rerun.store) == before  # not a byte of the cache changed
    for x, y in zip(first.images, again.images, strict=True):
        assert np.array_equal(x.predictions, y.predictions)
    assert [(v.dataset, v.split, v.images, v.complete) for v in cached_views(settings, first.model)] == \
        [(fall.dataset, "test", len(first.images), True)]


def test_a_new_dataset_version_predicts_only_the_images_it_has_not_seen(fall, tmp_path, monkeypatch):
    """Re-formed from data/ with a few more annotations: every earlier image keeps its content
    sha256 (manifest.json), so only the new ones run through the ONNX."""
    root = tmp_path / "azaion"
    settings = load_settings(env={**fall.env, "AZAION_ROOT_DIR": str(root)})
    layout = Layout(settings.paths)
    layout.init()
    write_annotations(layout, fall.annotations)
    first = form(settings, "azaion-2026-03-01")
    onnx = resolve_model(fall.settings(), fall.good).onnx
    model = resolve_model(settings, str(onnx))  # an .onnx file: same bytes, same cache key
    constructed = []
    real = predictions.open_detector
    monkeypatch.setattr(predictions, "open_detector", lambda *a: constructed.append(1) or real(*a))
    done = [predict_dataset(settings, model, resolve_split(settings, str(first), s, model), s, progress=False)
            for s in SPLITS]
    assert sum(r.predicted for r in done) == len(fall.annotations) and len(constructed) == 3

    write_annotations(layout, fall.extra)
    second = form(settings, "azaion-2026-03-02")
    again = [predict_dataset(settings, model, resolve_split(settings, str(second), s, model), s, progress=False)
             for s in SPLITS]
    assert sum(r.predicted for r in again) == len(fall.extra)
    assert sum(r.reused for r in again) == len(fall.annotations)
    assert sum(r.images for r in again) == len(fall.annotations) + len(fall.extra)
    views = {(v.dataset, v.split) for v in cached_views(settings, model)}
    assert views == {(name, s) for name in (first.name, second.name) for s in SPLITS}


KILLED = """
import sys, time
from azaion_training.analysis import predictions as p
from azaion_training.offline import configure_offline_environment
from azaion_training.settings import load_settings

configure_offline_environment()
p.COMMIT_IMAGES = 1
real = p.open_detector

def stalling(onnx, settings):
    detector = real(onnx, settings)
    detect, calls = detector.detect, []
    def counted(frames):
        calls.append(len(frames))
        if len(calls) > 3:
            time.sleep(600)  # killed here, in the middle of the run
        return detect(frames)
    detector.detect = counted
    return detector

p.open_detector = stalling
settings = load_settings()
model = p.resolve_model(settings, sys.argv[1])
p.predict_dataset(settings, model, p.resolve_split(settings, None, "test", model), "test", progress=False)
"""


def test_a_run_killed_midway_continues_where_it_stopped(clean_cache, monkeypatch):
    fall = clean_cache
    settings = fall.settings()
    model = resolve_model(settings, fall.good)
    formed = resolve_split(settings, None, "test", model)
    images = formed.images("test")
    store = Layout(settings.paths).predictions_file(model.sha256, model.imgsz, 0.001, settings.inference.iou)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED), fall.good],
                             env={**os.environ, **fall.env, "AZAION_LOG_FORMAT": "json"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        cached = 0
        while cached < 3:
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the child never cached three images"
            if store.is_file():
                with sqlite3.connect(store) as db:
                    try:
                        cached = db.execute("SELECT count(*) FROM images").fetchone()[0]
                    except sqlite3.OperationalError:  # the table is being created
                        pass
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)  # no clean-up, no last commit
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        child.stdout.close()
        child.stderr.close()
    with sqlite3.connect(store) as db:
        survived = db.execute("SELECT count(*) FROM images").fetchone()[0]
    assert 3 <= survived < len(images)
    detected = []
    real = predictions.open_detector

    def counting(*args):
        detector = real(*args)
        detect = detector.detect
        detector.detect = lambda frames: detected.extend(frames) or detect(frames)
        return detector

    monkeypatch.setattr(predictions, "open_detector", counting)
    run = predict_dataset(settings, model, formed, "test", progress=False)
    assert run.predicted == len(detected) == len(images) - survived and run.reused == survived
    loaded = load_split(settings, model, formed, "test")
    gate_predictions, _ = detect_labelled(model.onnx.read_bytes(), images, settings)
    for image, found in zip(loaded.images, gate_predictions, strict=True):
        assert np.array_equal(image.predictions, prediction_array(found))


def test_reading_before_predicting_and_bad_input_say_what_to_do(clean_cache, tmp_path):
    fall = clean_cache
    settings = fall.settings()
    model = resolve_model(settings, fall.good)
    formed = resolve_split(settings, None, "test", model)
    with pytest.raises(OperationFailed, match="run `azaion predict-dataset` first"):
        load_split(settings, model, formed, "test")
    with pytest.raises(InputError, match="--split 'nope'"):
        resolve_split(settings, None, "nope", model)
    with pytest.raises(InputError, match="not found"):
        resolve_model(settings, str(tmp_path / "missing.onnx"))
    with pytest.raises(InputError, match="not found"):
        resolve_model(settings, "azaion-1999-01-01")
    # a cache file written for another key is refused, not mixed
    path = Layout(settings.paths).predictions_file(model.sha256, model.imgsz, 0.001, settings.inference.iou)
    assert not path.exists()  # reading created nothing
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('onnx_sha256', 'something else')")
    with pytest.raises(OperationFailed, match="move it aside"):
        predict_dataset(settings, model, formed, "test", progress=False)
