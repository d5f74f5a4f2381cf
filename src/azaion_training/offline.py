"""Offline environment for Ultralytics and Albumentations: nothing downloads at run time.

Ultralytics downloads its font on first plot, checks for updates, auto-installs missing
packages and fetches `yolo26n.pt` for its AMP check; Albumentations pings PyPI for updates.
We set their switches and give Ultralytics a product-owned config dir that already holds a
font, so none of that ever reaches for the network.
"""

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def default_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "azaion-training"


def _install_fonts(config_dir: Path) -> None:
    """Ultralytics looks for its fonts in $YOLO_CONFIG_DIR/Ultralytics/."""
    bundled = resources.files("azaion_training") / "resources" / "DejaVuSans.ttf"
    font_dir = config_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    for name in FONT_NAMES:
        target = font_dir / name
        if not target.exists():
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            with resources.as_file(bundled) as src:
                shutil.copyfile(src, tmp)
            os.replace(tmp, target)


def configure_offline_environment() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(default_config_dir())))
    try:
        _install_fonts(config_dir)
    except OSError:
        # A read-only home (some containers): a fresh private temp dir (0700, unpredictable name).
        fallback = Path(tempfile.mkdtemp(prefix="azaion-ultralytics-"))
        os.environ["YOLO_CONFIG_DIR"] = str(fallback)
        _install_fonts(fallback)
