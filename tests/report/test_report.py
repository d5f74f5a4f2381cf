"""`azaion report RUN` on a real Ultralytics run (the tiny_model fixture)."""

import json
import shutil

import numpy as np

from azaion_training.demo.pipeline import ingest_rows
from azaion_training.demo.stream import StreamSummary
from azaion_training.inference.pipeline import label_origin
from azaion_training.report import html, plots
from azaion_training.report.build import NO_LEARNING_MAP50, annotated_frames, no_learning_notice
from azaion_training.report.evaluate import Evaluation
from tests.conftest import run_azaion


def test_report_of_a_training_run(root, tiny_model):
    run_dir = root / "models" / "azaion-2025-03-04"
    shutil.copytree(tiny_model.parent.parent, run_dir)
    done = run_azaion("report", run_dir.name, env={"AZAION_ROOT_DIR": str(root)}, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = run_dir / "report"
    page = (out / "index.html").read_text()
    assert str(out / "index.html") in done.stdout
    for heading in ("Pipeline summary", "Dataset", "Training", "Per-class AP", "ground truth vs predictions"):
        assert heading in page
    assert "<script" not in page and "https://" not in page
    for png in ("class_histogram", "training_curves", "test_grid"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "report.json").read_text())
    assert summary["evaluation"]["split"] == "valid" and summary["evaluation"]["images"] == 12
    assert 0 <= summary["evaluation"]["mAP50"] <= 1
    # Two epochs teach the tiny model nothing: the page says so and why, instead of bare zeros.
    assert summary["evaluation"]["mAP50"] < NO_LEARNING_MAP50
    assert "The model did not learn" in page and "too few epochs (2)" in page and "imgsz 160" in page
    assert summary["no_learning"][0].startswith("The model did not learn")
    assert "overlap cleanup at IoU" in page


def test_report_of_an_unknown_run_is_an_input_error(root):
    done = run_azaion("report", "azaion-1999-01-01", env={"AZAION_ROOT_DIR": str(root)})
    assert done.returncode == 2
    assert "azaion-1999-01-01" in done.stderr and "Traceback" not in done.stderr


def test_html_escapes_everything_it_is_given():
    page = html.page("<t>", "s", [("h&", html.table([{"a": "<b>x</b>", "n": 0.5}]))])
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "h&amp;" in page
    assert '<td class="num">0.500</td>' in page


def test_plots_write_pngs(tmp_path):
    pr = plots.precision_recall(np.linspace(0, 1, 50), np.array([np.linspace(1, 0, 50)]), ["Truck"], [0.5],
                                tmp_path / "pr.png")
    hist = plots.class_histogram({"train": {"Truck": 3, "Plane": 1}}, tmp_path / "h.png", "t", order=["Plane"])
    grid = plots.image_grid([np.zeros((32, 32, 3), np.uint8)] * 3, ["a", "b", "c"], tmp_path / "g.png")
    for png in (pr, hist, grid):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_no_learning_notice_only_below_the_bar():
    def evaluation(map50: float) -> Evaluation:
        return Evaluation(split="test", images=24, map50=map50, map50_95=0.0, precision=0.0, recall=0.0)

    assert no_learning_notice(evaluation(0.62), 30, 168, 128) is None
    notice = no_learning_notice(evaluation(0.0), 12, 67, 64)
    assert notice[0] == "The model did not learn: mAP50 0.000 on the test split (24 images). Likely reasons:"
    reasons = " ".join(notice[1:])
    for expected in ("too few epochs (12)", "too few training images (67)", "imgsz 64", "labels that do not match"):
        assert expected in reasons
    rendered = html.warning(notice[0], notice[1:])
    assert rendered.count("<li>") == 4 and "did not learn" in rendered


def test_per_class_curves_stay_distinguishable_with_every_class():
    for count in (17, 51, 80):  # 17 base classes, x 3 weather modes, every model slot
        styles = plots.curve_styles(count)
        assert len(set(styles)) == count


def test_inference_frames_are_captioned_with_the_frames_of_detections_jsonl(tmp_path):
    """The annotated video of a run with every=3 holds source frames 0, 3, 6, ...: the captions
    must name those (not 1..N), and each picture must be the frame its caption names."""
    import cv2

    video = tmp_path / "flight.annotated.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (64, 64))
    for position in range(10):
        writer.write(np.full((64, 64, 3), 20 * position, np.uint8))  # brightness tells the position
    writer.release()
    records = [{"frame": 3 * position, "time_s": 0.75 * position,
                "detections": [{"class_id": 1}] * (position % 3)} for position in range(10)]
    jsonl = tmp_path / "detections.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in records))

    frames = annotated_frames({"outputs": {"video": str(video), "detections": str(jsonl)}}, count=4)

    assert [caption for caption, _ in frames] == ["frame 0: 0 detections", "frame 9: 0 detections",
                                                  "frame 18: 0 detections", "frame 27: 0 detections"]
    for (_, image), position in zip(frames, (0, 3, 6, 9), strict=True):
        assert abs(float(image.mean()) - 20 * position) < 6
    assert annotated_frames({"outputs": {"detections": str(jsonl)}}) == []  # a run with --no-video


def test_box_labels_stay_inside_the_image():
    width, height, text = 160, 120, (50, 9)
    for top_left in ((150, 0), (0, 2), (-5, 60), (155, 118)):
        x, y = label_origin(top_left, text, (height, width, 3))
        assert 0 <= x and x + text[0] <= width and y - text[1] >= 0 and y <= height


def test_ingest_table_counts_messages_and_annotations_apart():
    stream = StreamSummary(messages=105, annotations=100, validated=30, deleted=4, validated_messages=1,
                           deleted_messages=1, malformed=3)
    replay = {"records": 105, "applied": 102, "skipped": 0, "rejected": {"bad-msgpack": 1, "unsafe-name": 2},
              "created": 100, "edited": 0, "validated": 1, "deleted": 1}
    rows = {row["messages"].split()[0]: row for row in ingest_rows(stream, replay)}
    assert (rows["Validated"]["sent"], rows["Validated"]["annotations"], rows["Validated"]["applied"]) == (1, 30, 1)
    assert (rows["Deleted"]["sent"], rows["Deleted"]["annotations"], rows["Deleted"]["applied"]) == (1, 4, 1)
    assert (rows["all"]["sent"], rows["all"]["applied"], rows["all"]["rejected"]) == (105, 102, 3)
    consumed = {"published": 105, "applied": 102, "skipped": 0, "rejected": 3, "rejected_by_reason": {},
                "by_status": {"Created": 100, "Validated": 1, "Deleted": 1}, "last_offset": 104}
    assert ingest_rows(stream, consumed) == ingest_rows(stream, replay)
