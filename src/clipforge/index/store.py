"""Index metadata in SQLite: one row per indexed image (id = FAISS row), plus what was skipped and why.

Readers open the file read-only, one connection per thread (the web service answers from a thread pool).
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,      -- the vector's row in the FAISS index
    path TEXT NOT NULL,          -- absolute path of the image file
    caption TEXT,
    width INTEGER, height INTEGER,
    bytes INTEGER,
    sha256 TEXT NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
CREATE TABLE IF NOT EXISTS skipped (item TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
"""


@dataclass
class Record:
    id: int
    path: str
    caption: str | None
    width: int | None
    height: int | None
    bytes: int | None
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


COLUMNS = "id, path, caption, width, height, bytes, sha256"
MAX_ID = 2 ** 63 - 1  # SQLite's largest INTEGER: a larger id is in no index (and would overflow the driver)


class MetaStore:
    def __init__(self, path: str | Path, readonly: bool = True):
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        if not readonly:
            with self._conn() as c:
                c.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            else:
                conn = sqlite3.connect(str(self.path), check_same_thread=False)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def get(self, ids) -> dict[int, Record]:
        ids = [i for i in (int(i) for i in ids) if 0 <= i <= MAX_ID]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._conn().execute(f"SELECT {COLUMNS} FROM images WHERE id IN ({marks})", ids).fetchall()
        return {r[0]: Record(*r) for r in rows}

    def by_hash(self, hashes) -> dict[str, int]:
        out, hashes = {}, list(hashes)
        for s in range(0, len(hashes), 500):
            chunk = hashes[s:s + 500]
            q = f"SELECT sha256, id FROM images WHERE sha256 IN ({','.join('?' * len(chunk))})"
            out.update(dict(self._conn().execute(q, chunk).fetchall()))
        return out

    def skipped(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self._conn().execute("SELECT item, reason FROM skipped ORDER BY rowid")]

    def insert(self, records: list[Record], skipped: list[tuple[str, str]] = ()) -> None:
        now = time.time()
        with self._conn() as c:
            c.executemany(f"INSERT INTO images ({COLUMNS}, added) VALUES (?,?,?,?,?,?,?,?)",
                          [(*asdict(r).values(), now) for r in records])
            c.executemany("INSERT INTO skipped (item, reason, at) VALUES (?,?,?)", [(i, r, now) for i, r in skipped])
