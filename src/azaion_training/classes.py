"""Annotation classes and the model's class-id scheme.

17 base classes (classes.json) × weather modes Norm (+0), Wint (+20), Night (+40) give ids
0-16, 20-36, 40-56; the model always has 80 output slots, unused ones named `Class-N`.
"""

import json
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from pathlib import Path

from azaion_training.errors import InputError

MODEL_SLOTS = 80


class WeatherMode(IntEnum):
    Norm = 0
    Wint = 20
    Night = 40


@dataclass(frozen=True)
class AnnotationClass:
    id: int  # the model class id (base id + weather offset)
    base_id: int
    name: str  # "Truck", "Truck(Wint)", "Truck(Night)"
    short_name: str
    color: str  # "#rrggbb"
    mode: WeatherMode

    @property
    def rgb(self) -> tuple[int, int, int]:
        value = self.color.lstrip("#")
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)

    @property
    def bgr(self) -> tuple[int, int, int]:
        r, g, b = self.rgb
        return b, g, r


def _read_base_classes(path: Path | None) -> list[dict]:
    if path is not None and path.is_file():
        text, origin = path.read_text(encoding="utf-8"), str(path)
    else:
        text = (resources.files("azaion_training") / "resources" / "classes.json").read_text(encoding="utf-8")
        origin = "the bundled classes.json"
    try:
        entries = json.loads(text)
        base = [{"Id": int(e["Id"]), "Name": str(e["Name"]), "ShortName": str(e.get("ShortName", e["Name"])),
                 "Color": str(e.get("Color", "#808080"))} for e in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{origin} is not a valid classes file ({exc}); expected a JSON array of "
                         '{"Id", "Name", "ShortName", "Color"} objects') from None
    bad = [e["Id"] for e in base if not 0 <= e["Id"] < WeatherMode.Wint]
    if bad:
        raise InputError(f"{origin}: base class ids must be 0-19, got {bad}")
    return base


def load_classes(path: Path | None = None) -> dict[int, AnnotationClass]:
    """Every used class id (all three weather modes) -> its class."""
    classes: dict[int, AnnotationClass] = {}
    for entry in _read_base_classes(path):
        for mode in WeatherMode:
            suffix = "" if mode is WeatherMode.Norm else f"({mode.name})"
            class_id = entry["Id"] + mode
            classes[class_id] = AnnotationClass(class_id, entry["Id"], entry["Name"] + suffix,
                                                entry["ShortName"], _normalise_color(entry["Color"]), mode)
    return classes


def model_class_names(path: Path | None = None) -> dict[int, str]:
    """Names for all 80 model slots, as data.yaml and the exported models carry them."""
    classes = load_classes(path)
    return {slot: classes[slot].name if slot in classes else f"Class-{slot}" for slot in range(MODEL_SLOTS)}


def split_class_id(class_id: int) -> tuple[int, WeatherMode]:
    """Model class id -> (base id, weather mode)."""
    return class_id % WeatherMode.Wint, WeatherMode(class_id - class_id % WeatherMode.Wint)


def _normalise_color(color: str) -> str:
    # The platform writes "#AARRGGBB" as well as "#RRGGBB": keep the last six hex digits.
    digits = color.lstrip("#")
    return "#" + (digits[-6:] if len(digits) >= 6 else "808080").lower()
