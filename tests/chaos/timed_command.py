"""The command every chaos task runs: ``START``, a sleep, ``END``, each line stamped and appended to one log.

Usage: ``python -I -S timed_command.py LOG SECONDS``. Stdlib only (it runs under ``-I -S``, with the command's
allowlisted environment). A line reads::

    START <monotonic> <component id> <instance id> <attempt id> <seconds> <pid>,<parent>,<grandparent>,...

``END`` follows when the sleep is over; ``TERM`` instead when a SIGTERM stopped it (SIGKILL leaves neither).

``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every process on the machine, so stamps written by
commands on different workers compare with each other and with the harness's own. The pid chain lets the
harness tell which worker process (or prefork child) ran each execution. One ``os.write`` per line on an
``O_APPEND`` descriptor: lines of concurrent commands never interleave.
"""

from __future__ import annotations

import os
import signal
import sys
import time

#: Ancestors recorded after the command's own pid (supervisor, pool child, worker, ...).
CHAIN_DEPTH = 5


def parent_of(pid: int) -> int:
    """The parent pid of ``pid`` from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def pid_chain() -> str:
    chain = [os.getpid()]
    while len(chain) <= CHAIN_DEPTH and chain[-1] > 1:
        chain.append(parent_of(chain[-1]))
    return ",".join(str(pid) for pid in chain if pid > 0)


def main(log_path: str, seconds: float) -> None:
    component = os.environ.get("DP_OBJECT_ID", "?")
    attempt = os.environ.get("DP_ATTEMPT_ID", "?")
    instance = attempt.rpartition("_Attempt=")[0] or "?"  # Data Pipeline's attempt ids: <instance id>_Attempt=<n>
    chain = pid_chain()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def mark(word: str) -> None:
        os.write(fd, f"{word} {time.monotonic():.6f} {component} {instance} {attempt} {seconds:g} {chain}\n".encode())

    def stopped(signum: int, _frame: object) -> None:
        mark("TERM")  # stopped from outside (a supervisor stopping its group): say when, then die of it
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stopped)
    mark("START")
    time.sleep(seconds)
    mark("END")
    os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
