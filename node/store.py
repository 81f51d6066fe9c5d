"""The encrypted record store: one SQLite (WAL) file, every path and value sealed with XChaCha20-Poly1305.

What is on disk, per record row: the space name ("data" or "node"), a keyed hash of space+path (the index), the
version, `pblob` = seal(kind + path) and `vblob` = seal(kind + DAG-CBOR value). Both seals carry as associated data
the space, the keyed hash and the version, so a flipped byte, a row moved to another path or space, or an edited
version number fails authentication on read. Nothing else about a record is stored: no path, no value in clear.

Rollback. A single row replaced by an older, validly sealed copy of itself would still authenticate, so the store
also keeps a sealed head: the XOR of a keyed PRF over (space, hash, version) of every row, updated in the same
transaction as each write. `open()` (and `verify()`) recompute it from the rows; any row older, newer, missing or
added relative to the head is detected. Limits, by design:
- Detection of a rolled-back row happens when the store is opened or verified, not on every `get` (that would cost
  a scan per read); a process that has the store open keeps serving until it next verifies.
- A rollback of the WHOLE file set (db + WAL) to an earlier consistent snapshot cannot be detected from the files
  alone; that needs a trusted counter outside them (a peer replica, later).
- Sizes leak: ciphertext lengths reveal approximate value and path lengths, and the row count and versions
  (how often each record changed) are visible.
Durability: WAL with synchronous=FULL and one transaction per write, so a write is on disk when `put` returns.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.crypto import IntegrityError, derive_key, keyed_hash, seal, unseal
from protocol import dagcbor
from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import validate_path, validate_prefix

MAX_VALUE_SIZE = 1 << 20
SPACES = ("data", "node")
BUSY_TIMEOUT_S = 30.0

_VALUE = b"\x01"
_TOMBSTONE = b"\x00"
_HEAD_AD = b"mydata-store-head/1"
_ZERO = bytes(32)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_records (
    space TEXT NOT NULL,
    hkey BLOB NOT NULL,
    version INTEGER NOT NULL,
    pblob BLOB NOT NULL,
    vblob BLOB NOT NULL,
    PRIMARY KEY (space, hkey)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    blob BLOB NOT NULL
);
"""


class StoreIntegrityError(IntegrityError):
    """Stored bytes failed authentication: tampered, swapped between records, rolled back, or a damaged file."""


@dataclass(frozen=True)
class Record:
    path: str
    value: Any
    version: int


def encode_value(value: Any) -> bytes:
    """The record value codec (DAG-CBOR); refuses values that cannot be stored or exceed 1 MiB."""
    try:
        data = dagcbor.encode(value)
    except ProtocolError as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"this value cannot be stored: {exc.message}") from None
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"this value cannot be stored: {exc}") from None
    if len(data) > MAX_VALUE_SIZE:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"the value is {len(data)} bytes encoded; a record holds at most {MAX_VALUE_SIZE}"
        )
    return data


def decode_value(data: bytes) -> Any:
    """Decode a value this store encoded and then authenticated on read.

    The strict decoder's canonical re-encode check is skipped: the bytes were produced by `encode_value` and
    cannot have changed since (the AEAD tag proves it), and the check would double the cost of every read.
    """
    return dagcbor.decode_trusted(data)


def _check_space(space: str) -> bytes:
    if space not in SPACES:
        raise ValueError(f"unknown store space {space!r}")
    return space.encode()


class Store:
    def __init__(self, conn: sqlite3.Connection, store_key: bytes) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._index_key = derive_key(store_key, "store/index")
        self._record_key = derive_key(store_key, "store/record")
        self._head_key = derive_key(store_key, "store/head")
        self._acc_key = derive_key(store_key, "store/acc")
        self._head_seen: tuple[bytes | None, bytes] = (None, _ZERO)

    @classmethod
    def open(cls, db_path, store_key: bytes, *, busy_timeout: float = BUSY_TIMEOUT_S) -> "Store":
        """Open (creating if absent) and verify the store; StoreIntegrityError if it was tampered or rolled back."""
        if len(store_key) != 32:
            raise ValueError("the store key must be 32 bytes")
        try:
            conn = sqlite3.connect(
                str(Path(db_path)), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"cannot open the store at {db_path}: {exc}") from None
        store = cls(conn, store_key)
        try:
            with store._lock, store._errors():
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                # Sorting and temporary tables stay in memory, never in an unencrypted temp file.
                conn.execute("PRAGMA temp_store = MEMORY")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    if conn.execute("SELECT 1 FROM store_head").fetchone() is None:
                        if conn.execute("SELECT 1 FROM store_records LIMIT 1").fetchone() is not None:
                            raise StoreIntegrityError("the store's integrity head is missing: the database was tampered with")
                        store._write_head(_ZERO)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            store.verify()
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the API ----------------------------------------------------------------------------------------------

    def put(self, path: str, value, *, if_version: int | None = None, space: str = "data") -> int:
        """Write `value`; return the new version. `if_version`: None any, 0 only if absent, N only if current is N."""
        sp = _check_space(space)
        validate_path(path)
        if if_version is not None and (type(if_version) is not int or if_version < 0):
            raise ProtocolError(ErrorCode.MALFORMED, "the expected version must be a whole number of at least 0")
        data = encode_value(value)
        with self._lock, self._errors(), self._write():
            hkey = self._hkey(sp, path)
            old_version, live, acc = self._current(sp, hkey, path)
            current = old_version if live else 0
            if if_version is not None and if_version != current:
                if current:
                    msg = f"{path} is at version {current}, not {if_version}"
                else:
                    msg = f"{path} does not exist, so it is not at version {if_version}"
                raise ProtocolError(ErrorCode.CONFLICT, msg)
            return self._store_row(sp, hkey, path, old_version, acc, _VALUE, data)

    def get(self, path: str, *, space: str = "data") -> Record:
        sp = _check_space(space)
        validate_path(path)
        hkey = self._hkey(sp, path)
        with self._lock, self._errors():
            row = self._conn.execute(
                "SELECT version, vblob FROM store_records WHERE space = ? AND hkey = ?", (space, hkey)
            ).fetchone()
        if row is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"there is no record at {path}")
        version, vblob = row
        plain = self._unseal(vblob, self._ad(sp, hkey, version, b"v"), path)
        if plain[:1] == _TOMBSTONE:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"there is no record at {path} (it was deleted)")
        try:
            value = decode_value(plain[1:])
        except ProtocolError:
            raise StoreIntegrityError(f"the record at {path} decrypted but does not decode") from None
        return Record(path, value, version)

    def list(self, prefix: str = "", *, space: str = "data") -> list[tuple[str, int]]:
        """(path, version) of every live record under `prefix`, sorted by path."""
        sp = _check_space(space)
        validate_prefix(prefix)
        with self._lock, self._errors():
            rows = self._conn.execute(
                "SELECT hkey, version, pblob FROM store_records WHERE space = ?", (space,)
            ).fetchall()
        out = []
        for hkey, version, pblob in rows:
            plain = self._unseal(pblob, self._ad(sp, hkey, version, b"p"), None)
            if plain[:1] == _VALUE:
                path = plain[1:].decode()
                if path.startswith(prefix):
                    out.append((path, version))
        out.sort()
        return out

    def delete(self, path: str, *, space: str = "data") -> None:
        """Replace the record with a tombstone, so a later write continues its version count."""
        sp = _check_space(space)
        validate_path(path)
        with self._lock, self._errors(), self._write():
            hkey = self._hkey(sp, path)
            old_version, live, acc = self._current(sp, hkey, path)
            if not live:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"there is no record at {path}")
            self._store_row(sp, hkey, path, old_version, acc, _TOMBSTONE, b"")

    def verify(self) -> int:
        """Recompute the head from every row; StoreIntegrityError if a row was rolled back, added or removed.

        Returns the number of rows (tombstones included). Cost: one keyed hash per row, no decryption.
        """
        with self._lock, self._errors():
            self._conn.execute("BEGIN")  # one read snapshot for the rows and the head
            try:
                head = self._read_head()
                acc = _ZERO
                count = 0
                for space, hkey, version in self._conn.execute("SELECT space, hkey, version FROM store_records"):
                    if space not in SPACES:
                        raise StoreIntegrityError("the store holds a row in an unknown space: it was tampered with")
                    acc = _xor(acc, self._mark(space.encode(), hkey, version))
                    count += 1
            finally:
                self._conn.execute("COMMIT")
        if acc != head:
            raise StoreIntegrityError(
                "the store failed its integrity check: records were rolled back, removed or added outside the node"
            )
        return count

    # -- internals --------------------------------------------------------------------------------------------

    def _hkey(self, sp: bytes, path: str) -> bytes:
        return keyed_hash(self._index_key, sp + b"\x00" + path.encode())

    @staticmethod
    def _ad(sp: bytes, hkey: bytes, version: int, part: bytes) -> bytes:
        return b"mydata-record/1\x00" + sp + b"\x00" + hkey + version.to_bytes(8, "big") + part

    def _mark(self, sp: bytes, hkey: bytes, version: int) -> bytes:
        return keyed_hash(self._acc_key, sp + b"\x00" + hkey + version.to_bytes(8, "big"))

    def _unseal(self, blob: bytes, ad: bytes, path: str | None) -> bytes:
        try:
            return unseal(self._record_key, blob, ad)
        except IntegrityError:
            where = f"the record at {path}" if path else "a record"
            raise StoreIntegrityError(
                f"{where} failed its integrity check (tampered, swapped or rolled back on disk)"
            ) from None

    def _current(self, sp: bytes, hkey: bytes, path: str) -> tuple[int, bool, bytes]:
        """(version, live, head) for `path` inside a write transaction, all authenticated; version 0 if never written."""
        row = self._conn.execute(
            "SELECT h.blob, r.version, r.pblob FROM store_head AS h "
            "LEFT JOIN store_records AS r ON r.space = ? AND r.hkey = ? WHERE h.id = 1",
            (sp.decode(), hkey),
        ).fetchone()
        if row is None:
            raise StoreIntegrityError("the store's integrity head is missing: the database was tampered with")
        head_blob, version, pblob = row
        acc = self._open_head(head_blob)
        if version is None:
            return 0, False, acc
        plain = self._unseal(pblob, self._ad(sp, hkey, version, b"p"), path)
        return version, plain[:1] == _VALUE, acc

    def _store_row(
        self, sp: bytes, hkey: bytes, path: str, old_version: int, acc: bytes, kind: bytes, data: bytes
    ) -> int:
        version = old_version + 1
        pblob = seal(self._record_key, kind + path.encode(), self._ad(sp, hkey, version, b"p"))
        vblob = seal(self._record_key, kind + data, self._ad(sp, hkey, version, b"v"))
        if old_version:
            acc = _xor(acc, self._mark(sp, hkey, old_version))
        acc = _xor(acc, self._mark(sp, hkey, version))
        self._conn.execute(
            "INSERT INTO store_records (space, hkey, version, pblob, vblob) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (space, hkey) DO UPDATE SET version = excluded.version, pblob = excluded.pblob, "
            "vblob = excluded.vblob",
            (sp.decode(), hkey, version, pblob, vblob),
        )
        self._write_head(acc)
        return version

    def _read_head(self) -> bytes:
        row = self._conn.execute("SELECT blob FROM store_head WHERE id = 1").fetchone()
        if row is None:
            raise StoreIntegrityError("the store's integrity head is missing: the database was tampered with")
        return self._open_head(row[0])

    def _open_head(self, blob: bytes) -> bytes:
        # The head changes only when someone writes; bytes equal to a blob already authenticated need no unseal.
        if blob == self._head_seen[0]:
            return self._head_seen[1]
        try:
            plain = unseal(self._head_key, blob, _HEAD_AD)
        except IntegrityError:
            raise StoreIntegrityError(
                "the store's integrity head does not authenticate: the database was tampered with or the key is wrong"
            ) from None
        if len(plain) != 32:
            raise StoreIntegrityError("the store's integrity head is malformed")
        self._head_seen = (blob, plain)
        return plain

    def _write_head(self, acc: bytes) -> None:
        blob = seal(self._head_key, acc, _HEAD_AD)
        self._conn.execute("INSERT OR REPLACE INTO store_head (id, blob) VALUES (1, ?)", (blob,))
        self._head_seen = (blob, acc)

    def _write(self):
        return _Transaction(self._conn)

    def _errors(self):
        return _SqliteErrors()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: one write transaction, taken up front so concurrent writers queue."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


class _SqliteErrors:
    """Turn SQLite failures into the store's own errors, each one sentence."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or not issubclass(exc_type, sqlite3.Error):
            return False
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, "the store is locked by another process; try again when it has finished"
            ) from None
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
            raise StoreIntegrityError(f"the store database file is damaged ({text})") from None
        if isinstance(exc, sqlite3.OperationalError) and ("disk" in text or "full" in text or "readonly" in text):
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"the store cannot write to disk: {text}") from None
        return False


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(32, "big")
