"""Model quality on a dataset split, for the report: Ultralytics' validator for the metrics,
per-class AP and the precision-recall curve, and the model's predictions drawn beside the
ground truth on a few test images."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from azaion_training.classes import AnnotationClass
from azaion_training.labels import label_path_for, read_label_file
from azaion_training.layout import DATA_YAML_KEYS, DatasetDir

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
    imgsz: int = 0
    engine: str = "PyTorch"  # Ultralytics' validator on best.pt (the gate's figures are the ONNX's)

    def metrics(self) -> dict:
        return {"split": self.split, "images": self.images, "mAP50": self.map50, "mAP50-95": self.map50_95,
                "precision": self.precision, "recall": self.recall}


def evaluate(model_path: Path, data_yaml: Path, split: str, imgsz: int, workdir: Path) -> Evaluation:
    """Run Ultralytics' validator on one split ('valid' or 'test') of the dataset of `data_yaml` (CPU
    or the model's default device)."""
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    results = model.val(data=str(data_yaml), split=DATA_YAML_KEYS[split], imgsz=imgsz, batch=16, workers=0, plots=False,
                        verbose=False, project=str(Path(workdir).absolute()), name=f"val-{split}", exist_ok=True)
    box = results.box
    evaluation = Evaluation(split=split, images=len(DatasetDir(data_yaml.parent).images(split)), map50=float(box.map50),
                            map50_95=float(box.map), precision=float(box.mp), recall=float(box.mr),
                            per_class=[_plain(row) for row in results.summary()], imgsz=imgsz)
    curves = results.curves_results
    if curves and len(box.ap_class_index):
        recall, precision = curves[0][0], np.asarray(curves[0][1])
        evaluation.pr_recall, evaluation.pr_precision = np.asarray(recall), precision
        evaluation.pr_names = [results.names[int(c)] for c in box.ap_class_index]
        evaluation.pr_ap50 = [float(v) for v in box.ap50]
    return evaluation


def _plain(row: dict) -> dict:
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()}


def predictions_vs_truth(model_path: Path, images: list[Path], classes: dict[int, AnnotationClass],
                         imgsz: int, conf: float, iou: float) -> list[tuple[np.ndarray, str]]:
    """Each image with ground truth (magenta, thin) and what the inference pipeline would output:
    predictions above `conf` after its overlap cleanup at `iou`, drawn by its Annotator."""
    import cv2
    from ultralytics import YOLO

    from azaion_training.inference.nms import remove_overlaps
    from azaion_training.inference.pipeline import MAX_DETECTIONS, Annotator

    if not images:
        return []
    model = YOLO(str(model_path))
    annotator = Annotator({cls: c.name for cls, c in classes.items()}, {cls: c.bgr for cls, c in classes.items()})
    drawn = []
    for image_path, result in zip(images, model.predict([str(p) for p in images], imgsz=imgsz, conf=conf, iou=iou,
                                                        max_det=MAX_DETECTIONS, verbose=False), strict=True):
        image = cv2.imread(str(image_path))
        height, width = image.shape[:2]
        scale = max(1, 320 // max(height, width))
        image = cv2.resize(image, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
        truth = read_label_file(label_path_for(image_path)) if label_path_for(image_path).is_file() else []
        for box in truth:
            x0, y0 = (box.cx - box.w / 2) * width * scale, (box.cy - box.h / 2) * height * scale
            x1, y1 = (box.cx + box.w / 2) * width * scale, (box.cy + box.h / 2) * height * scale
            cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), GROUND_TRUTH_BGR, 1)
        xyxy, scores, class_ids = (result.boxes.xyxy.numpy(), result.boxes.conf.numpy(),
                                   result.boxes.cls.numpy().astype(int))
        kept = remove_overlaps(xyxy, scores, class_ids, iou, max_kept=MAX_DETECTIONS)
        detections = [_pixel_detection(int(class_ids[i]), float(scores[i]), xyxy[i], width, height, scale)
                      for i in kept]
        annotator.draw(image, detections)
        short = image_path.stem if len(image_path.stem) <= 12 else image_path.stem[:10] + "…"
        drawn.append((image, f"{short}\n{len(truth)} true, {len(detections)} predicted"))
    return drawn


def _pixel_detection(cls: int, conf: float, xyxy: np.ndarray, width: int, height: int, scale: int):
    """A prediction (pixels of the original image) as the inference pipeline's detection on the
    image enlarged `scale` times."""
    from azaion_training.inference.pipeline import PixelDetection

    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return PixelDetection(cls, conf, x1 * scale, y1 * scale, x2 * scale, y2 * scale, (x1 + x2) / 2 / width,
                          (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
