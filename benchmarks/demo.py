"""`azaion demo` at its defaults: wall time of each step, the test-split mAP50, and the ratio
of the whole demo to its training step (the reference: plain Ultralytics compute measured in
the same run), plus the share of the 5-minute budget used. Prints one JSON line.

    python benchmarks/demo.py [--images N --epochs N ...]   (extra arguments go to `azaion demo`)
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 300.0


def main() -> None:
    azaion = Path(sys.executable).parent / "azaion"
    with tempfile.TemporaryDirectory(prefix="azaion-demo-bench-") as tmp:
        started = time.monotonic()
        done = subprocess.run([str(azaion), "demo", "--workdir", f"{tmp}/work", "--json", *sys.argv[1:]],
                              capture_output=True, text=True, env={**os.environ, "AZAION_LOG_FORMAT": "json"})
        wall = time.monotonic() - started
        if done.returncode:
            sys.exit(f"azaion demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout[done.stdout.index("{\n"):])
    steps = result["timings_s"]
    train = steps["train yolo26n on CPU"]
    print(json.dumps({
        "benchmark": "demo", "args": sys.argv[1:], "wall_s": round(wall, 1), "demo_s": steps["total"],
        "train_s": train, "mAP50": round(result["map50"], 4), "steps_s": steps,
        "ratio_demo_to_training": round(steps["total"] / train, 2),
        "ratio_wall_to_budget": round(wall / BUDGET_S, 2), "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
