"""Inference engines behind one small interface: `input_shape` (h, w), `batch_size`,
`dynamic_batch`, `dynamic_hw` (spatial axes free, so frames may be letterboxed to a smaller
rectangle, as Ultralytics does), `end2end` (output layout), `stride`, `class_names`, `workers`
(how many `run` calls may go at once) and `run(batch) -> outputs`.

Both YOLO output layouts are recognised: end-to-end `(B, 300, 6)` rows of
x1,y1,x2,y2,score,class, and raw `(B, 4 + nc, anchors)` (cx,cy,w,h then class scores).
"""

import ast
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from azaion_training.classes import model_class_names
from azaion_training.errors import InputError, OperationFailed
from azaion_training.fsutil import atomic_write_bytes
from azaion_training.logs import get_logger, log

logger = get_logger("inference")

DEFAULT_STRIDE = 32
GPU_BATCH = 4  # frames per call on a GPU unless told; on CPU 1 is fastest (benchmarks/infer.py)


class Engine(Protocol):
    input_shape: tuple[int, int]
    batch_size: int
    dynamic_batch: bool
    dynamic_hw: bool
    end2end: bool
    stride: int
    class_names: dict[int, str]
    provider: str
    workers: int

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...


def _literal(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None


def _is_end2end(metadata: dict[str, str], output_shape: list[Any]) -> bool:
    if "end2end" in metadata:
        return metadata["end2end"].strip().lower() == "true"
    return len(output_shape) == 3 and output_shape[2] == 6


def _check_output(output_shape: list[Any], end2end: bool, what: str) -> None:
    if len(output_shape) != 3 or (end2end and output_shape[2] not in (6, "?")):
        raise InputError(f"{what} has output shape {output_shape}; expected a YOLO detector output "
                         "(B, 300, 6) end-to-end or (B, 4+classes, anchors) raw: export a detection model")


def _pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """A fixed-batch model takes exactly `size` frames: fill the rest with zeros."""
    if batch.shape[0] == size:
        return batch
    if batch.shape[0] > size:
        raise ValueError(f"batch of {batch.shape[0]} frames exceeds the model's fixed batch {size}")
    filler = np.zeros((size - batch.shape[0], *batch.shape[1:]), dtype=batch.dtype)
    return np.concatenate([batch, filler])


def default_workers() -> int:
    """Two engine calls at once on any multi-core machine: one frame's letterbox and cleanup
    overlap the other's ONNX Runtime call, and the two calls share the cores."""
    return min(2, os.cpu_count() or 1)


class OnnxEngine:
    """ONNX Runtime from bytes (a decrypted model never touches the disk); CUDA when the
    installed runtime has it, else CPU. A fixed batch axis in the model wins over
    `batch_size`; without either, 1 frame per call on CPU, the export's batch on a GPU.
    `workers` calls at once (0 = `default_workers()`; one session serves them all, its `run`
    is thread-safe) with `threads` each (0 = the cores shared out among the workers: one
    thread per call is the least CPU per frame, no waiting for each other)."""

    def __init__(self, model_bytes: bytes, threads: int = 0, batch_size: int | None = None, workers: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.workers = workers or default_workers()
        options.intra_op_num_threads = threads or max(1, (os.cpu_count() or 1) // self.workers)
        # Idle pool threads sleep instead of spinning: a spinning thread takes a core from the
        # other engine call, the video decoder and anything else on a small machine (on 2 busy
        # cores a spinning 2-thread yolo26n call took 1.5x the CPU time and 3x the wall time).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in ort.get_available_providers()]
        try:
            self._session = ort.InferenceSession(model_bytes, options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind types for every load failure
            raise InputError(f"the model is not a loadable ONNX file ({type(exc).__name__}: {str(exc)[:200]}); "
                             "pass an .onnx exported with `azaion export`") from None
        self.provider = self._session.get_providers()[0]
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            raise InputError(f"the ONNX model takes {[(i.name, i.shape) for i in inputs]}; expected one "
                             "image input (batch, 3, height, width): export a YOLO detection model")
        self._input_name = inputs[0].name
        self._input_dtype = np.float16 if "float16" in inputs[0].type else np.float32
        metadata = self._session.get_modelmeta().custom_metadata_map
        batch, _, height, width = inputs[0].shape
        self.dynamic_batch = not isinstance(batch, int)
        self.dynamic_hw = not (isinstance(height, int) and isinstance(width, int))
        self.input_shape = (height, width) if not self.dynamic_hw else self._metadata_imgsz(metadata)
        auto_batch = 1 if self.provider == "CPUExecutionProvider" else int(metadata.get("batch", 1))
        self.batch_size = batch if not self.dynamic_batch else (batch_size or auto_batch)
        self.end2end = _is_end2end(metadata, outputs[0].shape)
        _check_output(outputs[0].shape, self.end2end, "the ONNX model")
        self.stride = int(metadata.get("stride", DEFAULT_STRIDE))
        names = _literal(metadata.get("names"))
        self.class_names = {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) \
            else model_class_names()

    @staticmethod
    def _metadata_imgsz(metadata: dict[str, str]) -> tuple[int, int]:
        imgsz = _literal(metadata.get("imgsz"))
        if isinstance(imgsz, int):
            return imgsz, imgsz
        if isinstance(imgsz, list | tuple) and len(imgsz) == 2:
            return int(imgsz[0]), int(imgsz[1])
        raise InputError("the ONNX model has free height/width and no `imgsz` in its metadata, so its input "
                         "size is unknown: export it with `azaion export` (or Ultralytics) to carry the size")

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        count = batch.shape[0]
        feed = batch if self.dynamic_batch else _pad_batch(batch, self.batch_size)
        outputs = self._session.run(None, {self._input_name: feed.astype(self._input_dtype, copy=False)})
        return [np.asarray(output[:count], dtype=np.float32) for output in outputs]


def engine_filename_for(major: int, minor: int, sm_count: int) -> str:
    """One TensorRT engine per GPU architecture and SM count (an engine runs only on the GPU kind it was built for)."""
    return f"azaion.cc_{major}.{minor}_sm_{sm_count}.engine"


def engine_filename(device_id: int = 0) -> str:
    """The engine file name for this machine's GPU `device_id`."""
    import torch

    if not torch.cuda.is_available():
        raise OperationFailed("no CUDA GPU is visible, so there is no TensorRT engine name for this machine")
    props = torch.cuda.get_device_properties(device_id)
    return engine_filename_for(props.major, props.minor, props.multi_processor_count)


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _split_ultralytics_engine(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Ultralytics prefixes its .engine files with a 4-byte length and a JSON metadata block."""
    if len(data) > 4:
        size = int.from_bytes(data[:4], "little")
        if 0 < size < len(data) - 4 and data[4:5] == b"{":
            try:
                return data[4 + size:], json.loads(data[4:4 + size].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
    return data, {}


class TensorRTEngine:
    """A TensorRT plan on the GPU (buffers are torch CUDA tensors, so no pycuda is needed)."""

    def __init__(self, engine_bytes: bytes, batch_size: int | None = None,
                 class_names: dict[int, str] | None = None, device_id: int = 0):
        import tensorrt as trt
        import torch

        plan, metadata = _split_ultralytics_engine(engine_bytes)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise InputError("the TensorRT engine could not be deserialised (built for another GPU or TensorRT "
                             "version?): delete it so it is rebuilt from the ONNX model")
        self._context = self._engine.create_execution_context()
        self._device = torch.device(f"cuda:{device_id}")
        self._stream = torch.cuda.Stream(self._device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._input = next(n for n in names if is_input[n])
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: torch.from_numpy(np.empty(0, trt.nptype(self._engine.get_tensor_dtype(n)))).dtype
                        for n in names}
        shape = list(self._engine.get_tensor_shape(self._input))
        max_shape = list(self._engine.get_tensor_profile_shape(self._input, 0)[2]) if -1 in shape else shape
        self.dynamic_batch = shape[0] == -1
        self.dynamic_hw = False  # the profile fixes height and width
        self.input_shape = (int(max_shape[2]), int(max_shape[3]))
        self.batch_size = min(batch_size or GPU_BATCH, max_shape[0]) if self.dynamic_batch else shape[0]
        output_shape = list(self._engine.get_tensor_shape(self._outputs[0]))
        self.end2end = bool(metadata["end2end"]) if "end2end" in metadata else output_shape[-1] == 6
        _check_output(output_shape, self.end2end, "the TensorRT engine")
        self.stride = int(metadata.get("stride", DEFAULT_STRIDE))
        names_meta = metadata.get("names")
        self.class_names = class_names or ({int(k): str(v) for k, v in names_meta.items()} if names_meta
                                           else model_class_names())
        self.provider = "TensorRT"
        self.workers = 1  # one execution context and stream

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        count = batch.shape[0]
        feed = batch if self.dynamic_batch else _pad_batch(batch, self.batch_size)
        with torch.cuda.stream(self._stream):
            tensor = torch.from_numpy(np.ascontiguousarray(feed)).to(self._device, non_blocking=True)
            tensor = tensor.to(self._dtypes[self._input])
            self._context.set_input_shape(self._input, tuple(tensor.shape))
            self._context.set_tensor_address(self._input, tensor.data_ptr())
            outputs = []
            for name in self._outputs:
                out = torch.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._dtypes[name],
                                  device=self._device)
                self._context.set_tensor_address(name, out.data_ptr())
                outputs.append(out)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise OperationFailed("TensorRT inference failed (execute_async_v3 returned false)")
            host = [out[:count].float().cpu() for out in outputs]
        self._stream.synchronize()
        return [h.numpy() for h in host]


def convert_from_onnx(onnx_bytes: bytes, max_batch: int, imgsz: tuple[int, int]) -> bytes:
    """Build a TensorRT plan from ONNX: FP16 when the GPU has fast FP16, batch 1..max_batch,
    workspace up to 90 % of free GPU memory."""
    import tensorrt as trt
    import torch

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse the ONNX model: {errors[:300]}")
    config = builder.create_builder_config()
    free, _ = torch.cuda.mem_get_info()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(free * 0.9))
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    tensor = network.get_input(0)
    height, width = imgsz
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, (1, 3, height, width), (max_batch, 3, height, width), (max_batch, 3, height, width))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise OperationFailed("TensorRT failed to build an engine from the ONNX model (see its log above)")
    return bytes(plan)


def tensorrt_from_onnx(onnx_bytes: bytes, cache_dir: Path, batch_size: int, device_id: int = 0) -> TensorRTEngine:
    """A TensorRT engine for this ONNX model on this GPU, built once and cached as
    `<cache_dir>/<model sha256[:16]>/azaion.cc_X.Y_sm_N.engine`."""
    onnx_engine = OnnxEngine(onnx_bytes, batch_size=batch_size)  # reads names, size and batch from the ONNX
    max_batch = onnx_engine.batch_size if not onnx_engine.dynamic_batch else batch_size
    path = cache_dir / hashlib.sha256(onnx_bytes).hexdigest()[:16] / engine_filename(device_id)
    if path.is_file():
        log(logger, logging.INFO, "reusing cached TensorRT engine", path=str(path))
    else:
        log(logger, logging.INFO, "building TensorRT engine (minutes, once per GPU)", path=str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, convert_from_onnx(onnx_bytes, max_batch, onnx_engine.input_shape))
    engine = TensorRTEngine(path.read_bytes(), batch_size=batch_size, class_names=onnx_engine.class_names,
                            device_id=device_id)
    engine.stride = onnx_engine.stride
    return engine


# --- edge engines: OpenVINO (CPU laptops) and RKNN Lite (Rockchip boards), docs/edge.md ---------------------

EDGE_METADATA = "metadata.json"  # inside an edge archive: format, precision, names, stride, imgsz, end2end
OPENVINO_FILES = ("azaion.xml", "azaion.bin")
RKNN_FILE = "azaion.rknn"


def disable_openvino_telemetry() -> None:
    """OpenVINO's model converter and NNCF send usage telemetry unless a consent file in the home
    directory says no; the product never phones home (there is no internet in the field either).
    Called before either is imported: NNCF's own switch, and every consent check answered "declined"."""
    os.environ.setdefault("NNCF_CI", "1")  # nncf/telemetry/wrapper.py: a stub instead of the sender
    try:
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return
    opt_in_checker.OptInChecker.check = lambda *_args, **_kwargs: opt_in_checker.ConsentCheckResult.DECLINED


def pack_edge_archive(files: dict[str, bytes], metadata: dict[str, Any]) -> bytes:
    """One file for an edge model (what is encrypted and published): its files and metadata.json,
    stored uncompressed in a zip with fixed timestamps, so the same model gives the same bytes."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in [*files.items(), (EDGE_METADATA, json.dumps(metadata, sort_keys=True).encode())]:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def read_edge_archive(data: bytes) -> tuple[dict[str, bytes], dict[str, Any]] | None:
    """(files, metadata) of an edge archive; None for anything else (an ONNX, a TensorRT plan)."""
    import io
    import zipfile

    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InputError(f"the model looks like an edge archive (zip) but cannot be read ({exc})") from None
    if EDGE_METADATA not in files:
        raise InputError("the zip holds no metadata.json, so it is no edge model of `azaion export`: export it "
                         "with `azaion export --formats openvino` (or rknn)")
    try:
        metadata = json.loads(files.pop(EDGE_METADATA))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError("the edge archive's metadata.json is not JSON: export the model again") from None
    return files, metadata


def _metadata_names(metadata: dict[str, Any]) -> dict[int, str]:
    names = metadata.get("names")
    return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else model_class_names()


def onnx_metadata(model_bytes: bytes) -> dict[str, str]:
    """An ONNX model's metadata_props (Ultralytics writes names, stride, imgsz, batch, end2end)."""
    import onnx

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"the model is not a loadable ONNX file ({type(exc).__name__}); pass an .onnx exported "
                         "with `azaion export`") from None
    return {p.key: p.value for p in model.metadata_props}


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def rknn_lite_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("rknnlite.api") is not None
    except ModuleNotFoundError:
        return False


class OpenVinoEngine:
    """OpenVINO Runtime on the CPU, from an edge archive of `azaion export --formats openvino`
    (FP32 or INT8 IR) or from ONNX bytes, in memory. Free spatial axes are kept free (frames are
    letterboxed to their own stride-multiple rectangle, as with ONNX Runtime); each input shape
    gets its own static compilation, made on first use and kept (a video has one shape). FP32
    arithmetic where the model is not quantised (the CPU plugin would otherwise pick bf16 on
    CPUs that have it, which the evaluation did not measure)."""

    MAX_SHAPES = 8

    def __init__(self, model_bytes: bytes, threads: int = 0, batch_size: int | None = None, workers: int = 0):
        import threading

        disable_openvino_telemetry()
        import openvino as ov

        archive = read_edge_archive(model_bytes)
        self._core = ov.Core()
        if archive is not None:
            files, info = archive
            if info.get("format") != "openvino" or any(name not in files for name in OPENVINO_FILES):
                raise InputError(f"the edge archive holds a {info.get('format')!r} model, not OpenVINO: "
                                 "use --engine auto (or the engine its format names)")
            weights = np.frombuffer(files["azaion.bin"], dtype=np.uint8)
            self._model = self._core.read_model(files["azaion.xml"].decode("utf-8"), ov.Tensor(weights))
            self.precision = str(info.get("precision", "fp32"))
            # the archive's JSON values in the ONNX metadata's string form, read by the same code
            metadata = {k: v if isinstance(v, str) else repr(v) for k, v in info.items()}
        else:
            import io

            metadata = onnx_metadata(model_bytes)
            try:
                self._model = ov.convert_model(io.BytesIO(model_bytes))
            except Exception as exc:  # OpenVINO's frontends raise their own types for every parse failure
                raise InputError(f"OpenVINO cannot read the model ({type(exc).__name__}: {str(exc)[:200]}): pass "
                                 "an .onnx or an edge archive exported with `azaion export`") from None
            self.precision = "fp32"
        shape = self._model.inputs[0].get_partial_shape()
        if len(self._model.inputs) != 1 or shape.rank.get_length() != 4:
            raise InputError(f"the OpenVINO model takes {len(self._model.inputs)} inputs of shape {shape}; expected "
                             "one image input (batch, 3, height, width): export a YOLO detection model")
        dims = [d.get_length() if d.is_static else None for d in shape]
        self.dynamic_batch = dims[0] is None
        self.dynamic_hw = dims[2] is None or dims[3] is None
        self.input_shape = (dims[2], dims[3]) if not self.dynamic_hw else OnnxEngine._metadata_imgsz(metadata)
        self.batch_size = dims[0] if not self.dynamic_batch else (batch_size or 1)
        output = [d.get_length() if d.is_static else "?" for d in self._model.outputs[0].get_partial_shape()]
        self.end2end = _is_end2end(metadata, output)
        _check_output(output, self.end2end, "the OpenVINO model")
        self.stride = int(metadata.get("stride", DEFAULT_STRIDE))
        names = _literal(metadata.get("names"))
        self.class_names = {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) \
            else model_class_names()
        self.workers = workers or 1
        self.provider = f"OpenVINO CPU ({self.precision})"
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self._compiled: dict[tuple[int, ...], tuple[Any, list]] = {}
        self._lock = threading.Lock()

    def _request(self, shape: tuple[int, ...]) -> tuple[Any, list]:
        """A free infer request of the model compiled for `shape` (requests are not thread-safe:
        each concurrent call takes its own from the shape's pool)."""
        with self._lock:
            if shape not in self._compiled:
                if len(self._compiled) >= self.MAX_SHAPES:
                    self._compiled.pop(next(iter(self._compiled)))
                model = self._model.clone()
                model.reshape({model.inputs[0]: list(shape)})
                self._compiled[shape] = (self._core.compile_model(model, "CPU", self._config), [])
            compiled, pool = self._compiled[shape]
            request = pool.pop() if pool else compiled.create_infer_request()
        return request, pool

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        count = batch.shape[0]
        feed = np.ascontiguousarray(batch if self.dynamic_batch else _pad_batch(batch, self.batch_size),
                                    dtype=np.float32)
        request, pool = self._request(tuple(feed.shape))
        try:
            request.infer({0: feed})
            outputs = [np.array(request.get_output_tensor(i).data[:count], dtype=np.float32)
                       for i in range(len(self._model.outputs))]
        finally:
            with self._lock:
                pool.append(request)
        return outputs


class RknnLiteEngine:
    """An .rknn model on a Rockchip board's NPU through rknn-toolkit-lite2 (installed on the board
    only, docs/edge.md). The runtime loads from a path, so the decrypted model lives for the load
    in a private file in /dev/shm (memory) and is removed at once. Fixed input size; the model's
    two outputs (boxes, class scores: split for INT8, training/rknn_convert.py) are joined again."""

    def __init__(self, model_bytes: bytes, class_names: dict[int, str] | None = None):
        import tempfile

        from rknnlite.api import RKNNLite

        archive = read_edge_archive(model_bytes)
        if archive is None or archive[1].get("format") != "rknn" or RKNN_FILE not in archive[0]:
            raise InputError("the rknn engine takes an RKNN edge archive of `azaion export --formats rknn`")
        files, metadata = archive
        self._rknn = RKNNLite(verbose=False)
        # a private (0600, unpredictable name) file in memory when /dev/shm exists
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None  # nosec B108
        with tempfile.NamedTemporaryFile(suffix=".rknn", dir=directory) as plain:
            plain.write(files[RKNN_FILE])
            plain.flush()
            if self._rknn.load_rknn(plain.name) != 0:
                raise InputError("rknn-toolkit-lite2 cannot load the model (built for another platform or "
                                 f"toolkit version? it was built for {metadata.get('platform')})")
        if self._rknn.init_runtime(core_mask=RKNNLite.NPU_CORE_AUTO) != 0:
            raise OperationFailed("the RKNN runtime did not start (is this a Rockchip board with its NPU driver?)")
        height, width = metadata["imgsz"]
        self.input_shape = (int(height), int(width))
        self.batch_size, self.dynamic_batch, self.dynamic_hw = 1, False, False
        self.end2end = bool(metadata.get("end2end", False))
        self.stride = int(metadata.get("stride", DEFAULT_STRIDE))
        self.class_names = class_names or _metadata_names(metadata)
        self.provider = f"RKNN NPU ({metadata.get('platform')}, {metadata.get('precision')})"
        self.workers = 1

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        rows = []
        for frame in batch:  # the pipeline's [0, 1] float RGB back to the 0..255 the model was built for
            pixels = (frame * 255).round().astype(np.uint8)[None]
            outputs = self._rknn.inference(inputs=[pixels], data_format="nchw")
            rows.append(np.concatenate([np.asarray(o, np.float32).reshape(1, o.shape[1], -1) for o in outputs], 1))
        return [np.concatenate(rows)]


def onnx_imgsz(path: Path) -> int | None:
    """The square input size an ONNX was exported at (its `imgsz` metadata)."""
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    try:
        value = ast.literal_eval(metadata.get("imgsz", "None"))
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple) and value and isinstance(value[0], int):
        return int(value[0])
    return None
