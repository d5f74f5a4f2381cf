"""YOLO label lines: `class cx cy w h`, normalised (docs/classes-and-labels.md). The one place that decides
what a valid box is; the consumer, dataset formation and augmentation all use it."""

import math
from dataclasses import dataclass
from pathlib import Path

from azaion_training.classes import MODEL_SLOTS
from azaion_training.errors import InputError


@dataclass(frozen=True)
class Box:
    cls: int
    cx: float
    cy: float
    w: float
    h: float

    def line(self) -> str:
        return f"{self.cls} {self.cx:.6f} {self.cy:.6f} {self.w:.6f} {self.h:.6f}"


class LabelError(ValueError):
    """A label that breaks the rules; the message says which line and why."""


def box_problem(cls: object, cx: object, cy: object, w: object, h: object) -> str | None:
    """Why these values are not a valid box, or None when they are."""
    if isinstance(cls, bool) or not isinstance(cls, int):
        return f"class {cls!r} is not an integer"
    if not 0 <= cls < MODEL_SLOTS:
        return f"class {cls} is outside 0..{MODEL_SLOTS - 1}"
    values = {"cx": cx, "cy": cy, "w": w, "h": h}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{key}={value!r} is not a finite number"
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        return f"centre ({cx}, {cy}) is outside [0, 1]"
    if not (0 < w <= 1 and 0 < h <= 1):
        return f"size ({w}, {h}) is outside (0, 1]"
    return None


STORED_SIZE_MIN = 1e-6  # the smallest size that 6 decimals still write as nonzero (0.000001)
_NUMBER = (int, float)


def stored_box_problem(cls: object, cx: object, cy: object, w: object, h: object) -> str | None:
    """box_problem of the box as its label line stores it (Box.line: 6 decimals), so the consumer
    refuses what formation would refuse (a width of 1e-9 is a valid number, stored as 0.000000).
    A plainly valid box whose sizes are at least STORED_SIZE_MIN is accepted with one comparison
    each (6 decimals keep it inside its intervals); only the rest is formatted and re-parsed."""
    if (type(cls) is int and type(cx) in _NUMBER and type(cy) in _NUMBER and type(w) in _NUMBER
            and type(h) in _NUMBER and 0 <= cls < MODEL_SLOTS and 0 <= cx <= 1 and 0 <= cy <= 1
            and STORED_SIZE_MIN <= w <= 1 and STORED_SIZE_MIN <= h <= 1):
        return None
    problem = box_problem(cls, cx, cy, w, h)
    if problem:
        return problem
    try:
        parse_line(Box(cls, cx, cy, w, h).line())
    except LabelError as exc:
        return f"{exc} once written with 6 decimals"
    return None


def parse_line(line: str) -> Box:
    fields = line.split()
    if len(fields) != 5:
        raise LabelError(f"expected 5 fields 'class cx cy w h', got {len(fields)}")
    try:
        cls = int(fields[0])
    except ValueError:
        raise LabelError(f"class {fields[0]!r} is not an integer") from None
    try:
        cx, cy, w, h = (float(value) for value in fields[1:])
    except ValueError:
        raise LabelError(f"coordinates {fields[1:]} are not numbers") from None
    problem = box_problem(cls, cx, cy, w, h)
    if problem:
        raise LabelError(problem)
    return Box(cls, cx, cy, w, h)


def parse_label_text(text: str) -> list[Box]:
    """All boxes of a label file's text; LabelError names the first bad line. Blank lines are
    allowed (an empty file means 'no objects')."""
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                boxes.append(parse_line(line))
            except LabelError as exc:
                raise LabelError(f"line {number}: {exc}") from None
    return boxes


def label_classes(text: str) -> tuple[int, ...]:
    """The class of every box of a label file's text, validated exactly like
    `parse_label_text` (LabelError names the first bad line) but without building Boxes.

    The fast path accepts a line only when the box_problem rules plainly hold (an int class in
    range, every coordinate inside its interval, which also rules out NaN and infinities);
    anything else goes to parse_label_text, which gives the same answer or the exact error."""
    classes = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            cls = int(fields[0])
            cx, cy, w, h = map(float, fields[1:])
        except ValueError:
            break
        if not (0 <= cls < MODEL_SLOTS and 0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1):
            break
        classes.append(cls)
    else:
        return tuple(classes)
    return tuple(box.cls for box in parse_label_text(text))


def read_label_file(path: Path) -> list[Box]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelError(f"label file {path} does not exist") from None
    except UnicodeDecodeError:
        raise LabelError(f"label file {path} is not UTF-8 text") from None
    return parse_label_text(text)


def label_path_for(image: Path) -> Path:
    """YOLO convention: .../images/x.jpg -> .../labels/x.txt."""
    return Path(image).parent.parent / "labels" / f"{Path(image).stem}.txt"


def check_label(path: Path) -> bool:
    """The original's check_label: True when the file exists and every line is valid."""
    try:
        read_label_file(path)
    except LabelError:
        return False
    return True


def label_text(boxes: list[Box]) -> str:
    return "".join(box.line() + "\n" for box in boxes)


# Augmentation and conversion drop boxes whose clipped area is below this fraction of the
# image (0.01 %, docs/classes-and-labels.md).
MIN_BOX_AREA = 0.0001


def clip_corners(cls: int, x1: float, y1: float, x2: float, y2: float,
                 min_area: float = MIN_BOX_AREA) -> Box | None:
    """The box with normalised corners (x1, y1)-(x2, y2) clipped to the image, or None when
    what is left covers less than `min_area` of the image."""
    x1, x2 = sorted((min(max(x1, 0.0), 1.0), min(max(x2, 0.0), 1.0)))
    y1, y2 = sorted((min(max(y1, 0.0), 1.0), min(max(y2, 0.0), 1.0)))
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0 or w * h < min_area:
        return None
    return Box(cls, (x1 + x2) / 2, (y1 + y2) / 2, w, h)


def clip_box(box: Box, min_area: float = MIN_BOX_AREA) -> Box | None:
    """`box` clipped to the image (a box may reach past the border), None when too small."""
    return clip_corners(box.cls, box.cx - box.w / 2, box.cy - box.h / 2, box.cx + box.w / 2,
                        box.cy + box.h / 2, min_area)


def ground_truth(image: Path, width: int, height: int) -> list[tuple]:
    """The image's YOLO label as pixel boxes; a missing label file means no objects."""
    label = label_path_for(image)
    if not label.is_file():
        return []
    try:
        boxes = read_label_file(label)
    except LabelError as exc:
        raise InputError(f"{label}: {exc}; fix or remove it (evaluations and parity checks read it)") from None
    return [(b.cls, (b.cx - b.w / 2) * width, (b.cy - b.h / 2) * height,
             (b.cx + b.w / 2) * width, (b.cy + b.h / 2) * height) for b in boxes]
