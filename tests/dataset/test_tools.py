"""visualise, convert and stats."""

import json

import cv2
import numpy as np
import pytest

from azaion_training.dataset.convert import convert, minmax2yolo
from azaion_training.dataset.form import form_dataset
from azaion_training.dataset.stats import dataset_stats
from azaion_training.dataset.visualise import visualise
from azaion_training.errors import InputError
from azaion_training.labels import read_label_file
from tests.conftest import run_azaion
from tests.dataset.conftest import add_annotations


def test_visualise_draws_boxes_in_class_colours(settings, layout, tmp_path):
    add_annotations(layout, 1)
    layout.data.label_path("ann0000").write_text("1 0.5 0.5 0.5 0.5\n")  # Truck: colour from classes.json
    written = visualise(layout.data.root, tmp_path / "out", layout.classes_json, limit=5)
    assert [p.name for p in written] == ["data-001.png"]
    grid = cv2.imread(str(written[0]))
    assert grid.shape == (320, 4 * 320, 3)
    from azaion_training.classes import load_classes

    colour = np.array(load_classes(layout.classes_json)[1].bgr)
    left_edge = grid[80:240, 80]  # the box spans 80..240 px of the 320 px cell
    assert (np.abs(left_edge.astype(int) - colour).sum(axis=1) < 10).mean() > 0.9


def test_cli_visualise_dataset_pages_per_split(root, layout, tmp_path):
    add_annotations(layout, 30)  # 21 train: 2 pages at --limit 17
    formed = run_azaion("dataset", "form")
    assert formed.returncode == 0, formed.stderr
    path = formed.stdout.split("formed ")[1].split(" ")[0]
    assert (layout.datasets / path.rsplit("/", 1)[1]).is_dir()
    done = run_azaion("dataset", "visualise", path,
                      "--out", str(tmp_path / "grids"), "--limit", "17")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == [
        "test-001.png", "train-001.png", "train-002.png", "valid-001.png"]
    missing = run_azaion("dataset", "visualise", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr


def _image(path, width=200, height=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))


def test_minmax2yolo():
    box = minmax2yolo(200, 100, 20, 60, 10, 50, cls=3)
    assert (box.cls, box.cx, box.cy, box.w, box.h) == (3, pytest.approx(0.2), pytest.approx(0.3),
                                                      pytest.approx(0.2), pytest.approx(0.4))


def test_convert_voc_and_report_bad_files(tmp_path):
    src = tmp_path / "voc"
    _image(src / "JPEGImages" / "good.jpg")
    _image(src / "JPEGImages" / "badclass.jpg")
    _image(src / "JPEGImages" / "broken.jpg")
    (src / "Annotations").mkdir()
    (src / "Annotations" / "good.xml").write_text(
        "<annotation><size><width>200</width><height>100</height></size>"
        "<object><name>truck</name><bndbox><xmin>20</xmin><ymin>10</ymin><xmax>60</xmax><ymax>50</ymax></bndbox></object>"
        "<object><name>Truck(Wint)</name><bndbox><xmin>150</xmin><ymin>50</ymin><xmax>250</xmax><ymax>90</ymax>"
        "</bndbox></object></annotation>")
    (src / "Annotations" / "badclass.xml").write_text(
        "<annotation><size><width>200</width><height>100</height></size><object><name>unicorn</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    (src / "Annotations" / "broken.xml").write_text("<annotation><size>")
    (src / "Annotations" / "orphan.xml").write_text("<annotation/>")
    result = convert(src, tmp_path / "out", "voc")
    assert result.converted == 1 and result.boxes == 2
    boxes = read_label_file(tmp_path / "out" / "labels" / "good.txt")
    assert [b.cls for b in boxes] == [1, 21]
    assert boxes[1].cx + boxes[1].w / 2 == pytest.approx(1.0)  # clipped to the image
    assert (tmp_path / "out" / "images" / "good.jpg").is_file()
    reasons = {k.rsplit("/", 1)[1]: v for k, v in result.bad.items()}
    assert set(reasons) == {"badclass.xml", "broken.xml", "orphan.xml"}
    assert "unicorn" in reasons["badclass.xml"] and "XML" in reasons["broken.xml"]
    assert "no image" in reasons["orphan.xml"]


def test_cli_convert_oriented(root, tmp_path):
    src = tmp_path / "dota"
    _image(src / "images" / "p1.png")
    (src / "labelTxt").mkdir()
    (src / "labelTxt" / "p1.txt").write_text("imagesource:GoogleEarth\ngsd:0.1\n"
                                              "10 10 50 20 40 60 0 50 plane 0\n")
    _image(src / "images" / "p2.png")
    (src / "labelTxt" / "p2.txt").write_text("10 10 50 20 plane\n")
    done = run_azaion("dataset", "convert", "--format", "oriented", str(src), "--out", str(tmp_path / "out"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert result["converted"] == 1 and result["bad"] == 1
    [box] = read_label_file(tmp_path / "out" / "labels" / "p1.txt")
    assert box.cls == 10 and box.cx == pytest.approx(0.125) and box.w == pytest.approx(0.25)
    assert box.cy == pytest.approx(0.35) and box.h == pytest.approx(0.5)
    bad = run_azaion("dataset", "convert", "--format", "coco", str(src), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and "coco" in bad.stderr


def test_stats_counts_and_histogram(settings, layout, tmp_path):
    add_annotations(layout, 10)
    result = form_dataset(settings, progress=False)
    stats = dataset_stats(result.path)
    assert stats.images == result.counts
    manifest = json.loads(result.manifest.read_text())
    assert {s: {str(c): n for c, n in stats.boxes[s].items()} for s in stats.boxes} == manifest["class_histogram"]
    done = run_azaion("dataset", "stats", "--json", "--out", str(tmp_path / "h.png"))
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert printed["images"] == result.counts
    assert cv2.imread(str(tmp_path / "h.png")) is not None
    table = run_azaion("dataset", "stats", result.path.name)
    assert table.returncode == 0 and "images" in table.stdout and (result.path / "stats.png").is_file()


def test_stats_without_datasets_is_an_input_error(root):
    done = run_azaion("dataset", "stats")
    assert done.returncode == 2 and "azaion dataset form" in done.stderr
    with pytest.raises(InputError):
        from azaion_training.dataset.form import resolve_dataset
        from azaion_training.layout import Layout
        from azaion_training.settings import load_settings

        resolve_dataset("no-such-dataset", Layout(load_settings().paths))


def test_a_dataset_name_wins_over_a_same_named_folder_in_the_working_directory(layout, tmp_path, monkeypatch):
    from azaion_training.dataset.form import resolve_dataset

    (layout.datasets / "azaion-demo").mkdir()
    (tmp_path / "cwd" / "azaion-demo").mkdir(parents=True)  # e.g. the demo's own work dir
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_dataset("azaion-demo", layout) == layout.datasets / "azaion-demo"
    assert resolve_dataset(str(tmp_path / "cwd" / "azaion-demo"), layout) == tmp_path / "cwd" / "azaion-demo"
