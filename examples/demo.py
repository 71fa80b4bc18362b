"""The demo (``make demo``): run examples/hello.json on the whole stack, on this machine.

It is ``python -m bridge dev examples/hello.json``: the local Data Pipeline service, a private Redis, a Celery
worker, the poller and Flower start, the pipeline runs with live progress, everything stops, and the exit code
says whether every step FINISHED. Extra arguments go to ``bridge dev`` (try ``--help``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    os.chdir(HERE.parent)  # so `-m bridge` finds the project even when it is not installed
    argv = [sys.executable, "-m", "bridge", "dev", str(HERE / "hello.json"), *sys.argv[1:]]
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # Ctrl-C and the exit code go straight to bridge dev


if __name__ == "__main__":
    main()
