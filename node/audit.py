"""The owner's audit log: append-only, hash-chained, encrypted entries in their own table of the node's SQLite file.

What it guarantees and what it cannot: see `AuditLog`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from os import PathLike

from node.crypto import KEY_SIZE, IntegrityError, derive_key, keyed_hash, seal, unseal
from protocol import dagcbor
from protocol.errors import ErrorCode, ProtocolError

# Entries hold raw invocation bytes, so they may exceed the wire's 1 MiB frame limit; we sealed them ourselves.
_MAX_ENTRY = 16 << 20
_GENESIS = bytes(32)
_ENTRY_AD = b"mydata/audit/entry/"
_HEAD_AD = b"mydata/audit/head"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_entries (
    seq  INTEGER PRIMARY KEY,
    blob BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    blob BLOB NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: int
    kind: str
    fields: dict
    entry_hash: bytes


@dataclasses.dataclass(frozen=True)
class AuditReport:
    ok: bool
    count: int  # entries verified good, in order from seq 1 (all of them when ok)
    first_bad_seq: int | None = None  # first seq that is missing, altered or unaccounted for
    reason: str = ""


def _seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


class AuditLog:
    """Append-only log of what happened to the owner's data and consents.

    Each entry is sealed (XChaCha20-Poly1305, its seq as associated data) and chained:
    `hash_n = keyed_hash(chain_key, hash_{n-1} || seq_n || ciphertext_n)`, with a key derived from the caller's
    key, so nobody without it can re-seal, re-chain or forge entries. A sealed head record (last seq and hash)
    is updated in the same transaction as each append, so deleting the newest entries is detected too.

    `verify()` detects: an edited byte anywhere in an entry or the head, a deleted entry (anywhere, including
    the newest ones), an inserted or forged entry, rows swapped or renumbered.
    It cannot detect: the whole database file (entries and head together) replaced by an older copy of itself,
    or the log wiped entirely (both tables emptied) — that looks like a fresh log. Guarding against those needs
    a counter kept outside this file.

    `append()` continues from the sealed head and refuses (IntegrityError) when the newest stored entry does not
    match it, so a truncated log is never silently extended and re-sealed.
    """

    def __init__(self, conn: sqlite3.Connection, key: bytes) -> None:
        self._conn = conn
        self._seal_key = derive_key(key, "audit-seal")
        self._chain_key = derive_key(key, "audit-chain")
        self._lock = threading.Lock()
        self._synchronous = "FULL"  # as open() sets it; switched only when an append needs the other mode
        # (data_version, seq, hash) as of this connection's last append: while no other connection has committed
        # since (SQLite's data_version is unchanged), the head need not be read and unsealed again.
        self._known_head: tuple[int, int, bytes] | None = None

    @classmethod
    def open(cls, db_path: str | PathLike, key: bytes) -> "AuditLog":
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ValueError(f"audit key must be {KEY_SIZE} bytes")
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so concurrent writers queue, not interleave.
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return cls(conn, key)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writing

    def append(self, kind: str, fields: dict, *, at: int, durable: bool = True) -> AuditEntry:
        """Seal, chain and commit one entry.

        durable=True: fsynced when this returns. durable=False (for records of reads and refusals, which change
        no data): the entry is in the WAL when this returns, so it survives a crash or SIGKILL of this process,
        and reaches the platter with the next durable commit or checkpoint; only a power cut before then can
        lose it. A disk that refuses the write is ProtocolError(Unavailable), with nothing half-written.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError("audit kind must be a non-empty string")
        if not isinstance(fields, dict):
            raise ValueError("audit fields must be a dict")
        if not isinstance(at, int) or isinstance(at, bool) or at < 0:
            raise ValueError("audit time must be a non-negative int")
        plaintext = dagcbor.encode({"at": at, "kind": kind, "fields": fields})
        with self._lock:
            try:
                self._set_synchronous("FULL" if durable else "NORMAL")
                seq, entry_hash = self._append_locked(plaintext)
            except sqlite3.Error as exc:
                raise ProtocolError(ErrorCode.UNAVAILABLE, f"the audit log cannot be written: {exc}") from None
        return AuditEntry(seq, at, kind, fields, entry_hash)

    def _set_synchronous(self, mode: str) -> None:
        # Records of reads come in runs: switching per append would cost two statements on every read.
        if mode != self._synchronous:
            self._synchronous = None  # unknown until the PRAGMA has run
            self._conn.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def _append_locked(self, plaintext: bytes) -> tuple[int, bytes]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            (data_version,) = self._conn.execute("PRAGMA data_version").fetchone()
            known = self._known_head
            self._known_head = None
            if known is not None and known[0] == data_version:
                last_seq, last_hash = known[1], known[2]
            else:  # another connection (the store's, another process) committed: read what is on disk
                last_seq, last_hash = self._head()
                row = self._conn.execute("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1").fetchone()
                newest = (row[0], bytes(row[1])) if row else (0, _GENESIS)
                if newest != (last_seq, last_hash):
                    raise IntegrityError("the audit log's newest entry does not match its head; run verify")
            seq = last_seq + 1
            blob = seal(self._seal_key, plaintext, _ENTRY_AD + _seq_bytes(seq))
            entry_hash = self._link(last_hash, seq, blob)
            self._conn.execute("INSERT INTO audit_entries (seq, blob, hash) VALUES (?, ?, ?)", (seq, blob, entry_hash))
            head = seal(self._seal_key, _seq_bytes(seq) + entry_hash, _HEAD_AD)
            self._conn.execute("INSERT OR REPLACE INTO audit_head (id, blob) VALUES (1, ?)", (head,))
            self._conn.execute("COMMIT")
            self._known_head = (data_version, seq, entry_hash)
        except BaseException:
            # A failed COMMIT (a full disk) has already rolled back; rolling back again would hide the real error.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        return seq, entry_hash

    # -- reading

    def entries(self, *, since_seq: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with seq > since_seq, oldest first. Raises IntegrityError on a tampered entry in the range."""
        if limit is not None and limit < 0:
            raise ValueError("limit must be non-negative")
        since_seq = max(since_seq, 0)
        with self._lock:
            prev = self._conn.execute("SELECT hash FROM audit_entries WHERE seq = ?", (since_seq,)).fetchone()
            rows = self._conn.execute(
                "SELECT seq, blob, hash FROM audit_entries WHERE seq > ? ORDER BY seq LIMIT ?",
                (since_seq, -1 if limit is None else limit),
            ).fetchall()
        if since_seq == 0:
            prev_hash = _GENESIS
        elif prev is not None:
            prev_hash = bytes(prev[0])
        elif rows:
            raise IntegrityError(f"audit entry {since_seq} is missing")
        expected_seq = since_seq + 1
        out = []
        for seq, blob, stored_hash in rows:
            if seq != expected_seq:
                raise IntegrityError(f"audit entry {expected_seq} is missing")
            entry = self._open_entry(seq, bytes(blob))
            entry_hash = self._link(prev_hash, seq, bytes(blob))
            if entry_hash != bytes(stored_hash):
                raise IntegrityError(f"audit entry {seq} does not chain to the one before it")
            out.append(dataclasses.replace(entry, entry_hash=entry_hash))
            expected_seq, prev_hash = seq + 1, entry_hash
        return out

    def verify(self) -> AuditReport:
        """Walk the whole chain from seq 1 and check it against the sealed head."""
        with self._lock:
            rows = self._conn.execute("SELECT seq, blob, hash FROM audit_entries ORDER BY seq").fetchall()
            head_row = self._conn.execute("SELECT blob FROM audit_head WHERE id = 1").fetchone()
        prev_hash, count = _GENESIS, 0
        for seq, blob, stored_hash in rows:
            expected = count + 1
            if seq < expected:
                return AuditReport(False, count, seq, f"entry {seq} is out of sequence: forged.")
            if seq > expected:
                return AuditReport(False, count, expected, f"entry {expected} is missing (the next stored is {seq}).")
            try:
                self._open_entry(seq, bytes(blob))
            except IntegrityError:
                return AuditReport(False, count, seq, f"entry {seq} does not authenticate: edited, moved or forged.")
            entry_hash = self._link(prev_hash, seq, bytes(blob))
            if entry_hash != bytes(stored_hash):
                return AuditReport(False, count, seq, f"entry {seq} does not chain to the entry before it.")
            prev_hash, count = entry_hash, expected

        if head_row is None:
            if count == 0:
                return AuditReport(True, 0)
            return AuditReport(False, count, count + 1, "the log's sealed head is missing.")
        try:
            head = unseal(self._seal_key, bytes(head_row[0]), _HEAD_AD)
        except IntegrityError:
            return AuditReport(False, count, count + 1, "the log's sealed head does not authenticate.")
        head_seq, head_hash = int.from_bytes(head[:8], "big"), head[8:]
        if head_seq > count:
            return AuditReport(
                False, count, count + 1, f"the log ends at entry {count} but {head_seq} were written: newest deleted."
            )
        if head_seq < count:
            return AuditReport(
                False, head_seq, head_seq + 1, f"entries after {head_seq} are not covered by the sealed head."
            )
        if head_hash != prev_hash:
            return AuditReport(False, count - 1, count, f"entry {count} is not the one the sealed head recorded.")
        return AuditReport(True, count)

    def count(self) -> int:
        """The seq of the newest entry, as the sealed head records it (entries are numbered from 1)."""
        with self._lock:
            return self._head()[0]

    # -- internals

    def _head(self) -> tuple[int, bytes]:
        row = self._conn.execute("SELECT blob FROM audit_head WHERE id = 1").fetchone()
        if row is None:
            return 0, _GENESIS
        head = unseal(self._seal_key, bytes(row[0]), _HEAD_AD)
        return int.from_bytes(head[:8], "big"), head[8:]

    def _link(self, prev_hash: bytes, seq: int, blob: bytes) -> bytes:
        return keyed_hash(self._chain_key, prev_hash + _seq_bytes(seq) + blob)

    def _open_entry(self, seq: int, blob: bytes) -> AuditEntry:
        plaintext = unseal(self._seal_key, blob, _ENTRY_AD + _seq_bytes(seq))
        try:
            obj = dagcbor.decode(plaintext, max_size=_MAX_ENTRY)
            return AuditEntry(seq, obj["at"], obj["kind"], obj["fields"], b"")
        except Exception as exc:  # authenticated yet undecodable: only a bug or a key reuse could cause it
            raise IntegrityError(f"audit entry {seq} does not decode") from exc
