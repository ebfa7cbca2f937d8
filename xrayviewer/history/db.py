"""Every analysis (GUI, CLI, batch) recorded in a local SQLite database.

- WAL journal + busy timeout: safe with several writers (a batch and the GUI at once).
- ``PRAGMA user_version`` holds the schema version; migrations run in order, in a
  transaction, so a crash mid-migration leaves the previous version intact.
- A database that fails its integrity check is renamed aside (``*.corrupt-<time>``) and
  reported through ``History.recovered_from``; it is never silently wiped.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_text

log = logging.getLogger(__name__)

ENV_HISTORY = "XRAYVIEWER_HISTORY_DB"

MIGRATIONS: tuple[str, ...] = (
    # v1
    """
    CREATE TABLE analyses (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        origin TEXT NOT NULL,
        input_path TEXT NOT NULL,
        input_sha256 TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        predicted_class TEXT,
        prob_normal REAL, prob_covid19 REAL, prob_other_pneumonia REAL,
        involvement_total_pct REAL,
        severity TEXT,
        models TEXT,
        record_json TEXT NOT NULL
    );
    CREATE INDEX analyses_sha ON analyses(input_sha256);
    CREATE INDEX analyses_time ON analyses(created_at);
    """,
    # v2: report files written for an analysis
    """
    ALTER TABLE analyses ADD COLUMN report_paths TEXT NOT NULL DEFAULT '[]';
    """,
    # v3: the tuberculosis score (NULL for older analyses and installations without the model)
    """
    ALTER TABLE analyses ADD COLUMN prob_tuberculosis REAL;
    ALTER TABLE analyses ADD COLUMN tb_positive INTEGER;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

EXPORT_COLUMNS = ("id", "created_at", "origin", "input_path", "input_sha256", "status", "reason", "predicted_class",
                  "prob_normal", "prob_covid19", "prob_other_pneumonia", "involvement_total_pct", "severity",
                  "models", "report_paths", "prob_tuberculosis", "tb_positive")


def _bool_or_none(value: Any) -> bool | None:
    """A stored flag (bool, 0/1, "True"/"False" from a CSV row) as a bool; None when absent.
    (``inference.result.record_flag`` reads the same text; the history room imports no
    inference, and it keeps "absent" apart from False.)"""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def default_history_path() -> Path:
    env = os.environ.get(ENV_HISTORY)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("xrayviewer", appauthor=False)) / "history.sqlite3"


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    created_at: str
    origin: str
    input_path: str
    input_sha256: str
    status: str
    reason: str | None
    predicted_class: str | None
    prob_covid19: float | None
    involvement_total_pct: float | None
    severity: str | None
    models: str | None
    report_paths: tuple[str, ...]
    record: dict[str, Any]
    prob_tuberculosis: float | None = None
    tb_positive: bool | None = None


class NewerSchemaError(RuntimeError):
    """The database was written by a newer xrayviewer. Not damage: it is left as it is (never
    moved aside), and this version keeps no history until the newer one is used again."""


class History:
    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_history_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.recovered_from: Path | None = None
        self._local = threading.local()
        self._open_checked()

    # ------------------------------------------------------------------ connection
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _open_checked(self) -> None:
        try:
            conn = self._connect()
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {ok}")
            try:
                self._migrate(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.replace(Path(str(aside) + suffix))
            self.recovered_from = aside
            log.error("history database %s was unreadable (%s); it was kept as %s and a new one started",
                      self.path, exc, aside)
            conn = self._connect()
            self._migrate(conn)
            conn.close()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise NewerSchemaError(f"history schema v{version} is newer than this xrayviewer (v{SCHEMA_VERSION}): "
                                   "left untouched, no history is kept by this version")
        for v in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current == v:  # another process may have migrated meanwhile
                    for stmt in [s.strip() for s in MIGRATIONS[v].split(";") if s.strip()]:
                        conn.execute(stmt)
                    conn.execute(f"PRAGMA user_version = {v + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @property
    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ writing
    def record(self, record: dict[str, Any], *, origin: str, report_paths: Sequence[str] = ()) -> int:
        """Store one analysis row (the CSV/JSON record of the result); returns its id."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        cur = self._conn().execute(
            "INSERT INTO analyses (created_at, origin, input_path, input_sha256, status, reason, predicted_class,"
            " prob_normal, prob_covid19, prob_other_pneumonia, involvement_total_pct, severity, models, record_json,"
            " report_paths, prob_tuberculosis, tb_positive) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (now, origin, str(record.get("path", "")), str(record.get("input_sha256") or ""),
             str(record.get("status", "")), record.get("reason") or None, record.get("predicted_class") or None,
             record.get("prob_normal"), record.get("prob_covid19"), record.get("prob_other_pneumonia"),
             record.get("involvement_total_pct"), record.get("severity") or None, record.get("models") or None,
             json.dumps(record, default=str), json.dumps(list(report_paths)), record.get("prob_tuberculosis"),
             _bool_or_none(record.get("tb_positive"))),
        )
        return int(cur.lastrowid)

    def add_report(self, entry_id: int, path: str) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT report_paths FROM analyses WHERE id = ?", (entry_id,)).fetchone()
            paths = json.loads(row["report_paths"]) if row else []
            paths.append(path)
            conn.execute("UPDATE analyses SET report_paths = ? WHERE id = ?", (json.dumps(paths), entry_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ reading
    def entries(self, *, search: str | None = None, limit: int | None = 200) -> list[HistoryEntry]:
        sql = "SELECT * FROM analyses"
        args: list[Any] = []
        if search:
            sql += " WHERE input_path LIKE ? OR predicted_class LIKE ? OR status LIKE ? OR severity LIKE ?"
            args += [f"%{search}%"] * 4
        sql += " ORDER BY id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._entry(r) for r in self._conn().execute(sql, args)]

    def get(self, entry_id: int) -> HistoryEntry | None:
        row = self._conn().execute("SELECT * FROM analyses WHERE id = ?", (entry_id,)).fetchone()
        return self._entry(row) if row else None

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM analyses").fetchone()[0])

    @staticmethod
    def _entry(row: sqlite3.Row) -> HistoryEntry:
        return HistoryEntry(
            id=row["id"], created_at=row["created_at"], origin=row["origin"], input_path=row["input_path"],
            input_sha256=row["input_sha256"], status=row["status"], reason=row["reason"],
            predicted_class=row["predicted_class"], prob_covid19=row["prob_covid19"],
            involvement_total_pct=row["involvement_total_pct"], severity=row["severity"], models=row["models"],
            report_paths=tuple(json.loads(row["report_paths"] or "[]")), record=json.loads(row["record_json"]),
            prob_tuberculosis=row["prob_tuberculosis"], tb_positive=_bool_or_none(row["tb_positive"]),
        )

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        for r in self._conn().execute("SELECT * FROM analyses ORDER BY id"):
            yield {k: r[k] for k in EXPORT_COLUMNS}

    def export_csv(self, path: Path) -> Path:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
        w.writeheader()
        for row in self.iter_rows():
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return atomic_write_text(path, buf.getvalue())
