"""History database: records, search, export, migrations, corruption, concurrent writers, crash safety."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xrayviewer.history import History
from xrayviewer.history.db import MIGRATIONS, SCHEMA_VERSION, NewerSchemaError


def rec(i: int, status: str = "ok") -> dict:
    return {"path": f"/data/img{i}.png", "input_sha256": f"{i:064x}", "status": status, "predicted_class": "Normal",
            "prob_covid19": 0.1, "involvement_total_pct": 2.5, "severity": "mild", "models": "m@1"}


def test_record_search_and_export(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db")
    assert h.schema_version == SCHEMA_VERSION
    ids = [h.record(rec(i), origin="cli") for i in range(5)]
    h.record(rec(9, "refused") | {"predicted_class": None}, origin="gui")
    h.add_report(ids[0], "/out/r.pdf")
    assert h.count() == 6
    assert h.get(ids[0]).report_paths == ("/out/r.pdf",)
    assert [e.status for e in h.entries(search="refused")] == ["refused"]
    assert h.entries(limit=2)[0].input_path == "/data/img9.png"  # newest first
    out = h.export_csv(tmp_path / "h.csv")
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 6 and rows[0]["input_sha256"] == f"{0:064x}"


def test_migration_from_v1(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO analyses (created_at, origin, input_path, input_sha256, status, record_json)"
                 " VALUES ('t', 'cli', '/a.png', 'x', 'ok', '{}')")
    conn.commit()
    conn.close()
    h = History(db)
    assert h.schema_version == SCHEMA_VERSION
    assert h.entries()[0].report_paths == ()


def test_migration_from_v2_adds_the_tuberculosis_columns(tmp_path: Path) -> None:
    """A database written before the TB head: its rows survive with no TB score; new rows carry it."""
    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1])
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO analyses (created_at, origin, input_path, input_sha256, status, record_json)"
                 " VALUES ('t', 'cli', '/old.png', 'x', 'ok', '{}')")
    conn.commit()
    conn.close()
    h = History(db)
    assert h.schema_version == SCHEMA_VERSION == 3
    old = h.entries()[0]
    assert old.input_path == "/old.png" and old.prob_tuberculosis is None and old.tb_positive is None
    new = h.record(rec(1) | {"prob_tuberculosis": 0.91, "tb_positive": True}, origin="cli")
    h.record(rec(2) | {"prob_tuberculosis": 0.12, "tb_positive": "False"}, origin="batch")  # a CSV row's text
    assert h.get(new).prob_tuberculosis == 0.91 and h.get(new).tb_positive is True
    assert h.entries(limit=1)[0].tb_positive is False
    with open(h.export_csv(tmp_path / "h.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-2:] == ["prob_tuberculosis", "tb_positive"]
    assert [r["tb_positive"] for r in rows] == ["", "1", "0"]


def test_corrupt_database_is_set_aside_not_wiped(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    db.write_bytes(b"this is not a database" * 100)
    h = History(db)
    assert h.recovered_from is not None and h.recovered_from.exists()
    assert h.recovered_from.read_bytes().startswith(b"this is not a database")
    assert h.count() == 0
    h.record(rec(1), origin="cli")
    assert h.count() == 1


def _writer(path: str, start: int, n: int) -> None:
    h = History(Path(path))
    for i in range(start, start + n):
        h.record(rec(i), origin="batch")


def test_concurrent_writers(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    History(db)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), k * 1000, 60)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    h = History(db)
    assert h.count() == 240
    assert len({e.input_sha256 for e in h.entries(limit=None)}) == 240


def test_survives_a_kill_between_writes(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    History(db)
    code = ("import sys; from pathlib import Path; from xrayviewer.history import History;"
            "h = History(Path(sys.argv[1]));\n"
            "i = 0\n"
            "while True:\n"
            "    h.record({'path': str(i), 'input_sha256': str(i), 'status': 'ok'}, origin='cli'); i += 1\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)])
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    h = History(db)
    assert h.recovered_from is None
    n = h.count()
    assert n > 0
    paths = [e.input_path for e in h.entries(limit=None)]
    assert sorted(map(int, paths)) == list(range(n))  # every committed row intact, no gaps


def test_newer_schema_is_refused_not_destroyed(tmp_path: Path) -> None:
    """A database written by a newer xrayviewer is left exactly where it is (not set aside as
    if damaged: the newer version must find its history when it runs again); this version
    says so and keeps no history."""
    db = tmp_path / "h.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE x (a)")
    conn.execute("INSERT INTO x VALUES (42)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(NewerSchemaError, match="newer than this xrayviewer"):
        History(db)
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5
    assert conn.execute("SELECT a FROM x").fetchall() == [(42,)]
    conn.close()
