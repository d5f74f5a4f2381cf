"""Foreign annotations -> YOLO labels (the platform's convert-annotations tool).

Formats:
  voc       Pascal VOC XML, one file per image: <size><width/><height/></size> and
            <object><name/><bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object> in pixels.
  oriented  DOTA-style text, one file per image: `x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]`
            per object in pixels (header lines such as `imagesource:` / `gsd:` are skipped);
            the oriented box becomes its axis-aligned bounding box.
Class names match classes.json names (`Truck`, `Truck(Wint)`) or short names, case-insensitively,
or are model class ids. The image of `x.xml` is the image named `x.*` anywhere under SRC; it is
copied to OUT/images and its label written to OUT/labels. Files that cannot be converted are
reported with the reason and left where they are.
"""

import shutil
import xml.etree.ElementTree as ElementTree  # nosec B405 # see read_pascal_voc
from dataclasses import dataclass, field
from pathlib import Path

from azaion_training.classes import MODEL_SLOTS, load_classes
from azaion_training.errors import InputError
from azaion_training.fsutil import atomic_write_text
from azaion_training.images import is_image_name
from azaion_training.labels import Box, clip_corners, label_text
from azaion_training.layout import is_safe_name

FORMATS = {"voc": ".xml", "oriented": ".txt"}


class ConversionError(ValueError):
    pass


@dataclass
class ConvertResult:
    out: Path
    converted: int = 0
    boxes: int = 0
    bad: dict[str, str] = field(default_factory=dict)  # file -> reason

    def to_dict(self) -> dict:
        return {"out": str(self.out), "converted": self.converted, "boxes": self.boxes, "bad": len(self.bad),
                "bad_files": self.bad}


def class_lookup(classes_json: Path | None) -> dict[str, int]:
    lookup = {str(slot): slot for slot in range(MODEL_SLOTS)}
    for cls in load_classes(classes_json).values():
        lookup[cls.name.lower()] = cls.id
        if cls.mode == 0:
            lookup.setdefault(cls.short_name.lower(), cls.id)
    return lookup


def minmax2yolo(width: float, height: float, xmin: float, xmax: float, ymin: float, ymax: float,
                cls: int = 0) -> Box:
    """A pixel corner box -> normalised YOLO box, clipped to the image (docs/classes-and-labels.md)."""
    if width <= 0 or height <= 0:
        raise ConversionError(f"image size {width}x{height} is not positive")
    box = clip_corners(cls, xmin / width, ymin / height, xmax / width, ymax / height, min_area=0.0)
    if box is None:
        raise ConversionError(f"box ({xmin}, {ymin})-({xmax}, {ymax}) lies outside the {width}x{height} image")
    return box


def _class_id(name: str, lookup: dict[str, int]) -> int:
    try:
        return lookup[name.strip().lower()]
    except KeyError:
        raise ConversionError(f"unknown class {name!r} (not in classes.json)") from None


def read_pascal_voc(text: str, lookup: dict[str, int], image_size: tuple[int, int] | None) -> list[Box]:
    try:
        # The operator's own files; ElementTree resolves no external entities and expat >= 2.4 caps
        # entity expansion (billion laughs).
        root = ElementTree.fromstring(text)  # nosec B314
        size = root.find("size")
        width, height = ((float(size.findtext("width")), float(size.findtext("height"))) if size is not None
                         else image_size)
        boxes = []
        for obj in root.iter("object"):
            bndbox = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            cls = _class_id(obj.findtext("name", ""), lookup)
            boxes.append(minmax2yolo(width, height, xmin, xmax, ymin, ymax, cls))
        return boxes
    except ConversionError:
        raise
    except ElementTree.ParseError as exc:
        raise ConversionError(f"not valid XML ({exc})") from None
    except (AttributeError, TypeError, ValueError):
        raise ConversionError("missing or non-numeric size/bndbox values") from None


def read_bbox_oriented(text: str, lookup: dict[str, int], image_size: tuple[int, int]) -> list[Box]:
    width, height = image_size
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or ":" in fields[0]:
            continue
        if len(fields) < 9:
            raise ConversionError(f"line {number}: expected 'x1 y1 ... x4 y4 class', got {len(fields)} fields")
        try:
            xs = [float(v) for v in fields[0:8:2]]
            ys = [float(v) for v in fields[1:8:2]]
        except ValueError:
            raise ConversionError(f"line {number}: corner coordinates are not numbers") from None
        try:
            boxes.append(minmax2yolo(width, height, min(xs), max(xs), min(ys), max(ys), _class_id(fields[8], lookup)))
        except ConversionError as exc:
            raise ConversionError(f"line {number}: {exc}") from None
    return boxes


def _image_size(path: Path) -> tuple[int, int]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ConversionError(f"image {path.name} cannot be decoded")
    return image.shape[1], image.shape[0]


def _convert_file(annotation: Path, image: Path | None, fmt: str, lookup: dict[str, int], out: Path) -> int:
    if not is_safe_name(annotation.stem):
        raise ConversionError("file name is not a usable annotation name (use A-Z a-z 0-9 . _ -)")
    if image is None:
        raise ConversionError(f"no image named {annotation.stem}.* under the source folder")
    try:
        text = annotation.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"cannot be read as UTF-8 text ({exc})") from None
    if fmt == "voc":
        boxes = read_pascal_voc(text, lookup, None if "<size>" in text else _image_size(image))
    else:
        boxes = read_bbox_oriented(text, lookup, _image_size(image))
    shutil.copyfile(image, out / "images" / image.name)
    atomic_write_text(out / "labels" / f"{annotation.stem}.txt", label_text(boxes), durable=False)
    return len(boxes)


def convert(src: Path, out: Path, fmt: str, classes_json: Path | None = None) -> ConvertResult:
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not src.is_dir():
        raise InputError(f"source folder {src} does not exist")
    lookup = class_lookup(classes_json)
    images: dict[str, Path] = {}
    for path in sorted(src.rglob("*")):
        if is_image_name(path.name):
            images.setdefault(path.stem, path)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    result = ConvertResult(out)
    for annotation in sorted(src.rglob(f"*{FORMATS[fmt]}")):
        if annotation.is_relative_to(out):
            continue
        try:
            result.boxes += _convert_file(annotation, images.get(annotation.stem), fmt, lookup, out)
            result.converted += 1
        except ConversionError as exc:
            result.bad[str(annotation)] = str(exc)
    return result
