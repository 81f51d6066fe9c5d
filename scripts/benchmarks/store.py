"""`scripts/bench store`: encrypted store put/get per second against plain SQLite doing the same work.

The baseline is what the store would be without encryption: the same DAG-CBOR value in a table keyed by path, WAL,
synchronous=FULL, one BEGIN IMMEDIATE transaction per write that reads the current version and upserts. So the
ratio prices exactly the sealing, the keyed index and the rollback head. Both live in the same temporary folder.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from harness import Row, compare
from node.crypto import random_key
from node.store import Store
from protocol import dagcbor

PATHS = [f"cv/work/company-{i:03d}" for i in range(100)]
VALUE = {
    "name": "Nordlys Data AB",
    "position": "Senior backend engineer",
    "url": "https://nordlys.example.com",
    "startDate": "2021-03-01",
    "summary": "Tech lead of the storage team (5 people), personal data stores for the public sector.",
    "highlights": [
        "Designed an encrypted, append-only audit log used by 40 municipalities",
        "Cut p99 read latency from 180 ms to 35 ms",
        "Mentored four engineers",
    ],
}


class PlainSqlite:
    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute(
            "CREATE TABLE records (path TEXT PRIMARY KEY, version INTEGER NOT NULL, value BLOB NOT NULL) WITHOUT ROWID"
        )

    def put(self, path: str, value) -> int:
        data = dagcbor.encode(value)
        self.conn.execute("BEGIN IMMEDIATE")
        row = self.conn.execute("SELECT version FROM records WHERE path = ?", (path,)).fetchone()
        version = (row[0] if row else 0) + 1
        self.conn.execute(
            "INSERT INTO records (path, version, value) VALUES (?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET version = excluded.version, value = excluded.value",
            (path, version, data),
        )
        self.conn.execute("COMMIT")
        return version

    def get(self, path: str):
        version, data = self.conn.execute("SELECT version, value FROM records WHERE path = ?", (path,)).fetchone()
        return dagcbor.decode(data), version


def run(quick: bool) -> list[Row]:
    put_ops, get_ops, repeat = (30, 200, 3) if quick else (500, 5000, 9)
    with tempfile.TemporaryDirectory(prefix="mydata-bench-store-") as tmp:
        store = Store.open(Path(tmp) / "encrypted.db", random_key())
        plain = PlainSqlite(Path(tmp) / "plain.db")
        for p in PATHS:
            store.put(p, VALUE)
            plain.put(p, VALUE)

        def enc_put(n: int) -> None:
            for i in range(n):
                store.put(PATHS[i % len(PATHS)], VALUE)

        def plain_put(n: int) -> None:
            for i in range(n):
                plain.put(PATHS[i % len(PATHS)], VALUE)

        def enc_get(n: int) -> None:
            for i in range(n):
                store.get(PATHS[i % len(PATHS)])

        def plain_get(n: int) -> None:
            for i in range(n):
                plain.get(PATHS[i % len(PATHS)])

        try:
            rows = compare("encrypted put (durable)", enc_put, "plain SQLite put (WAL, synchronous=FULL)", plain_put,
                           ops=put_ops, repeat=repeat, target=0.5)
            rows += compare("encrypted get", enc_get, "plain SQLite get", plain_get, ops=get_ops, repeat=repeat,
                            target=0.5)
        finally:
            store.close()
            plain.conn.close()
    return rows
