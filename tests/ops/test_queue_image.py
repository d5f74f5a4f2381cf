"""The annotation-queue image holds only requirements-queue.txt: the consumer and the CLI entry
point must import without torch, ultralytics, opencv or any other pin that image leaves out."""

import pkgutil
import subprocess
import sys

import azaion_training.queue
from tests.conftest import REPO

# Import names of the requirements.txt pins the queue image does not install (plus what they pull in).
LEFT_OUT = {
    "torch": ["torch"], "torchvision": ["torchvision"], "ultralytics": ["ultralytics"], "onnx": ["onnx"],
    "onnxslim": ["onnxslim"], "onnxruntime": ["onnxruntime"], "albumentations": ["albumentations"],
    "opencv-python": ["cv2"], "opencv-python-headless": ["cv2"], "cryptography": ["cryptography"],
    "boto3": ["boto3", "botocore", "s3transfer"], "httpx": ["httpx", "httpcore"],
    "starlette": ["starlette"], "uvicorn": ["uvicorn"], "jinja2": ["jinja2"],
    "cleanlab": ["cleanlab"], "openvino": ["openvino"], "nncf": ["nncf"],
}
TRANSITIVE = ["numpy", "PIL", "scipy", "matplotlib", "pandas"]

BLOCKER = """
import sys
class _LeftOutOfQueueImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed in the annotation-queue image")
        return None
sys.meta_path.insert(0, _LeftOutOfQueueImage())
"""


def pins(name: str) -> set[str]:
    lines = (REPO / name).read_text().splitlines()
    return {line.split("==")[0] for line in lines if "==" in line and not line.startswith("#")}


def import_without_left_out_packages(modules: list[str]) -> subprocess.CompletedProcess:
    blocked = sorted({name for names in LEFT_OUT.values() for name in names} | set(TRANSITIVE))
    code = f"BLOCKED = {blocked!r}\n{BLOCKER}\n" + "".join(f"import {module}\n" for module in modules)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_every_left_out_pin_is_blocked():
    assert set(LEFT_OUT) == pins("requirements.txt") - pins("requirements-queue.txt")


def test_blocker_really_blocks():
    result = import_without_left_out_packages(["numpy"])
    assert result.returncode != 0 and "not installed in the annotation-queue image" in result.stderr


def test_queue_modules_and_cli_import_without_heavy_packages():
    package = azaion_training.queue
    queue_modules = [f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)]
    assert "azaion_training.queue.cli" in queue_modules
    result = import_without_left_out_packages([*queue_modules, "azaion_training.cli", "azaion_training.ops.health"])
    assert result.returncode == 0, result.stderr
