"""Synthetic aerial-like scenes with YOLO labels: textured terrain, objects of several classes
drawn as distinct top-down shapes with shadows, and the three weather modes (winter palette,
night darkening). Used by the demo, the tests and the benchmarks: no dataset ships offline.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from azaion_training.classes import WeatherMode
from azaion_training.labels import Box
from azaion_training.labels import label_text as labels_to_text

# Base class id -> how it looks from above: (shape, BGR colour, (length, width) in px at 640).
LOOKS: dict[int, tuple[str, tuple[int, int, int], tuple[int, int]]] = {
    0: ("tank", (40, 70, 50), (70, 40)),         # ArmorVehicle
    1: ("truck", (30, 90, 150), (90, 34)),       # Truck
    2: ("car", (200, 200, 210), (48, 24)),       # Vehicle
    3: ("gun", (20, 40, 40), (80, 20)),          # Artillery
    6: ("man", (60, 110, 90), (16, 16)),         # MilitaryMan
    10: ("plane", (180, 180, 180), (110, 100)),  # Plane
    11: ("moto", (20, 20, 200), (26, 12)),       # Moto
    15: ("building", (120, 130, 150), (100, 80)),  # Building
}
DEFAULT_CLASSES = tuple(LOOKS)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # BGR uint8
    labels: list[tuple[int, float, float, float, float]]  # (class id, cx, cy, w, h) normalised


def _terrain(rng: np.random.Generator, size: int, mode: WeatherMode) -> np.ndarray:
    base = {WeatherMode.Wint: (225, 228, 232)}.get(mode, (60, 110, 90))
    noise = rng.normal(0, 1, (size // 16 + 1, size // 16 + 1)).astype(np.float32)
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)[..., None]
    fine = rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    image = np.array(base, np.float32) + noise * 18 + fine
    if mode is not WeatherMode.Wint:  # fields and a road
        cv2.line(image, (0, int(rng.integers(size))), (size, int(rng.integers(size))), (110, 120, 125),
                 max(3, size // 40))
    return image


def _silhouette(shape: str, center, length, width, angle) -> list[np.ndarray]:
    """The object's outline polygons seen from above (a man is a small disc)."""
    def rect(cx, cy, long, wide):
        return cv2.boxPoints(((cx, cy), (long, wide), angle)).astype(np.int32)

    if shape == "man":
        return [cv2.ellipse2Poly((int(center[0]), int(center[1])), (int(length / 2),) * 2, 0, 0, 360, 30)]
    if shape == "plane":
        return [rect(*center, length * 0.25, width), rect(*center, length, width * 0.22)]
    return [rect(*center, length, width)]


def _draw_object(image: np.ndarray, shape: str, color, center, length, width, angle) -> None:
    outline = _silhouette(shape, center, length, width, angle)
    offset = np.int32([max(2, int(width * 0.2))] * 2)  # sun from the top left
    cv2.fillPoly(image, [polygon + offset for polygon in outline], (20, 25, 20))
    cv2.fillPoly(image, outline, color)
    heading = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    if shape == "tank":  # turret and barrel
        cv2.circle(image, (int(center[0]), int(center[1])), int(width * 0.35), (25, 45, 30), -1)
        tip = np.asarray(center) + heading * length * 0.8
        cv2.line(image, (int(center[0]), int(center[1])), (int(tip[0]), int(tip[1])), (25, 45, 30),
                 max(2, int(width * 0.12)))
    elif shape == "truck":  # cab
        cab = np.asarray(center) + heading * length * 0.38
        cv2.fillPoly(image, [cv2.boxPoints(((cab[0], cab[1]), (length * 0.22, width), angle)).astype(np.int32)],
                     (20, 20, 20))
    elif shape == "building":
        cv2.polylines(image, outline, True, (40, 40, 60), max(2, int(width * 0.08)))


def render_scene(rng: np.random.Generator, size: int = 640, mode: WeatherMode = WeatherMode.Norm,
                 classes: tuple[int, ...] = DEFAULT_CLASSES, max_objects: int = 6,
                 scale: float | None = None) -> Scene:
    """One scene with 1..max_objects non-overlapping objects; labels use model class ids
    (base id + weather offset). `scale` is the object size in pixels relative to a 640 px
    scene (default size/640: objects keep their share of the image at any size)."""
    image = _terrain(rng, size, mode)
    scale = size / 640 if scale is None else scale
    labels: list[tuple[int, float, float, float, float]] = []
    occupied: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        base_id = int(rng.choice(classes))
        shape, color, (length, width) = LOOKS[base_id]
        zoom = rng.uniform(0.7, 1.4) * scale * 1.6
        length, width = max(4.0, length * zoom), max(4.0, width * zoom)
        angle = float(rng.uniform(0, 180))
        half = np.hypot(length, width) / 2 + 2
        if 2 * half >= size:
            continue
        center = rng.uniform(half, size - half, 2)
        extent = cv2.boundingRect(cv2.boxPoints(((center[0], center[1]), (length, width), angle)))
        x0, y0, w, h = extent
        if any(x0 < ox + ow and ox < x0 + w and y0 < oy + oh and oy < y0 + h for ox, oy, ow, oh in occupied):
            continue
        occupied.append((x0, y0, w, h))
        _draw_object(image, shape, color, center, length, width, angle)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(size, extent[0] + w), min(size, extent[1] + h)
        labels.append((base_id + int(mode), (x0 + x1) / 2 / size, (y0 + y1) / 2 / size,
                       (x1 - x0) / size, (y1 - y0) / size))
    if mode is WeatherMode.Night:
        image = image * 0.45 + np.array((30, 12, 0), np.float32)  # dark, blue-shifted
    return Scene(np.clip(image, 0, 255).astype(np.uint8), labels)


def label_text(labels: list[tuple[int, float, float, float, float]]) -> str:
    return labels_to_text([Box(*label) for label in labels])


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()
