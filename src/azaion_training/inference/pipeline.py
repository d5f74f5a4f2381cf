"""Detection on frames (`Detector`) and the `azaion infer` runner over a video, an image or
a directory of images.

Pre- and post-processing follow Ultralytics exactly, so our boxes are the boxes
`YOLO(model.onnx).predict()` gives: LetterBox (centre padding with 114, its rounding; the
smallest stride-multiple rectangle when the model's spatial axes are free), BGR->RGB, /255;
boxes mapped back through the same padding and gain and clipped to the frame. Then the
overlap cleanup of nms.py replaces Ultralytics' NMS.
"""

import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from azaion_training.errors import InputError, OperationFailed
from azaion_training.fsutil import atomic_write_text
from azaion_training.images import IMAGE_SUFFIXES
from azaion_training.inference.engines import Engine
from azaion_training.inference.nms import remove_overlaps
from azaion_training.layout import Layout, is_safe_name
from azaion_training.layout import image_files as folder_images
from azaion_training.logs import get_logger, log
from azaion_training.progress import Progress
from azaion_training.settings import Settings, overridden

logger = get_logger("inference")

MAX_DETECTIONS = 300  # per frame, as Ultralytics' max_det
PAD_VALUE = 114
ENGINE_KINDS = ("auto", "onnx", "tensorrt", "openvino", "rknn")


@dataclass(frozen=True)
class PixelDetection:
    """What the model found in a frame: a pixel box (the queue's NormalizedDetection is the wire form)."""

    cls: int
    conf: float
    x1: float  # pixel box in the original frame
    y1: float
    x2: float
    y2: float
    cx: float  # normalised centre and size
    cy: float
    w: float
    h: float


@dataclass(frozen=True)
class Letterbox:
    """Where a frame lands in the model input: resized to `size` (w, h) at (left, top)."""

    shape: tuple[int, int]  # model input (h, w)
    size: tuple[int, int]
    left: int
    top: int


def letterbox_for(frame_shape: tuple[int, int], model_shape: tuple[int, int], rect: bool, stride: int) -> Letterbox:
    """Ultralytics' LetterBox geometry (data/augment.py), `auto` = rect."""
    height, width = frame_shape
    ratio = min(model_shape[0] / height, model_shape[1] / width)
    new_w, new_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    pad_w, pad_h = model_shape[1] - new_w, model_shape[0] - new_h
    if rect:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    left, right = round(pad_w / 2 - 0.1), round(pad_w / 2 + 0.1)
    top, bottom = round(pad_h / 2 - 0.1), round(pad_h / 2 + 0.1)
    return Letterbox((new_h + top + bottom, new_w + left + right), (new_w, new_h), left, top)


def preprocess(frames: list[np.ndarray], boxes: list[Letterbox]) -> np.ndarray:
    """BGR uint8 frames -> RGB float32 NCHW in [0, 1], letterboxed; all `boxes` share one shape."""
    import cv2

    height, width = boxes[0].shape
    canvas = np.full((len(frames), height, width, 3), PAD_VALUE, dtype=np.uint8)
    for i, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
        resized = frame if frame.shape[1::-1] == box.size else cv2.resize(frame, box.size,
                                                                         interpolation=cv2.INTER_LINEAR)
        canvas[i, box.top:box.top + box.size[1], box.left:box.left + box.size[0]] = resized
    blob = np.ascontiguousarray(canvas.transpose(0, 3, 1, 2)[:, ::-1]).astype(np.float32)
    blob /= 255
    return blob


class Detector:
    """Runs an engine on any number of BGR frames (batched to the engine's batch size) and
    returns each frame's detections, best first."""

    def __init__(self, engine: Engine, conf: float, iou: float):
        self.engine = engine
        self.conf = conf
        self.iou = iou

    def detect(self, frames: list[np.ndarray]) -> list[list[PixelDetection]]:
        boxes = [letterbox_for(f.shape[:2], self.engine.input_shape, self.engine.dynamic_hw, self.engine.stride)
                 for f in frames]
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, box in enumerate(boxes):
            by_shape.setdefault(box.shape, []).append(i)
        results: list[list[PixelDetection]] = [[] for _ in frames]
        step = self.engine.batch_size
        for indices in by_shape.values():
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                output = self.engine.run(preprocess([frames[i] for i in chunk], [boxes[i] for i in chunk]))[0]
                for row, i in zip(output, chunk, strict=True):
                    results[i] = self._detections(row, boxes[i], frames[i].shape[:2])
        return results

    def _candidates(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xyxy boxes in model pixels, confidences and class ids above the threshold."""
        if self.engine.end2end:  # (300, 6): x1, y1, x2, y2, score, class
            rows = output[output[:, 4] > self.conf]
            return rows[:, :4].astype(np.float64), rows[:, 4], rows[:, 5].astype(np.int64)
        scores = output[4:]  # (4 + nc, anchors): cx, cy, w, h, class scores
        best = scores.max(axis=0)
        keep = best > self.conf
        cx, cy, w, h = output[:4, keep].astype(np.float64)
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return xyxy, best[keep], scores[:, keep].argmax(axis=0)

    def _detections(self, output: np.ndarray, box: Letterbox, frame_shape: tuple[int, int]) -> list[PixelDetection]:
        xyxy, confs, classes = self._candidates(output)
        kept = remove_overlaps(xyxy, confs, classes, self.iou, max_kept=MAX_DETECTIONS)
        height, width = frame_shape
        gain_x, gain_y = box.size[0] / width, box.size[1] / height
        pixels = xyxy[kept]
        pixels[:, [0, 2]] = ((pixels[:, [0, 2]] - box.left) / gain_x).clip(0, width)
        pixels[:, [1, 3]] = ((pixels[:, [1, 3]] - box.top) / gain_y).clip(0, height)
        return [PixelDetection(int(classes[k]), float(confs[k]), float(x1), float(y1), float(x2), float(y2),
                          (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
                for k, (x1, y1, x2, y2) in zip(kept, pixels.tolist(), strict=True)]


def ordered_map(function: Callable, items: Iterable, workers: int) -> Iterator:
    """`map(function, items)` on `workers` threads, results in order, at most `workers` + 1
    items taken ahead. Threads pay off because ONNX Runtime, OpenCV and numpy's big array
    operations release the GIL."""
    if workers <= 1:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="detect")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- sources -------------------------------------------------------------------------------------------------


@dataclass
class Frame:
    index: int
    image: np.ndarray
    time_s: float | None = None
    name: str | None = None  # the file name, for image sources


class VideoSource:
    """Every `every`-th frame of a video, decoded on a reader thread (decoding overlaps
    inference: both release the GIL)."""

    def __init__(self, path: Path, every: int):
        import cv2

        self.path, self.every = path, every
        self._capture = cv2.VideoCapture(str(path))
        ok, first = self._capture.read() if self._capture.isOpened() else (False, None)
        if not ok:
            self._capture.release()
            raise InputError(f"cannot read video {path}: not a video OpenCV can decode (or empty); "
                             "pass a video file, an image, or a directory of images")
        self._first = first
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or 25.0
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        self.size = (first.shape[1], first.shape[0])
        self.frames_read = 0

    def __iter__(self) -> Iterator[Frame]:
        frames: queue.Queue = queue.Queue(maxsize=32)
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(frames, stop), daemon=True, name="video-reader")
        reader.start()
        try:
            while (item := frames.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    frames.get_nowait()
                except queue.Empty:
                    reader.join(0.05)
            self._capture.release()

    def _read(self, frames: queue.Queue, stop: threading.Event) -> None:
        try:
            index, image = 0, self._first
            while not stop.is_set():
                if image is not None:
                    frames.put(Frame(index, image, time_s=index / self.fps))
                index += 1
                if index % self.every == 0:
                    ok, image = self._capture.read()
                else:
                    ok, image = self._capture.grab(), None  # skipped frames are never converted
                if not ok:
                    break
            self.frames_read = index
            frames.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            frames.put(exc)


def image_files(source: Path) -> list[Path]:
    """The images to run on: `source` itself, or the images of a folder by the tree's one rule
    (layout.image_files: hidden and temp files left out)."""
    if source.is_dir():
        files = folder_images(source)
        if not files:
            raise InputError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    return [source]


def is_image_source(source: Path) -> bool:
    return source.is_dir() or source.suffix.lower() in IMAGE_SUFFIXES


# --- outputs -------------------------------------------------------------------------------------------------


def detection_record(det: PixelDetection, names: dict[int, str]) -> dict[str, Any]:
    return {"class_id": det.cls, "class_name": names.get(det.cls, f"Class-{det.cls}"), "conf": round(det.conf, 5),
            "box": {"cx": round(det.cx, 6), "cy": round(det.cy, 6), "w": round(det.w, 6), "h": round(det.h, 6)},
            "box_px": {"x1": round(det.x1, 2), "y1": round(det.y1, 2), "x2": round(det.x2, 2),
                       "y2": round(det.y2, 2)}}


def frame_record(frame: Frame, detections: list[PixelDetection], names: dict[int, str]) -> dict[str, Any]:
    record: dict[str, Any] = {"frame": frame.index, "time_s": None if frame.time_s is None else round(frame.time_s, 4)}
    if frame.name is not None:
        record["image"] = frame.name
    record["detections"] = [detection_record(d, names) for d in detections]
    return record


class Annotator:
    """Draws boxes and `name conf` labels in the class colours."""

    def __init__(self, names: dict[int, str], colours: dict[int, tuple[int, int, int]]):
        self.names, self.colours = names, colours

    def draw(self, image: np.ndarray, detections: list[PixelDetection]) -> np.ndarray:
        import cv2

        thickness = max(1, round(min(image.shape[:2]) / 360))
        scale = max(0.35, min(image.shape[:2]) / 1200)
        for det in detections:
            colour = self.colours.get(det.cls, (128, 128, 128))
            top_left, bottom_right = (round(det.x1), round(det.y1)), (round(det.x2), round(det.y2))
            cv2.rectangle(image, top_left, bottom_right, colour, thickness)
            label = f"{self.names.get(det.cls, det.cls)} {det.conf:.2f}"
            (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, thickness - 1))
            cv2.putText(image, label, label_origin(top_left, (text_w, text_h), image.shape), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, colour, max(1, thickness - 1), cv2.LINE_AA)
        return image


def label_origin(top_left: tuple[int, int], text_size: tuple[int, int], shape: tuple[int, ...]) -> tuple[int, int]:
    """Where a box's label starts (text baseline, left): above the box, or inside it below its
    top edge when there is no room above, and always whole inside the image."""
    (x, y), (text_w, text_h), (height, width) = top_left, text_size, shape[:2]
    baseline = y - 3 if y - 3 - text_h >= 0 else y + text_h + 3
    return max(0, min(x, width - text_w)), max(text_h, min(baseline, height - 2))


# --- the runner ----------------------------------------------------------------------------------------------


@dataclass
class InferenceSummary:
    source: str
    model: str
    engine: str
    frames_total: int  # frames in the video / images given
    frames_processed: int
    detections: int
    per_class: dict[str, int]
    fps: float  # processed frames per second, reading to writing
    elapsed_s: float
    every: int
    batch: int
    conf: float
    iou: float
    outputs: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """What one run accumulates while it goes."""

    detector: Detector
    annotator: Annotator
    jsonl: Any
    counts: Counter = field(default_factory=Counter)
    processed: int = 0

    def record(self, batches: Iterator[list[Frame]]) -> Iterator[tuple[list[Frame], list[list[PixelDetection]]]]:
        """Detect on each batch (`engine.workers` batches at once), record the results in
        frame order and hand each batch on with its detections."""
        def detect(frames: list[Frame]) -> tuple[list[Frame], list[list[PixelDetection]]]:
            return frames, self.detector.detect([f.image for f in frames])

        names = self.detector.engine.class_names
        for frames, results in ordered_map(detect, batches, self.detector.engine.workers):
            for frame, detections in zip(frames, results, strict=True):
                self.jsonl.write(json.dumps(frame_record(frame, detections, names), ensure_ascii=False) + "\n")
                self.counts.update(names.get(d.cls, f"Class-{d.cls}") for d in detections)
            self.processed += len(frames)
            yield frames, results


def model_bytes(settings: Settings, model: str | Path, target: str | None,
                no_manifest: bool = False, allow_downgrade: bool = False) -> tuple[bytes, str]:
    """(bytes, label) of a model file, or of a published model fetched and decrypted in memory
    (`no_manifest`: one published by other tooling; `allow_downgrade`: accept an older version
    than fetched before; see distribution/fetch.py)."""
    path = Path(model)
    if path.is_file():
        return path.read_bytes(), str(path)
    text = str(model)
    if "/" in text or not is_safe_name(text):
        raise InputError(f"model {text!r} is not an existing file, nor a published model name "
                         "([A-Za-z0-9._-]): pass an .onnx path or a name published with `azaion publish`")
    from azaion_training.distribution.fetch import fetch_model_bytes

    fetched, manifest = fetch_model_bytes(settings, text, **({"target": target} if target else {}),
                                          no_manifest=no_manifest, allow_downgrade=allow_downgrade)
    version = f" version {manifest.get('version', 0)}" if manifest else ""
    return fetched, f"{text}{version} (fetched, decrypted in memory)"


def load_engine(settings: Settings, data: bytes, is_plan: bool, batch: int, kind: str = "auto") -> Engine:
    """ONNX Runtime, or TensorRT on a GPU (a TensorRT plan as is; an ONNX model converted once
    per GPU and cached); an edge archive (docs/edge.md) on the engine its format names: OpenVINO,
    or RKNN where rknn-toolkit-lite2 is installed (a Rockchip board). `--engine openvino` also
    runs an ONNX model. `batch` 0: the engine's own choice."""
    from azaion_training.inference import engines

    if kind not in ENGINE_KINDS:
        raise InputError(f"engine {kind!r} is not one of {', '.join(ENGINE_KINDS)}")
    archive = engines.read_edge_archive(data)
    edge = archive[1].get("format") if archive else None
    if edge is not None or kind in ("openvino", "rknn"):
        return _edge_engine(settings, data, edge, batch, kind)
    wants_trt = kind == "tensorrt" or is_plan or (kind == "auto" and engines.tensorrt_available())
    if wants_trt and not engines.tensorrt_available():
        raise InputError("TensorRT needs an NVIDIA GPU and the tensorrt package; use --engine onnx "
                         "(and an .onnx model) on this machine")
    if is_plan:
        return engines.TensorRTEngine(data, batch_size=batch)
    if wants_trt:
        return engines.tensorrt_from_onnx(data, Layout(settings.paths).engines, batch or engines.GPU_BATCH)
    return engines.OnnxEngine(data, threads=settings.inference.threads, batch_size=batch or None,
                              workers=settings.inference.workers)


def _edge_engine(settings: Settings, data: bytes, edge: str | None, batch: int, kind: str) -> Engine:
    from azaion_training.inference import engines

    wanted = edge if kind == "auto" else kind
    if edge is not None and wanted != edge:
        raise InputError(f"the model is a {edge} edge archive, which the {kind} engine cannot run: use --engine "
                         f"{edge} (or auto)")
    if wanted == "rknn":
        if edge != "rknn":
            raise InputError("the rknn engine runs an RKNN edge archive (`azaion export --formats rknn`), not this "
                             "model")
        if not engines.rknn_lite_available():
            raise InputError("an RKNN model runs on a Rockchip board's NPU with rknn-toolkit-lite2, which is not "
                             "installed here (docs/edge.md, \"On the board\"); on this machine use the ONNX or "
                             "OpenVINO model")
        return engines.RknnLiteEngine(data)
    if not engines.openvino_available():
        raise InputError("the openvino engine needs the openvino package: pip install -r requirements.txt")
    return engines.OpenVinoEngine(data, threads=settings.inference.threads, batch_size=batch or None,
                                  workers=settings.inference.workers)


def _colours(settings: Settings) -> dict[int, tuple[int, int, int]]:
    from azaion_training.classes import load_classes

    classes_json = Layout(settings.paths).classes_json
    return {cid: c.bgr for cid, c in load_classes(classes_json if classes_json.is_file() else None).items()}


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_video(run: _Run, source: Path, every: int, batch: int, out: Path, write_video: bool) -> dict[str, Any]:
    import cv2

    video = VideoSource(source, every)
    writer, outputs = None, {}
    if write_video:
        outputs["video"] = str(out / f"{source.stem}.annotated.mp4")
        writer = cv2.VideoWriter(outputs["video"], cv2.VideoWriter_fourcc(*"mp4v"), video.fps / every, video.size)
        if not writer.isOpened():
            raise OperationFailed(f"cannot write {outputs['video']} (OpenCV has no mp4v encoder here?); "
                                  "run with --no-video")
    expected = -(-video.frame_count // every) if video.frame_count else None
    try:
        with Progress(f"infer {source.name}", expected) as progress:
            for frames, results in run.record(_batches(iter(video), batch)):
                if writer is not None:
                    for frame, detections in zip(frames, results, strict=True):
                        writer.write(run.annotator.draw(frame.image, detections))
                progress.advance(len(frames))
    finally:
        if writer is not None:
            writer.release()
    return {"frames_total": video.frames_read, "outputs": outputs, "unreadable": []}


def _read_images(files: list[Path], unreadable: list[str]) -> Iterator[Frame]:
    import cv2

    for index, path in enumerate(files):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log(logger, logging.WARNING, "unreadable image skipped", image=str(path))
            unreadable.append(str(path))
            continue
        yield Frame(index, image, name=path.name)


def _run_images(run: _Run, source: Path, batch: int, out: Path, write_images: bool) -> dict[str, Any]:
    import cv2

    files = image_files(source)
    images_dir = out / "images"
    if write_images:
        images_dir.mkdir(parents=True, exist_ok=True)
    unreadable: list[str] = []
    with Progress(f"infer {source.name}", len(files)) as progress:
        for frames, results in run.record(_batches(_read_images(files, unreadable), batch)):
            if write_images:
                for frame, detections in zip(frames, results, strict=True):
                    cv2.imwrite(str(images_dir / frame.name), run.annotator.draw(frame.image, detections))
            progress.advance(len(frames))
    if not source.is_dir() and unreadable:
        raise InputError(f"cannot read image {source}: not an image OpenCV can decode")
    return {"frames_total": len(files), "outputs": {"images": str(images_dir)} if write_images else {},
            "unreadable": unreadable}


def run_inference(settings: Settings, source: Path, model: str | Path, out: Path, every: int | None = None,
                  batch: int | None = None, conf: float | None = None, iou: float | None = None,
                  write_video: bool = True, target: str | None = None, engine: str = "auto",
                  no_manifest: bool = False, allow_downgrade: bool = False) -> InferenceSummary:
    """Detect on a video (every `every`-th frame), an image or a directory of images; write
    detections.jsonl, an annotated MP4 (or annotated images) and summary.json under `out`."""
    cfg = overridden(settings.inference, every=every, batch=batch, conf=conf, iou=iou)
    every, batch, conf, iou = cfg.every, cfg.batch, cfg.conf, cfg.iou
    source = Path(source)
    if not source.exists():
        raise InputError(f"source {source} does not exist: pass a video file, an image, or a directory of images")
    data, label = model_bytes(settings, model, target, no_manifest, allow_downgrade)
    is_plan = str(model).endswith(".engine")
    detector = Detector(load_engine(settings, data, is_plan, batch, engine), conf, iou)
    del data
    batch = detector.engine.batch_size  # a fixed-batch model wins
    out.mkdir(parents=True, exist_ok=True)
    jsonl_path = out / "detections.jsonl"
    started = time.perf_counter()
    with open(jsonl_path, "w", encoding="utf-8") as jsonl:
        run = _Run(detector, Annotator(detector.engine.class_names, _colours(settings)), jsonl)
        if is_image_source(source):
            result = _run_images(run, source, batch, out, write_video)
        else:
            result = _run_video(run, source, every, batch, out, write_video)
    elapsed = time.perf_counter() - started
    summary = InferenceSummary(
        source=str(source), model=label, engine=detector.engine.provider, frames_total=result["frames_total"],
        frames_processed=run.processed, detections=sum(run.counts.values()), per_class=dict(run.counts.most_common()),
        fps=round(run.processed / elapsed, 2) if elapsed > 0 else 0.0, elapsed_s=round(elapsed, 3),
        every=every if not is_image_source(source) else 1, batch=batch, conf=conf, iou=iou,
        outputs={"detections": str(jsonl_path), **result["outputs"], "summary": str(out / "summary.json")},
        unreadable=result["unreadable"])
    atomic_write_text(out / "summary.json", json.dumps(asdict(summary), indent=2, ensure_ascii=False) + "\n")
    log(logger, logging.INFO, "inference done", frames=summary.frames_processed, detections=summary.detections,
        fps=summary.fps, out=str(out))
    return summary
