"""Where the service's records live between restarts: nowhere (memory) or an SQLite file."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any, Protocol


class Store(Protocol):
    """Keeps records by (kind, key) as JSON documents."""

    def write(self, rows: Iterable[tuple[str, str, dict[str, Any] | None]]) -> None:
        """Upsert each (kind, key, data) row in one transaction; ``data=None`` deletes it."""

    def load(self) -> dict[str, list[dict[str, Any]]]:
        """Every stored record, grouped by kind."""

    def close(self) -> None:
        """Release the store."""


class MemoryStore:
    """The default: nothing survives a restart."""

    def write(self, rows: Iterable[tuple[str, str, dict[str, Any] | None]]) -> None:
        for _ in rows:
            pass

    def load(self) -> dict[str, list[dict[str, Any]]]:
        return {}

    def close(self) -> None:
        pass


class SqliteStore:
    """Records in one SQLite table, written through at the end of every state change.

    Args:
        path: The database file (``--state PATH``); created if missing.
    """

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL,"
            " PRIMARY KEY (kind, key))"
        )

    def write(self, rows: Iterable[tuple[str, str, dict[str, Any] | None]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for kind, key, data in rows:
                    if data is None:
                        self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
                    else:
                        self._db.execute(
                            "INSERT INTO records (kind, key, data) VALUES (?, ?, ?)"
                            " ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data",
                            (kind, key, json.dumps(data, separators=(",", ":"))),
                        )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def load(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for kind, data in self._db.execute("SELECT kind, data FROM records ORDER BY rowid"):
                out.setdefault(kind, []).append(json.loads(data))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
