"""Azaion AI Training: annotations → datasets → YOLO models → encrypted distribution → inference.

Importing the package makes Ultralytics and Albumentations offline-safe before either is
imported anywhere: nothing in this product downloads at run time.
"""

from azaion_training.offline import configure_offline_environment

configure_offline_environment()

__version__ = "0.1.0"
