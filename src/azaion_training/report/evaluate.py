"""Model quality on a dataset split, for the report: Ultralytics' validator for the metrics,
per-class AP and the precision-recall curve, and the model's predictions drawn beside the
ground truth on a few test images."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from azaion_training.classes import AnnotationClass
from azaion_training.labels import label_path_for, read_label_file

GROUND_TRUTH_BGR = (255, 0, 255)  # magenta: visible on green, snow and night terrain


@dataclass
class Evaluation:
    split: str
    images: int
    map50: float
    map50_95: float
    precision: float
    recall: float
    per_class: list[dict] = field(default_factory=list)  # Class, Images, Instances, Box-P, Box-R, mAP50, ...
    pr_recall: np.ndarray | None = None  # (points,)
    pr_precision: np.ndarray | None = None  # (classes with ground truth, points)
    pr_names: list[str] = field(default_factory=list)
    pr_ap50: list[float] = field(default_factory=list)

    def metrics(self) -> dict:
        return {"split": self.split, "images": self.images, "mAP50": self.map50, "mAP50-95": self.map50_95,
                "precision": self.precision, "recall": self.recall}


def evaluate(model_path: Path, data_yaml: Path, split: str, imgsz: int, workdir: Path) -> Evaluation:
    """Run Ultralytics' validator on one split of a dataset (CPU or the model's default device)."""
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    results = model.val(data=str(data_yaml), split=split, imgsz=imgsz, batch=16, workers=0, plots=False,
                        verbose=False, project=str(Path(workdir).absolute()), name=f"val-{split}", exist_ok=True)
    box = results.box
    evaluation = Evaluation(split=split, images=len(split_images(data_yaml, split)), map50=float(box.map50),
                            map50_95=float(box.map), precision=float(box.mp), recall=float(box.mr),
                            per_class=[_plain(row) for row in results.summary()])
    curves = results.curves_results
    if curves and len(box.ap_class_index):
        recall, precision = curves[0][0], np.asarray(curves[0][1])
        evaluation.pr_recall, evaluation.pr_precision = np.asarray(recall), precision
        evaluation.pr_names = [results.names[int(c)] for c in box.ap_class_index]
        evaluation.pr_ap50 = [float(v) for v in box.ap50]
    return evaluation


def _plain(row: dict) -> dict:
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()}


def split_images(data_yaml: Path, split: str) -> list[Path]:
    """The image files of a split named in data.yaml (a directory entry)."""
    import yaml

    data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))
    entry = data.get(split)
    if not entry:
        return []
    base = Path(data.get("path") or Path(data_yaml).parent)
    directory = Path(entry) if Path(entry).is_absolute() else base / entry
    return sorted(p for p in directory.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})


def predictions_vs_truth(model_path: Path, images: list[Path], classes: dict[int, AnnotationClass],
                         imgsz: int, conf: float = 0.25) -> list[tuple[np.ndarray, str]]:
    """Each image with ground truth (magenta, thin) and predictions (class colour, labelled)."""
    import cv2
    from ultralytics import YOLO

    if not images:
        return []
    model = YOLO(str(model_path))
    drawn = []
    for image_path, result in zip(images, model.predict([str(p) for p in images], imgsz=imgsz, conf=conf, max_det=20,
                                                        verbose=False), strict=True):
        image = cv2.imread(str(image_path))
        height, width = image.shape[:2]
        scale = max(1, 320 // max(height, width))
        image = cv2.resize(image, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
        truth = read_label_file(label_path_for(image_path)) if label_path_for(image_path).is_file() else []
        for box in truth:
            x0, y0 = (box.cx - box.w / 2) * width * scale, (box.cy - box.h / 2) * height * scale
            x1, y1 = (box.cx + box.w / 2) * width * scale, (box.cy + box.h / 2) * height * scale
            cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), GROUND_TRUTH_BGR, 1)
        boxes = result.boxes
        for xyxy, cls, score in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True):
            colour = classes[int(cls)].bgr if int(cls) in classes else (0, 255, 255)
            x0, y0, x1, y1 = (int(v * scale) for v in xyxy)
            cv2.rectangle(image, (x0, y0), (x1, y1), colour, 2)
            name = classes[int(cls)].name if int(cls) in classes else str(int(cls))
            cv2.putText(image, f"{name} {score:.2f}", (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        colour, 1, cv2.LINE_AA)
        short = image_path.stem if len(image_path.stem) <= 12 else image_path.stem[:10] + "…"
        drawn.append((image, f"{short}\n{len(truth)} true, {len(boxes)} predicted"))
    return drawn
