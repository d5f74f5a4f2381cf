"""`azaion predict-dataset` and `azaion analyse` as a user runs them: every figure names the
split, image count, imgsz and ONNX; --json is parseable; --compare shows what got better and
worse; bad input exits 2 with a message, never a traceback."""

from tests.analysis.conftest import TRAINED_IMGSZ
from tests.conftest import run_azaion
from tests.lifecycle.conftest import json_of


def test_predict_dataset_then_again_from_the_cache(clean_cache):
    fall = clean_cache
    first = json_of(run_azaion("predict-dataset", "--model", fall.good, "--json", env=fall.env))
    assert first["dataset"] == fall.dataset and first["split"] == "test" and first["engine"] == "ONNX"
    assert first["imgsz"] == TRAINED_IMGSZ and first["predicted"] == first["images"] > 0 and first["reused"] == 0
    assert first["where"] == f"test, {first['images']} images, imgsz {TRAINED_IMGSZ}, ONNX"
    again = run_azaion("predict-dataset", "--model", fall.good, env=fall.env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"[test, {first['images']} images, imgsz {TRAINED_IMGSZ}, ONNX]: predicted 0, reused {first['images']}" \
        in again.stdout
    # no --model: nothing is promoted on azaion, so the latest finished run (the swapped one)
    latest = json_of(run_azaion("predict-dataset", "--json", env=fall.env))
    assert latest["model"]["run"] == fall.swapped and latest["predicted"] == latest["images"]


def test_analyse_prints_classes_confusion_and_worst_images(fall):
    result = run_azaion("analyse", "--model", fall.good, "--worst", "3", env=fall.env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    tests = len(list((fall.root / "datasets" / fall.dataset / "test" / "images").iterdir()))
    where = f"[test, {tests} images, imgsz {TRAINED_IMGSZ}, ONNX]"
    for title in ("Per class", "Confusion matrix", "Worst 3 images by error score"):
        assert f"{title} {where}" in out, title
    assert out.count(where) >= 4  # the headline and every table
    assert "wrong class:" in out and " as " in out  # zidane's people (class 1) called class 0
    assert "(missed)" in out and "(background)" in out and "Traceback" not in result.stderr


def test_analyse_json(fall):
    data = json_of(run_azaion("analyse", "--model", fall.good, "--json", "--worst", "2", env=fall.env))
    assert data["engine"] == "ONNX" and data["imgsz"] == TRAINED_IMGSZ and data["split"] == "test"
    assert data["where"] == f"test, {data['images']} images, imgsz {TRAINED_IMGSZ}, ONNX"
    assert data["conf"] == 0.3 and data["iou"] == 0.5 and data["low_iou"] == 0.1
    assert len(data["worst"]) == 2 and data["worst"][0]["error_score"] >= data["worst"][1]["error_score"]
    kinds = {b["kind"] for image in data["worst"] for b in image["boxes"]}
    assert kinds <= {"true_positive", "wrong_class", "duplicate", "localisation", "background", "missed"}
    assert "wrong_class" in kinds
    confusion = data["confusion"]
    assert confusion["classes"][-1] == -1 and len(confusion["counts"]) == len(confusion["classes"])
    labels = {c["cls"]: c["instances"] for c in data["classes"]}
    for i, cls in enumerate(confusion["classes"][:-1]):
        assert sum(confusion["counts"][i]) == labels[cls]
    assert data["metrics"]["mAP50"] > 0.1 and data["predicted"] + data["reused"] == data["images"]
    # a different confidence judges different boxes, on the same cached detections
    strict = json_of(run_azaion("analyse", "--model", fall.good, "--json", "--conf", "0.6", env=fall.env))
    assert strict["predicted"] == 0 and strict["conf"] == 0.6
    assert strict["totals"]["missed"] > data["totals"]["missed"]
    assert strict["metrics"]["mAP50"] == data["metrics"]["mAP50"]  # AP does not depend on it


def test_analyse_compare_two_runs(fall):
    data = json_of(run_azaion("analyse", "--compare", fall.good, fall.swapped, "--json", env=fall.env))
    assert data["a"]["model"]["run"] == fall.good and data["b"]["model"]["run"] == fall.swapped
    assert data["where"].startswith("test, ") and data["where"].endswith(f"imgsz {TRAINED_IMGSZ}, ONNX")
    by_class = {c["cls"]: c for c in data["classes"]}
    assert by_class[0]["ap50_delta"] < 0 < by_class[1]["ap50_delta"]  # swapped: loses class 0, gains class 1
    assert by_class[0]["counts_delta"]["wrong_class"] > 0
    assert data["worse"] and data["better"]
    assert all(i["name"].split("/")[-1].startswith("bus") for i in data["worse"])  # bus people are class 0
    assert all(i["name"].split("/")[-1].startswith("zidane") for i in data["better"])
    assert data["interval"]["resamples"] == 1000
    text = run_azaion("analyse", "--compare", fall.good, fall.swapped, env=fall.env)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "differences are B - A" in text.stdout and "Images that got worse" in text.stdout
    assert f"imgsz {TRAINED_IMGSZ}, ONNX]" in text.stdout and "95% interval" in text.stdout


def test_production_on_a_target_is_the_published_onnx(fall, tmp_path):
    target = f"local:{tmp_path / 'published'}"
    promoted = json_of(run_azaion("models", "promote", fall.good, "--target", target, "--json", env=fall.env))
    assert promoted["action"] == "promote"
    data = json_of(run_azaion("analyse", "--model", f"production:{target}", "--json", "--worst", "0", env=fall.env))
    assert data["model"]["run"] == fall.good and data["model"]["onnx_sha256"] == promoted["event"]["onnx_sha256"]
    assert data["model"]["label"].startswith("production on ") and data["worst"] == []
    # the gate's own figure, on the same split, equals the analysis'
    assert data["metrics"]["mAP50"] == promoted["event"]["gate"]["candidate"]["mAP50"]


def test_bad_input_exits_2_with_a_message(fall):
    for args, message in ((("--split", "nope"), "--split 'nope'"),
                          (("--model", "azaion-1999-01-01"), "not found"),
                          (("--model", "missing.onnx"), "not found"),
                          (("--model", "production:local:/nonexistent-target"), "nothing is promoted"),
                          (("--dataset", "no-such-dataset"), "neither a directory nor a dataset name"),
                          (("--compare", fall.good, fall.swapped, "--model", fall.good), "leave out --model")):
        result = run_azaion("analyse", *args, env=fall.env)
        assert result.returncode == 2, (args, result.stdout[-2000:], result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    usage = run_azaion("analyse", "--compare", fall.good, env=fall.env)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
