"""Every value a route takes from the URL or a form, checked before use: a bad one raises
BadRequest, which the app answers with 400 and the message (never a 500)."""

import re

from starlette.requests import Request

from azaion_training.layout import SPLITS, is_safe_name

MAX_CLASS = 79  # the model's 80 slots (docs/classes-and-labels.md)
MAX_PAGE = 10 ** 7
MAX_TEXT = 200
REJECTED_FILE = re.compile(r"[0-9]{1,20}\.(bin|json)")
TARGET = re.compile(r"azaion|local:[^\x00-\x1f\x7f]{1,1000}")


class BadRequest(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _int(value: str, what: str, low: int, high: int) -> int:
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    if not re.fullmatch(r"[0-9]{1,9}", value) or not low <= int(value) <= high:
        raise BadRequest(f"{what} must be a whole number from {low} to {high} (got {shown(value)})")
    return int(value)


def shown(value: str) -> str:
    """A bad value as a message may quote it: at most 40 characters, as a repr."""
    return repr(value[:40]) + ("..." if len(value) > 40 else "")


def page(request: Request) -> int:
    value = request.query_params.get("page", "")
    return 1 if value == "" else _int(value, "page", 1, MAX_PAGE)


def class_id(request: Request) -> int | None:
    value = request.query_params.get("class", "")
    return None if value == "" else _int(value, "class", 0, MAX_CLASS)


def split(value: str, optional: bool = False) -> str:
    if optional and value == "":
        return value
    if value not in SPLITS:
        raise BadRequest(f"split must be one of {', '.join(SPLITS)} (got {shown(value)})")
    return value


def name(value: str, what: str) -> str:
    """A run, dataset, image or annotation name: 1-200 of A-Z a-z 0-9 . _ -, no leading dot."""
    if not is_safe_name(value):
        raise BadRequest(f"invalid {what} {shown(value)}: use 1-200 characters of A-Z a-z 0-9 . _ - "
                         "not starting with '.'")
    return value


def rejected_file(value: str) -> str:
    if not REJECTED_FILE.fullmatch(value):
        raise BadRequest(f"invalid queue-rejected file {shown(value)}: expected OFFSET.bin or OFFSET.json")
    return value


def text(value: str, what: str) -> str:
    """Free text compared with what the tree holds (a quarantine reason): bounded, printable."""
    if len(value) > MAX_TEXT or re.search(r"[\x00-\x1f\x7f]", value):
        raise BadRequest(f"invalid {what}: at most {MAX_TEXT} printable characters")
    return value


def target(value: str) -> str:
    if not TARGET.fullmatch(value):
        raise BadRequest(f"invalid target {shown(value)}: use 'azaion' (Azaion API + CDN) or 'local:DIR'")
    return value


OUTCOME_KINDS = ("true_positive", "wrong_class", "duplicate", "localisation", "background", "missed")
SORTS = ("", "score")


def model_ref(value: str) -> str:
    """`production` (production on azaion) or a run name."""
    return name(value, "model (a run name or 'production')")


def conf(value: str) -> float | None:
    """An outcome confidence threshold: a decimal number in (0, 1]; "" is the default."""
    if value == "":
        return None
    if not re.fullmatch(r"(0?\.[0-9]{1,6}|1(\.0{1,6})?)", value) or float(value) <= 0:
        raise BadRequest(f"conf must be a number in (0, 1], e.g. 0.3 (got {shown(value)})")
    return float(value)


def kind(value: str) -> str:
    """An outcome kind to filter images by, `errors` (any error) or "" (all)."""
    if value not in ("", "errors", *OUTCOME_KINDS):
        raise BadRequest(f"kind must be one of errors, {', '.join(OUTCOME_KINDS)} (got {shown(value)})")
    return value


def sort(value: str) -> str:
    if value not in SORTS:
        raise BadRequest(f"sort must be 'score' or empty (got {shown(value)})")
    return value


def cell_class(value: str, what: str) -> int | None:
    """A confusion-matrix row or column: a class 0-79 or `background` (-1); "" is none."""
    if value == "":
        return None
    if value == "background":
        return -1
    return _int(value, what, 0, MAX_CLASS)

