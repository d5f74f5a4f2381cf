"""A sample "drone flight" video for the demo: a camera panning over a large synthetic
scene whose objects have the same pixel size as in the training images."""

from pathlib import Path

import numpy as np

from azaion_training.classes import WeatherMode
from azaion_training.errors import OperationFailed
from azaion_training.scenes import render_scene


def render_flight(path: Path, rng: np.random.Generator, frame_size: int, classes: tuple[int, ...],
                  frames: int = 48, fps: float = 12.0, mode: WeatherMode = WeatherMode.Norm) -> Path:
    """Write an MP4 of `frames` frames (frame_size square) panning diagonally over a scene
    twice the frame size."""
    import cv2

    world = render_scene(rng, frame_size * 2, mode, classes, max_objects=12, scale=frame_size / 640).image
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame_size, frame_size))
    if not writer.isOpened():
        raise OperationFailed(f"cannot write {path}: OpenCV has no mp4v encoder here")
    try:
        for step in np.linspace(0, frame_size, frames):
            x, y = int(step), int(step * 0.6)
            writer.write(np.ascontiguousarray(world[y:y + frame_size, x:x + frame_size]))
    finally:
        writer.release()
    return path

