"""What counts as a usable image: one rule for the stream consumer and dataset formation
(docs/data-tree.md).

`structure_problem` is the cheap part, pure Python (the consumer's slim image has no OpenCV):
the format comes from the magic bytes (never from the file name: OpenCV and Ultralytics read
by content too); a JPEG must carry a frame header with a size and its end-of-image marker at
its end, a PNG its IHDR header and IEND chunk (a truncated upload loses the end). The consumer
refuses anything it flags.

`decode_problem` adds a decode at 1/8 resolution (OpenCV's IMREAD_REDUCED_GRAYSCALE_8: for
a JPEG, libjpeg skips most of the work). A header followed by garbage, a bit-flipped JPEG or
BMP/TIFF/WebP magic followed by garbage pass any structural test but fail here. Formation runs
it on every file before admitting it to a dataset, once per file: the check cache remembers it.
"""

import struct

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_BYTES = 16
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
JPEG_END_WINDOW = 4096  # some writers pad after the end marker; FF D9 cannot occur inside scan data
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


def is_image_name(name: str) -> bool:
    """True when the file name has one of IMAGE_SUFFIXES (any case)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def image_format(data: bytes) -> str | None:
    """'jpeg', 'png', 'bmp', 'webp' or 'tiff' by the magic bytes; None for anything else."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    return None


def structure_problem(data: bytes) -> str | None:
    """Why these bytes are not a structurally complete image, or None (module docstring)."""
    if len(data) < MIN_BYTES:
        return f"image is empty or too small ({len(data)} bytes)"
    found = image_format(data)
    if found is None:
        return f"not an image: unknown magic bytes {data[:8].hex()} (expected JPEG/PNG/BMP/WebP/TIFF)"
    if found == "jpeg":
        return _jpeg_problem(data)
    if found == "png":
        return _png_problem(data)
    return None


def _jpeg_problem(data: bytes) -> str | None:
    if data.rfind(JPEG_END, max(0, len(data) - JPEG_END_WINDOW)) < 0:
        return "truncated JPEG (no end-of-image marker)"
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return None if width and height else "JPEG frame header has a zero width or height"
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return "broken JPEG (no valid frame header)"


def _png_problem(data: bytes) -> str | None:
    if not data.rstrip(b"\0").endswith(PNG_END):
        return "truncated PNG (no IEND chunk)"
    if data[12:16] != b"IHDR" or not all(struct.unpack(">II", data[16:24])):
        return "broken PNG (no valid IHDR header)"
    return None


def decode_problem(data: bytes) -> str | None:
    """structure_problem, then a reduced-resolution OpenCV decode (module docstring)."""
    problem = structure_problem(data)
    if problem:
        return problem
    import cv2
    import numpy as np
    from cv2.utils import logging as cv_logging

    level = cv_logging.getLogLevel()
    cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)  # the reason goes to the quarantine, not stderr
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    finally:
        cv_logging.setLogLevel(level)
    return None if decoded is not None else f"{image_format(data).upper()} image cannot be decoded (OpenCV)"
