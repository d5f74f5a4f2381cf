"""Dataset formation and its leakage/integrity rules (docs/data-tree.md)."""

import hashlib
import json
from collections import Counter
from datetime import date

import pytest
import yaml

from azaion_training.annotation_index import AnnotationIndex, IndexEntry
from azaion_training.classes import model_class_names
from azaion_training.dataset import form
from azaion_training.dataset.form import form_dataset
from azaion_training.errors import InputError, OperationFailed
from azaion_training.layout import SPLITS, DatasetDir
from azaion_training.report.status import collect_status
from tests.conftest import run_azaion
from tests.dataset.conftest import add_annotations, make_old, tree_digest


def _split_names(dataset, split, kind="images"):
    return sorted(p.stem for p in (dataset / split / kind).iterdir())


def test_100_annotations_split_70_20_10_into_six_dirs(settings, layout):  # BT-DSF-01..03
    names = add_annotations(layout, 100)
    result = form_dataset(settings, progress=False)
    assert result.path == layout.datasets / f"azaion-{date.today().isoformat()}"
    assert result.counts == {"train": 70, "valid": 20, "test": 10}
    for split in SPLITS:
        assert _split_names(result.path, split) == _split_names(result.path, split, "labels")
    formed = [n for split in SPLITS for n in _split_names(result.path, split)]
    assert sorted(formed) == names  # nothing lost, nothing duplicated
    assert result.corrupted == 0 and result.warnings == []


def test_bad_annotations_are_quarantined_with_reasons(settings, layout):  # BT-DSF-04 + issue's cases
    names = add_annotations(layout, 95)
    bad_label = add_annotations(layout, 2, prefix="badlabel", seed=5)
    for name in bad_label:
        layout.data.label_path(name).write_text("0 0.5 0.5 0.1 0.1\n0 1.5 0.5 0.1 0.1\n")
    [truncated] = add_annotations(layout, 1, prefix="truncated", seed=6)
    image = layout.data.image_path(truncated, ".jpg")
    image.write_bytes(image.read_bytes()[:-200])
    [no_label] = add_annotations(layout, 1, prefix="nolabel", seed=7)
    layout.data.label_path(no_label).unlink()
    [no_image] = add_annotations(layout, 1, prefix="noimage", seed=8)
    layout.data.image_path(no_image, ".jpg").unlink()
    make_old(layout.data.image_path(no_label, ".jpg"), layout.data.label_path(no_image))

    result = form_dataset(settings, progress=False)

    assert result.corrupted == 5
    assert sum(result.counts.values()) == 95
    assert sorted(p.stem for p in layout.data.images.iterdir()) == names  # bad pairs left data/
    corrupted = layout.corrupted
    reasons = {p.name.removesuffix(".reason.txt"): p.read_text() for p in corrupted.root.glob("*.reason.txt")}
    assert set(reasons) == {*bad_label, truncated, no_label, no_image}
    assert "outside [0, 1]" in reasons[bad_label[0]] and "line 2" in reasons[bad_label[0]]
    assert "truncated JPEG" in reasons[truncated]
    assert "no label" in reasons[no_label] and "no image" in reasons[no_image]
    assert sorted(p.stem for p in corrupted.images.iterdir()) == sorted([*bad_label, truncated, no_label])
    assert sorted(p.stem for p in corrupted.labels.iterdir()) == sorted([*bad_label, truncated, no_image])
    assert any("quarantined" in w for w in result.warnings)
    assert len(result.corrupted_examples) == 5


def test_a_pair_still_being_written_is_left_alone(settings, layout):
    add_annotations(layout, 3)
    [fresh] = add_annotations(layout, 1, prefix="fresh", seed=2)
    layout.data.label_path(fresh).unlink()
    result = form_dataset(settings, progress=False)
    assert result.corrupted == 0
    assert layout.data.image_path(fresh, ".jpg").is_file()
    assert any("still being written" in w for w in result.warnings)


def test_empty_source_gives_six_dirs_and_data_yaml(settings, layout):  # RT-DSF-01
    result = form_dataset(settings, progress=False)
    for split in SPLITS:
        assert (result.path / split / "images").is_dir() and (result.path / split / "labels").is_dir()
    assert result.data_yaml.is_file()
    assert result.counts == {"train": 0, "valid": 0, "test": 0}
    assert any("no annotations" in w for w in result.warnings)


def test_data_yaml_and_manifest(settings, layout):
    add_annotations(layout, 20)
    result = form_dataset(settings, seed=7, progress=False)
    data = yaml.safe_load(result.data_yaml.read_text())
    assert data["path"] == str(result.path) and result.path.is_absolute()
    assert (data["train"], data["val"], data["test"]) == ("train/images", "valid/images", "test/images")
    assert data["nc"] == 80 and data["names"] == model_class_names(layout.classes_json)

    manifest = json.loads(result.manifest.read_text())
    assert manifest["seed"] == 7 and manifest["corrupted"]["count"] == 0
    assert len(manifest["files"]) == 40  # every image and label
    for entry in manifest["files"]:
        assert hashlib.sha256((result.path / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
        assert entry["path"].startswith(entry["split"] + "/")
        assert entry["source_media"] == entry["annotation"]  # no index: the stem
    boxes = Counter()
    for split in SPLITS:
        for label in (result.path / split / "labels").iterdir():
            boxes.update(f"{split}:{line.split()[0]}" for line in label.read_text().splitlines())
    histogram = {f"{s}:{c}": n for s, counts in manifest["class_histogram"].items() for c, n in counts.items()}
    assert histogram == dict(boxes)


def test_hardlinks_leave_data_byte_identical(settings, layout):
    add_annotations(layout, 12)
    before = tree_digest(layout.data.root)
    result = form_dataset(settings, progress=False)
    assert tree_digest(layout.data.root) == before
    linked = next((result.path / "train" / "images").iterdir())
    assert linked.stat().st_ino == layout.data.image_path(linked.stem, ".jpg").stat().st_ino
    assert result.link_method == "hardlink"


@pytest.mark.parametrize("method", ["copy", "symlink"])
def test_other_link_methods(settings, layout, method):
    add_annotations(layout, 4)
    result = form_dataset(settings, link=method, progress=False)
    placed = next((result.path / "train" / "images").iterdir())
    assert placed.is_symlink() is (method == "symlink")
    assert placed.stat().st_ino != layout.data.image_path(placed.stem, ".jpg").stat().st_ino or method == "symlink"
    assert result.link_method == method


@pytest.mark.parametrize(("error", "raised"), [(OSError(28, "No space left on device"), OSError),
                                               (KeyError("boom"), OperationFailed)])
def test_a_linking_failure_in_the_linking_process_fails_the_formation(settings, layout, monkeypatch, error,
                                                                      raised):
    """Linking runs in a forked process: its error reaches the caller and no data.yaml is written."""
    add_annotations(layout, 20)

    def place(plan, link):
        raise error

    monkeypatch.setattr(form, "_place", place)  # inherited by the forked process
    with pytest.raises(raised):
        form_dataset(settings, progress=False)
    assert DatasetDir.latest(layout.datasets) is None
    assert not any(layout.datasets.glob("azaion-*/data.yaml"))
    monkeypatch.undo()
    assert form_dataset(settings, progress=False).counts == {"train": 14, "valid": 4, "test": 2}


def test_same_seed_same_split_other_seed_other_split(settings, layout):
    add_annotations(layout, 40)

    def assignment(seed, reshuffle=False):
        dataset = form_dataset(settings, seed=seed, progress=False, reshuffle=reshuffle).path
        return {name: split for split in SPLITS for name in _split_names(dataset, split)}

    first = assignment(1)
    assert assignment(1, reshuffle=True) == first
    assert assignment(2) == first  # sticky: the seed only places what was never split
    assert assignment(2, reshuffle=True) != first


def test_reform_same_day_gets_a_new_name_and_latest_finds_it(settings, layout):
    add_annotations(layout, 5)
    first = form_dataset(settings, progress=False)
    second = form_dataset(settings, progress=False)
    named = form_dataset(settings, name=first.path.name, progress=False)
    assert second.path.name == first.path.name + "-2"
    assert named.path.name == first.path.name + "-3"
    assert first.data_yaml.is_file()  # never overwritten
    assert DatasetDir.latest(layout.datasets).root == named.path
    (layout.datasets / "azaion-2099-01-01").mkdir()  # incomplete (no data.yaml): ignored
    for other in ("azaion-2020-01-01", "my-own-set"):  # newer on disk, but older or not dated by name
        DatasetDir(layout.datasets / other).create_splits()
        DatasetDir(layout.datasets / other).write_data_yaml({0: "a"})
    assert DatasetDir.latest(layout.datasets).root == named.path
    assert collect_status(settings)["latest_dataset"]["name"] == named.path.name  # `azaion status` agrees


def test_frames_of_one_video_stay_in_one_split(settings, layout):
    names = add_annotations(layout, 60)
    index = AnnotationIndex(layout.index_db)
    for i, name in enumerate(names):
        index.upsert(IndexEntry(name, "data", f"video{i % 7}.mp4", 20, 0, None, None, ".jpg", 20, i, "now"))
    index.close()
    result = form_dataset(settings, progress=False)
    manifest = json.loads(result.manifest.read_text())
    splits_of_media = {}
    for entry in manifest["files"]:
        splits_of_media.setdefault(entry["source_media"], set()).add(entry["split"])
    assert len(splits_of_media) == 7
    assert all(len(splits) == 1 for splits in splits_of_media.values())


def test_augment_only_train_and_reuse_the_cache(settings, layout):
    add_annotations(layout, 10)
    before = tree_digest(layout.data.root)
    result = form_dataset(settings, augment=True, progress=False)
    train = _split_names(result.path, "train")
    assert result.counts == {"train": 7 * 8, "valid": 2, "test": 1}
    assert len([n for n in train if n.endswith(tuple(f"_{k}" for k in range(1, 8)))]) == 7 * 7
    for split in ("valid", "test"):
        assert not any("_" in n for n in _split_names(result.path, split))
    assert tree_digest(layout.data.root) == before
    manifest = json.loads(result.manifest.read_text())
    for entry in manifest["files"]:
        assert hashlib.sha256((result.path / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]

    cached = tree_digest(layout.processed.root)
    again = form_dataset(settings, augment=True, progress=False)
    assert tree_digest(layout.processed.root) == cached  # nothing redone
    assert again.counts == result.counts


def test_bad_arguments_are_input_errors(settings):
    with pytest.raises(InputError, match="--link"):
        form_dataset(settings, link="rsync", progress=False)
    with pytest.raises(InputError, match="dataset name"):
        form_dataset(settings, name="../escape", progress=False)


def test_cli_form_json_and_bad_split(root, layout):
    add_annotations(layout, 10)
    done = run_azaion("dataset", "form", "--json", "--seed", "3", "--split", "80/10/10")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert result["counts"] == {"train": 8, "valid": 1, "test": 1}
    bad = run_azaion("dataset", "form", "--split", "70-30")
    assert bad.returncode == 2
    assert "--split" in bad.stderr and "Traceback" not in bad.stderr + bad.stdout


def _dataset_files_on_disk(dataset) -> set[str]:
    return {str(p.relative_to(dataset)) for split in SPLITS for p in (dataset / split).rglob("*") if p.is_file()}


def _manifest(dataset) -> dict:
    return json.loads((dataset / "manifest.json").read_text())


def test_reformation_links_registered_pairs_early_and_undoes_what_the_checks_reject(settings, layout):
    """A re-formation links the pairs whose media already has a split before checking them; a pair
    that turned bad since is quarantined and its early links removed, so the dataset holds exactly
    what its manifest lists, each file the one checked."""
    names = add_annotations(layout, 40)
    first = form_dataset(settings, progress=False)
    splits = {entry["annotation"]: entry["split"] for entry in _manifest(first.path)["files"]}
    broken, relabelled = names[3], names[7]
    image = layout.data.image_path(broken, ".jpg")
    image.write_bytes(image.read_bytes()[:-300])  # truncated since the first formation
    layout.data.label_path(relabelled).write_text("2 0.5 0.5 0.2 0.2\n")  # edited: checked again, kept
    new = add_annotations(layout, 5, prefix="new", seed=3)

    again = form_dataset(settings, progress=False)

    assert again.corrupted == 1 and layout.corrupted.label_path(broken).exists()
    manifest = _manifest(again.path)
    assert {entry["path"] for entry in manifest["files"]} == _dataset_files_on_disk(again.path)
    assert {entry["annotation"] for entry in manifest["files"]} == (set(names) - {broken}) | set(new)
    assert all(entry["split"] == splits[entry["annotation"]] for entry in manifest["files"]
               if entry["annotation"] in splits)  # sticky
    for entry in manifest["files"]:  # every file is the one its checksum describes, a link to data/
        placed = again.path / entry["path"]
        assert hashlib.sha256(placed.read_bytes()).hexdigest() == entry["sha256"]
        assert placed.stat().st_nlink >= 2
    assert (again.path / splits[relabelled] / "labels" / f"{relabelled}.txt").read_text() == "2 0.5 0.5 0.2 0.2\n"


def test_early_links_in_the_wrong_split_are_moved_to_the_registry_s(settings, layout, monkeypatch):
    """Whatever was linked before the registry's transaction (another formation may have changed it
    meanwhile), the dataset ends up with exactly the splits the transaction gave."""
    names = add_annotations(layout, 30)
    form_dataset(settings, progress=False)
    wrong = {name: "test" for name in names}  # as if the registry had said "test" for every one
    monkeypatch.setattr(form, "_registered_splits", lambda layout, pairs, media: wrong)
    again = form_dataset(settings, progress=False)
    manifest = _manifest(again.path)
    assert {entry["path"] for entry in manifest["files"]} == _dataset_files_on_disk(again.path)
    assert again.counts == {"train": 21, "valid": 6, "test": 3}


def test_manifest_files_are_encoded_as_json_would(settings, layout):
    """The "files" list is written by hand for speed: it must read back as json.dumps would write it."""
    [name] = add_annotations(layout, 1, prefix="x")
    index = AnnotationIndex(layout.index_db)
    index.begin()
    index.upsert(IndexEntry(name, "data", 'vidéo "7"\\\n.mp4', 20, 1, None, None, ".jpg", 20, 1, "2026-01-01"))
    index.commit()
    index.close()
    result = form_dataset(settings, progress=False)
    text = result.manifest.read_text()
    files = json.loads(text)["files"]
    assert text.endswith(f'"files": {json.dumps(files, ensure_ascii=False)}}}')
    assert {entry["source_media"] for entry in files} == {'vidéo "7"\\\n.mp4'}
