"""The machine's hardware fingerprint (docs/encryption.md) on Linux:
"CPU: {cpu}. GPU: {gpu}. Memory: {memory}. DriveSerial: {serial}".

CPU model from /proc/cpuinfo, the first NVIDIA GPU's name (pynvml, else nvidia-smi, else
"None"), MemTotal from /proc/meminfo, and the serial of the first physical drive
(/sys/block/*/device/serial, else its /dev/disk/by-id name). Virtual machines and containers
often expose no drive serial: then /etc/machine-id stands in ("machine-id:<id>"), which is
stable for the installation. Computed once per process.
"""

import functools
import re
import shutil
import subprocess  # nosec B404 # fixed argv lists, no shell
from pathlib import Path

VIRTUAL_DEVICES = re.compile(r"^(loop|ram|zram|dm-|md|sr|nbd|fd)")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def cpu_model(root: Path = Path("/")) -> str:
    for line in _read(root / "proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return "Unknown"


def memory_total(root: Path = Path("/")) -> str:
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read(root / "proc/meminfo"), re.MULTILINE)
    return f"{match.group(1)} kB" if match else "Unknown"


def gpu_name() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount():
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
                return name.decode() if isinstance(name, bytes) else name
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # nosec B110 # no driver, no library, no device: fall through to nvidia-smi
        pass
    if shutil.which("nvidia-smi"):
        try:
            # bandit B603/B607: a fixed argv; nvidia-smi from PATH is how the driver installs it
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],  # nosec B603 B607
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                return out.splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return "None"


def drive_serial(root: Path = Path("/")) -> str:
    block = root / "sys/block"
    devices = sorted(p for p in block.iterdir() if not VIRTUAL_DEVICES.match(p.name)) if block.is_dir() else []
    for device in devices:
        serial = _read(device / "device/serial")
        if serial:
            return serial
    by_id = root / "dev/disk/by-id"
    if by_id.is_dir():
        names = sorted(p.name for p in by_id.iterdir()
                       if not p.name.startswith(("wwn-", "dm-", "lvm-", "md-", "nvme-eui.")) and "-part" not in p.name)
        if names:
            return names[0]
    machine_id = _read(root / "etc/machine-id")
    return f"machine-id:{machine_id}" if machine_id else "Unknown"


def collect_hardware_info(root: Path = Path("/"), gpu: str | None = None) -> str:
    gpu = gpu if gpu is not None else gpu_name()
    return (f"CPU: {cpu_model(root)}. GPU: {gpu}. Memory: {memory_total(root)}. "
            f"DriveSerial: {drive_serial(root)}")


@functools.cache
def hardware_info() -> str:
    """This machine's fingerprint, computed once per process."""
    return collect_hardware_info()
