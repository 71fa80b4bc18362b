"""Run a Python program with every one of its threads profiled, and write where its time went.

    python bench/profiled.py --out FILE [--profiler auto|cprofile|pyinstrument] -- -m bridge start ...
    python bench/profiled.py --out FILE -- bench/taskrunner.py ...

The bridge's processes work on many threads (pollers, the keeper, Celery's pool), so the profiler is started in
each thread as it begins (``threading.Thread._bootstrap_inner``) and in the main thread. Only a window counts: the
benchmark creates ``FILE.start`` when its timed part begins and ``FILE.stop`` when it ends (a watcher thread takes
a snapshot of every thread's figures at each), so start-up imports and shutdown are left out. When the program
exits (normally, or after the SIGTERM it handles) ``FILE`` gets a text report of the window and ``FILE.json`` its
time by area (boto3/botocore, HTTP, redis-py, Celery/kombu, bridge, workers, logging, ...).

- ``cprofile`` (the standard library): every call, timed on each thread's own CPU clock, so waiting (held polls,
  sleeps, ``Event.wait``) costs nothing and the areas add up to the CPU the process used. Time in C functions
  (socket calls, ``json`` scanning) is counted in the area of the Python code that called them.
- ``pyinstrument`` (when installed: ``pip install pyinstrument``): sampled stacks per thread in wall time; the JSON
  leaves out samples whose innermost frame waits. ``auto`` picks it when it can be imported.

Profiling slows the program down (cProfile by about 2x): never quote a profiled run's timings.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import gc
import importlib.util
import json
import runpy
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Areas by the first match on a function's file path.
AREAS: tuple[tuple[str, str], ...] = (
    ("/botocore/", "boto3 + botocore"),
    ("/boto3/", "boto3 + botocore"),
    ("/urllib3/", "HTTP (urllib3, http.client, socket)"),
    ("/http/", "HTTP (urllib3, http.client, socket)"),
    ("/email/", "HTTP (urllib3, http.client, socket)"),
    ("/socket.py", "HTTP (urllib3, http.client, socket)"),
    ("/ssl.py", "HTTP (urllib3, http.client, socket)"),
    ("/redis/", "redis-py"),
    ("/kombu/", "Celery + kombu"),
    ("/celery/", "Celery + kombu"),
    ("/billiard/", "Celery + kombu"),
    ("/vine/", "Celery + kombu"),
    ("/prometheus_client/", "prometheus-client"),
    ("/bench/", "bench (model, body, profiler)"),
    ("/bridge/", "bridge"),
    ("/workers/", "workers"),
    ("/logging/", "logging"),
    ("/json/", "json"),
    ("/re/", "re"),
    ("/dateutil/", "dateutil + datetime"),
    ("/_strptime.py", "dateutil + datetime"),
    ("/uuid.py", "uuid"),
    ("/dataclasses.py", "dataclasses"),
    ("/threading.py", "threading + queue"),
    ("/queue.py", "threading + queue"),
    ("/concurrent/", "threading + queue"),
    ("<frozen importlib", "imports"),
    ("/importlib/", "imports"),
)
OTHER = "other (stdlib, other packages)"
#: Innermost functions that only wait (left out of pyinstrument's wall-time areas).
WAITS = frozenset(
    {"wait", "sleep", "select", "poll", "epoll", "recv", "recv_into", "accept", "acquire", "get", "_wait_for"}
)
#: Stats of one function: primitive calls, calls, own time, cumulative time, callers -> (cc, nc, tt, ct).
Row = tuple[int, int, float, float, dict[Any, tuple[int, int, float, float]]]
Key = tuple[str, int, str]


def area(filename: str) -> str:
    for needle, name in AREAS:
        if needle in filename:
            return name
    return OTHER


def _shares(seconds: dict[str, float]) -> dict[str, Any]:
    total = sum(seconds.values())
    ordered = sorted(seconds.items(), key=lambda kv: -kv[1])
    return {
        "total_s": round(total, 4),
        "areas": [{"area": k, "s": round(v, 4), "share": round(v / total, 4) if total else 0.0} for k, v in ordered],
    }


def _is_builtin(key: Key) -> bool:
    return key[0] == "~" or key[0].startswith("<built-in")


class CProfileEngine:
    """cProfile in every thread, on that thread's CPU clock."""

    name = "cprofile"

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def begin(self) -> cProfile.Profile:
        profile = cProfile.Profile(time.thread_time)
        with self.lock:
            self.profiles.append(profile)
        profile.enable()
        return profile

    def end(self, handle: Any) -> None:
        handle.disable()  # in its own thread: calls still on the stack are closed on the right clock

    def snapshot(self) -> dict[Key, Row]:
        """Every thread's figures so far, summed per function (a running thread's open calls are left out)."""
        merged: dict[Key, Row] = {}
        with self.lock:
            profiles = list(self.profiles)
        for profile in profiles:
            for key, (cc, nc, tt, ct, callers) in self._read(profile).items():
                old = merged.get(key)
                if old is None:
                    merged[key] = (cc, nc, tt, ct, dict(callers))
                    continue
                joined = dict(old[4])
                for caller, figures in callers.items():
                    prev = joined.get(caller)
                    if prev is not None:
                        figures = (
                            prev[0] + figures[0],
                            prev[1] + figures[1],
                            prev[2] + figures[2],
                            prev[3] + figures[3],
                        )
                    joined[caller] = figures
                merged[key] = (old[0] + cc, old[1] + nc, old[2] + tt, old[3] + ct, joined)
        return merged

    @staticmethod
    def _read(profile: cProfile.Profile) -> dict[Key, Row]:
        """One profile's figures, read while its thread may still run.

        The profiler keeps its entries in a tree that every lookup reorganises; if its thread runs while another
        reads the tree (a garbage collection in the reader can hand over the GIL) the read misses entries. So the
        collector is off while reading, and a read is repeated until two agree on the functions seen.
        """
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            previous: set[Key] | None = None
            for _ in range(10):
                profile.snapshot_stats()  # from getstats(): does not stop the profiler
                stats: dict[Key, Row] = profile.stats  # type: ignore[attr-defined]
                if previous is not None and previous <= stats.keys():
                    return stats
                previous = set(stats)
            return stats
        finally:
            if was_enabled:
                gc.enable()

    @staticmethod
    def window(after: dict[Key, Row], before: dict[Key, Row]) -> dict[Key, Row]:
        found: dict[Key, Row] = {}
        for key, row in after.items():
            old = before.get(key)
            if old is None:
                found[key] = row
                continue
            nc, tt = row[1] - old[1], row[2] - old[2]
            if nc > 0 or tt > 1e-9:
                found[key] = (row[0] - old[0], nc, tt, row[3] - old[3], row[4])
        return found

    @staticmethod
    def by_area(stats: dict[Key, Row]) -> dict[str, float]:
        """Own time per area; a C function's time goes to its callers' areas (by their share of its calls)."""
        seconds: dict[str, float] = defaultdict(float)
        for key, (_cc, _nc, tt, _ct, callers) in stats.items():
            if not _is_builtin(key) or not callers:
                seconds[area(key[0]) if not _is_builtin(key) else OTHER] += tt
                continue
            calls = sum(figures[1] for figures in callers.values()) or 1
            for caller, figures in callers.items():
                seconds[area(caller[0]) if not _is_builtin(caller) else OTHER] += tt * figures[1] / calls
        return seconds

    def report(self, out: Path, stats: dict[Key, Row]) -> None:
        total = sum(row[2] for row in stats.values())
        lines = [f"cProfile, thread CPU clock: {total:.3f} s in the window", "", "Own time (top 40):", ""]
        lines.append(f"{'own s':>8} {'cum s':>8} {'calls':>9}  function")
        for key, row in sorted(stats.items(), key=lambda kv: -kv[1][2])[:40]:
            lines.append(f"{row[2]:8.3f} {row[3]:8.3f} {row[1]:9d}  {key[0]}:{key[1]}({key[2]})")
        lines += ["", "Cumulative time (top 40; a recursive function's figure counts each level):", ""]
        lines.append(f"{'own s':>8} {'cum s':>8} {'calls':>9}  function")
        for key, row in sorted(stats.items(), key=lambda kv: -kv[1][3])[:40]:
            lines.append(f"{row[2]:8.3f} {row[3]:8.3f} {row[1]:9d}  {key[0]}:{key[1]}({key[2]})")
        out.write_text("\n".join(lines) + "\n")
        Path(f"{out}.json").write_text(
            json.dumps({"profiler": self.name, "clock": "thread CPU", **_shares(self.by_area(stats))})
        )


class PyinstrumentEngine:
    """pyinstrument in every thread (wall time); waits are left out of the areas."""

    name = "pyinstrument"

    def __init__(self) -> None:
        self.profilers: list[Any] = []
        self.lock = threading.Lock()

    def begin(self) -> Any:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="disabled")
        with self.lock:
            self.profilers.append(profiler)
        profiler.start()
        return profiler

    def end(self, handle: Any) -> None:
        if handle.is_running:
            handle.stop()

    def snapshot(self) -> dict[int, list[tuple[list[str], float]]]:
        found = {}
        with self.lock:
            profilers = list(self.profilers)
        for profiler in profilers:
            records = list(profiler.last_session.frame_records) if profiler.last_session is not None else []
            active = getattr(profiler, "_active_session", None)  # a thread still running
            if active is not None:
                records += list(active.frame_records)
            found[id(profiler)] = records
        return found

    @staticmethod
    def window(after: dict[int, list[Any]], before: dict[int, list[Any]]) -> dict[int, list[Any]]:
        return {key: records[len(before.get(key, [])) :] for key, records in after.items()}

    def report(self, out: Path, stats: dict[int, list[tuple[list[str], float]]]) -> None:
        from pyinstrument.renderers import ConsoleRenderer
        from pyinstrument.session import Session

        records = [record for found in stats.values() for record in found]
        seconds: dict[str, float] = defaultdict(float)
        for frames, spent in records:
            found = _sample_area(frames)
            if found is not None:
                seconds[found] += spent
        Path(f"{out}.json").write_text(
            json.dumps({"profiler": self.name, "clock": "wall, waits left out", **_shares(seconds)})
        )
        try:
            session = Session(
                frame_records=records,
                start_time=time.time(),
                duration=sum(spent for _frames, spent in records),
                min_interval=0.001,
                max_interval=0.001,
                sample_count=len(records),
                start_call_stack=[records[0][0][0]] if records and records[0][0] else [],
                target_description="every thread, in the window",
                cpu_time=time.process_time(),
                sys_path=sys.path,
                sys_prefixes=Session.current_sys_prefixes(),
            )
            text = ConsoleRenderer(unicode=False, color=False, show_all=False).render(session)
        except Exception as exc:  # the tree is a bonus: the areas above are the figures
            text = f"pyinstrument could not render the threads' combined tree: {exc!r}\n"
        out.write_text(text)


def _sample_area(frames: list[str]) -> str | None:
    """The area of one pyinstrument sample (``None`` for a wait); a C function counts in its caller's area."""
    names = [frame.split("\x01")[0].split("\x00") for frame in frames]
    if not names or names[-1][0].rsplit(".", 1)[-1] in WAITS:
        return None
    for name in reversed(names):
        if len(name) > 1 and name[1] != "<built-in>":
            return area(name[1])
    return OTHER


Engine = CProfileEngine | PyinstrumentEngine


def engine_for(choice: str) -> Engine:
    if choice == "pyinstrument" or (choice == "auto" and importlib.util.find_spec("pyinstrument") is not None):
        return PyinstrumentEngine()
    return CProfileEngine()


class Window:
    """Snapshots taken when ``OUT.start`` and ``OUT.stop`` appear, and the report at exit."""

    def __init__(self, engine: Engine, out: Path) -> None:
        self.engine = engine
        self.out = out
        self.start: Any = None
        self.stop: Any = None
        self.done = threading.Event()
        # Started before the profiler is installed: the watcher itself is never profiled.
        self.thread = threading.Thread(target=self._watch, name="profile-window", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        start, stop = Path(f"{self.out}.start"), Path(f"{self.out}.stop")
        while not self.done.wait(0.05):
            if self.start is None and start.exists():
                self.start = self._snapshot()
            if self.start is not None and self.stop is None and stop.exists():
                self.stop = self._snapshot()
                return

    def _snapshot(self) -> Any:
        """A snapshot, retried: reading a profile while its thread updates it can fail now and then."""
        for attempt in range(20):
            try:
                return self.engine.snapshot()
            except Exception as exc:  # the watcher's edge: say so, try again
                print(f"profiled.py: snapshot failed ({attempt + 1}/20): {exc!r}", file=sys.stderr, flush=True)
                time.sleep(0.05)
        return None

    def report(self) -> None:
        self.done.set()
        after = self.stop if self.stop is not None else self.engine.snapshot()
        stats = self.engine.window(after, self.start) if self.start is not None else after
        self.engine.report(self.out, stats)  # type: ignore[arg-type]


def install(engine: Engine) -> None:
    """Profile every thread started from now on."""
    original: Callable[[threading.Thread], None] = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def bootstrap(thread: threading.Thread) -> None:
        handle = engine.begin()
        try:
            original(thread)
        finally:
            engine.end(handle)

    threading.Thread._bootstrap_inner = bootstrap  # type: ignore[attr-defined]


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="The text report (FILE.json: time by area).")
    parser.add_argument("--profiler", choices=("auto", "cprofile", "pyinstrument"), default="auto")
    options = parser.parse_args(args[:split])
    program = args[split + 1 :]
    if not program:
        parser.error("name the program after --: -m MODULE ARGS, or SCRIPT ARGS")
    engine = engine_for(options.profiler)
    window = Window(engine, options.out)
    install(engine)
    main_handle = engine.begin()

    def finish() -> None:
        engine.end(main_handle)
        window.report()

    atexit.register(finish)
    if program[0] == "-m":
        sys.argv = [program[1], *program[2:]]
        runpy.run_module(program[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(program)
        runpy.run_path(program[0], run_name="__main__")


if __name__ == "__main__":
    main()
