"""A test-only crash hook for the publish protocol (docs/model-registry.md, "Atomic publish").

`AZAION_FAULT_AFTER=<step>` makes the process end at once (os._exit, no cleanup, like a kill
or a power cut) right after the named step of a publish; the crash tests
(tests/distribution/test_atomic_publish.py) use it to stop a real publisher between any two
steps. Unset, it costs one environment lookup per step. Never set it in production.
"""

import os

FAULT_ENV = "AZAION_FAULT_AFTER"
FAULT_EXIT = 86  # the exit status of a process the hook ended


def fault_point(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        os._exit(FAULT_EXIT)
