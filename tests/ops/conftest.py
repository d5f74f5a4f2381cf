import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from azaion_training.locks import InstanceLock
    lock = InstanceLock(Path(sys.argv[1]), sys.argv[2]).acquire()
    print("holding", flush=True)
    time.sleep(120)
""")


@contextmanager
def lock_held_by_another_process(path: Path, what: str) -> Iterator[subprocess.Popen]:
    """Another process that holds the instance lock at `path` until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), what], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "holding"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        process.stdout.close()
