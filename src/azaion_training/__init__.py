"""Azaion AI Training: annotations → datasets → YOLO models → encrypted distribution → inference.

Importing the package changes nothing outside it: the `azaion` entry point (and the test
suite, and benchmarks that load Ultralytics) make Ultralytics and Albumentations offline-safe
with `offline.configure_offline_environment()` before either is imported.
"""

__version__ = "0.1.0"
