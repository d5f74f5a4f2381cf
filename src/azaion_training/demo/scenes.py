"""Synthetic aerial-like scenes with YOLO labels: textured terrain, objects of several classes
drawn as distinct top-down shapes with shadows, and the three weather modes (winter palette,
night darkening). Used by the demo, the tests and the benchmarks: no dataset ships offline.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from azaion_training.classes import WeatherMode

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


def _draw_object(image: np.ndarray, shape: str, color, center, length, width, angle) -> None:
    box = cv2.boxPoints(((center[0], center[1]), (length, width), angle)).astype(np.int32)
    shadow = box + np.int32([max(2, int(width * 0.25)), max(2, int(width * 0.25))])
    cv2.fillPoly(image, [shadow], (20, 25, 20))
    if shape == "man":
        cv2.circle(image, (int(center[0]), int(center[1])), int(length / 2), color, -1)
        return
    if shape == "plane":
        wing = cv2.boxPoints(((center[0], center[1]), (length * 0.25, width), angle)).astype(np.int32)
        body = cv2.boxPoints(((center[0], center[1]), (length, width * 0.22), angle)).astype(np.int32)
        cv2.fillPoly(image, [wing, body], color)
        return
    cv2.fillPoly(image, [box], color)
    if shape == "tank":  # turret and barrel
        cv2.circle(image, (int(center[0]), int(center[1])), int(width * 0.35), (25, 45, 30), -1)
        tip = (int(center[0] + np.cos(np.radians(angle)) * length * 0.8),
               int(center[1] + np.sin(np.radians(angle)) * length * 0.8))
        cv2.line(image, (int(center[0]), int(center[1])), tip, (25, 45, 30), max(2, int(width * 0.12)))
    elif shape == "truck":  # cab
        cab = cv2.boxPoints(((center[0] + np.cos(np.radians(angle)) * length * 0.38,
                              center[1] + np.sin(np.radians(angle)) * length * 0.38),
                             (length * 0.22, width), angle)).astype(np.int32)
        cv2.fillPoly(image, [cab], (20, 20, 20))
    elif shape == "building":
        cv2.polylines(image, [box], True, (40, 40, 60), max(2, int(width * 0.08)))


def render_scene(rng: np.random.Generator, size: int = 640, mode: WeatherMode = WeatherMode.Norm,
                 classes: tuple[int, ...] = DEFAULT_CLASSES, max_objects: int = 6) -> Scene:
    """One scene with 1..max_objects non-overlapping objects; labels use model class ids
    (base id + weather offset)."""
    image = _terrain(rng, size, mode)
    scale = size / 640
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
        image = image * 0.35 + np.array((25, 10, 0), np.float32)
    return Scene(np.clip(image, 0, 255).astype(np.uint8), labels)


def label_text(labels: list[tuple[int, float, float, float, float]]) -> str:
    return "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()
