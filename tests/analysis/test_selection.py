"""What to annotate next: the budget is respected, no two chosen frames are near-duplicates,
uncertain frames come first, coverage brings in new content; end to end with the real detector
on a folder with duplicated images and on a video."""

import json

import numpy as np
import pytest

from azaion_training.analysis.selection import (
    NEAR_DUPLICATE,
    box_uncertainty,
    embedding,
    frame_uncertainty,
    select,
)
from tests.conftest import run_azaion


def test_uncertainty_aggregation():
    assert box_uncertainty(np.array([0.5, 0.0, 1.0, 0.75])).tolist() == [1.0, 0.0, 0.0, 0.5]
    assert frame_uncertainty([]) == 0.0
    assert frame_uncertainty([0.5]) == pytest.approx(1 / 3)  # one borderline box: a third of three
    assert frame_uncertainty([0.5, 0.5, 0.5, 0.99]) == pytest.approx(1.0)
    assert frame_uncertainty([0.98, 0.97, 0.99]) < 0.1
    assert frame_uncertainty([0.01, 0.02]) == 0.0  # below MIN_CONF: nothing


def test_budget_near_duplicates_and_coverage():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 32))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # 6 scenes x 10 frames each, frames of one scene within ~0.02 of each other
    emb = np.concatenate([c + rng.normal(scale=0.003, size=(10, 32)) for c in centres])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    u = rng.uniform(0, 0.3, len(emb))
    u[3] = 0.95  # the most uncertain frame, in scene 0
    u[4] = 0.94  # its near-duplicate
    chosen = select(u, emb, budget=4)
    assert len(chosen) == 4
    assert chosen[0].index == 3 and chosen[0].distance is None
    picked = [c.index for c in chosen]
    assert 4 not in picked
    assert len({i // 10 for i in picked}) == 4  # four different scenes
    for a in picked:
        for b in picked:
            if a != b:
                assert np.linalg.norm(emb[a] - emb[b]) >= NEAR_DUPLICATE
    everything = select(u, emb, budget=100)
    assert len(everything) == 6  # at most one frame per scene: the rest are near-duplicates
    assert all(c.reason for c in everything)
    assert select(u, emb, 0) == [] and select([], np.zeros((0, 3)), 5) == []


def test_embedding_tells_scenes_apart():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    noisy = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    assert np.linalg.norm(embedding(a) - embedding(noisy)) < NEAR_DUPLICATE
    assert np.linalg.norm(embedding(a) - embedding(b)) > NEAR_DUPLICATE
    assert np.linalg.norm(embedding(a)) == pytest.approx(1.0)


def test_next_on_folder_and_video_with_real_detector(fall, tmp_path):
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for a in fall.annotations:
        (folder / f"{a.name}.jpg").write_bytes(a.jpeg)
        (folder / f"{a.name}-copy.jpg").write_bytes(a.jpeg)  # an exact duplicate of every frame
    result = run_azaion("review", "next", "--source", str(folder), "--budget", "6", "--model", fall.good,
                        "--name", "pick-folder", "--json", env=fall.env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["candidates"] == 2 * len(fall.annotations) and len(data["chosen"]) == 6
    chosen = [c["frame"] for c in data["chosen"]]
    stems = [name.removesuffix(".jpg").removesuffix("-copy") for name in chosen]
    assert len(set(stems)) == len(stems)  # never a frame and its copy
    written = sorted(p.name for p in (fall.root / "analysis" / "selections" / "pick-folder" / "frames").iterdir())
    assert written == sorted(chosen)
    listed = (fall.root / "analysis" / "selections" / "pick-folder" / "selection.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in listed] == chosen and all(c["reason"] for c in data["chosen"])
    vectors = [embedding(cv2.imread(str(folder / name))) for name in chosen]
    assert min(np.linalg.norm(a - b) for i, a in enumerate(vectors) for b in vectors[i + 1:]) >= NEAR_DUPLICATE

    video = tmp_path / "clip.avi"  # 3 scenes x 8 identical frames
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 8, (320, 240))
    for a in fall.annotations[:3]:
        frame = cv2.resize(cv2.imdecode(np.frombuffer(a.jpeg, np.uint8), cv2.IMREAD_COLOR), (320, 240))
        for _ in range(8):
            writer.write(frame)
    writer.release()
    result = run_azaion("review", "next", "--source", str(video), "--budget", "10", "--every", "2",
                        "--model", fall.good, "--name", "pick-video", "--json", env=fall.env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["candidates"] == 12 and len(data["chosen"]) == 3  # one per scene: the rest are near-duplicates
    assert len({c["source_index"] // 8 for c in data["chosen"]}) == 3
    assert run_azaion("review", "next", "--source", str(tmp_path / "absent.mp4"), env=fall.env).returncode == 2
