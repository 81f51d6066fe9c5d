"""The encrypted store's semantics (PROTOCOL.md §4), its limits, and its record codec."""

import math
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.crypto import random_key
from node.store import MAX_VALUE_SIZE, Record, Store, decode_value, encode_value
from protocol.errors import ErrorCode, ProtocolError


def code_of(fn, *args, **kw):
    with pytest.raises(ProtocolError) as exc:
        fn(*args, **kw)
    return exc.value.code


def test_versions_start_at_one_and_count_writes(store):
    assert store.put("cv/basics", {"name": "Ada"}) == 1
    assert store.put("cv/basics", {"name": "Ada L."}) == 2
    assert store.get("cv/basics") == Record("cv/basics", {"name": "Ada L."}, 2)


def test_compare_and_set(store):
    assert store.put("a/b", 1, if_version=0) == 1
    assert code_of(store.put, "a/b", 2, if_version=0) is ErrorCode.CONFLICT
    assert code_of(store.put, "a/b", 2, if_version=2) is ErrorCode.CONFLICT
    assert store.put("a/b", 2, if_version=1) == 2
    assert code_of(store.put, "a/c", 1, if_version=1) is ErrorCode.CONFLICT
    assert store.get("a/b").value == 2


def test_delete_leaves_a_tombstone_and_the_count_continues(store):
    store.put("x", "one")
    store.put("x", "two")
    store.delete("x")
    assert code_of(store.get, "x") is ErrorCode.NOT_FOUND
    assert code_of(store.delete, "x") is ErrorCode.NOT_FOUND
    assert store.list() == []
    assert code_of(store.put, "x", "three", if_version=2) is ErrorCode.CONFLICT
    assert store.put("x", "three", if_version=0) == 4
    assert store.get("x") == Record("x", "three", 4)


def test_absent_records(store):
    assert code_of(store.get, "nope") is ErrorCode.NOT_FOUND
    assert code_of(store.delete, "nope") is ErrorCode.NOT_FOUND


def test_list_by_prefix_sorted_whole_segments(store):
    for p in ["cv/work/b", "cv/basics", "cvx/a", "cv/work/a", "notes"]:
        store.put(p, p)
    store.put("cv/work/b", "again")
    assert store.list() == [("cv/basics", 1), ("cv/work/a", 1), ("cv/work/b", 2), ("cvx/a", 1), ("notes", 1)]
    assert store.list("cv/") == [("cv/basics", 1), ("cv/work/a", 1), ("cv/work/b", 2)]
    assert store.list("cv/work/") == [("cv/work/a", 1), ("cv/work/b", 2)]
    assert store.list("zzz/") == []


def test_spaces_are_separate(store):
    store.put("inbox/1", "node state", space="node")
    store.put("inbox/1", "user data")
    assert store.get("inbox/1", space="node").value == "node state"
    assert store.get("inbox/1").value == "user data"
    store.delete("inbox/1")
    assert store.list(space="node") == [("inbox/1", 1)]
    with pytest.raises(ValueError):
        store.put("a", 1, space="other")


@pytest.mark.parametrize("bad", ["", "/a", "a/", "A", "a//b", "a/../b", 5, None])
def test_invalid_paths_are_malformed(store, bad):
    assert code_of(store.put, bad, 1) is ErrorCode.MALFORMED
    assert code_of(store.get, bad) is ErrorCode.MALFORMED
    assert code_of(store.delete, bad) is ErrorCode.MALFORMED


@pytest.mark.parametrize("bad", ["cv", "/", "cv//", 3])
def test_invalid_prefixes_are_malformed(store, bad):
    assert code_of(store.list, bad) is ErrorCode.MALFORMED


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_invalid_expected_version(store, bad):
    assert code_of(store.put, "a", 1, if_version=bad) is ErrorCode.MALFORMED


@pytest.mark.parametrize("bad", [{1, 2}, math.nan, math.inf, {1: "int key"}, object(), 2**64])
def test_values_outside_the_data_model_are_refused(store, bad):
    assert code_of(store.put, "a", bad) is ErrorCode.MALFORMED
    assert store.list() == []


def test_value_size_limit(store):
    at_limit = "x" * (MAX_VALUE_SIZE - 5)  # a text head of 5 bytes for lengths of 64 KiB and more
    assert len(encode_value(at_limit)) == MAX_VALUE_SIZE
    assert store.put("big", at_limit) == 1
    assert store.get("big").value == at_limit
    assert code_of(store.put, "big", at_limit + "x") is ErrorCode.TOO_LARGE
    assert store.get("big").version == 1


def test_records_persist_across_reopen(tmp_path, store_key):
    with Store.open(tmp_path / "db", store_key) as s:
        s.put("cv/basics", {"name": "Grace"})
        s.put("cv/skills/python", ["x"])
        s.delete("cv/skills/python")
    with Store.open(tmp_path / "db", store_key) as s:
        assert s.get("cv/basics").value == {"name": "Grace"}
        assert s.put("cv/skills/python", [], if_version=0) == 3
        assert s.verify() == 2


def test_locked_store_gives_a_clear_unavailable_error(tmp_path, store_key):
    Store.open(tmp_path / "db", store_key).close()
    locker = sqlite3.connect(tmp_path / "db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ProtocolError) as exc:
            Store.open(tmp_path / "db", store_key, busy_timeout=0.05)
        assert exc.value.code is ErrorCode.UNAVAILABLE and "locked" in exc.value.message
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    with Store.open(tmp_path / "db", store_key, busy_timeout=0.05) as s:
        locker = sqlite3.connect(tmp_path / "db", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            assert code_of(s.put, "a", 1) is ErrorCode.UNAVAILABLE
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert s.put("a", 1) == 1


def test_durability_pragmas(store):
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


# -- property tests ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
segment = st.from_regex(r"[a-z0-9._-]{1,10}", fullmatch=True).filter(lambda s: s not in (".", ".."))
paths = st.lists(segment, min_size=1, max_size=4).map("/".join)


@given(json_values)
def test_record_codec_round_trip(value):
    data = encode_value(value)
    assert decode_value(data) == value
    assert encode_value(decode_value(data)) == data


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["put", "put", "cas", "delete"]), paths, json_values), max_size=12))
def test_store_matches_a_model(tmp_path_factory, ops):
    db = tmp_path_factory.mktemp("model") / "db"
    model: dict[str, tuple[object, int]] = {}
    counts: dict[str, int] = {}
    with Store.open(db, random_key()) as s:
        for op, path, value in ops:
            live = path in model
            if op == "put":
                counts[path] = counts.get(path, 0) + 1
                assert s.put(path, value) == counts[path]
                model[path] = (value, counts[path])
            elif op == "cas":
                expected = model[path][1] if live else 0
                counts[path] = counts.get(path, 0) + 1
                assert s.put(path, value, if_version=expected) == counts[path]
                model[path] = (value, counts[path])
            elif live:
                s.delete(path)
                counts[path] += 1
                del model[path]
            else:
                assert code_of(s.delete, path) is ErrorCode.NOT_FOUND
        assert s.list() == sorted((p, v) for p, (_, v) in model.items())
        for p, (value, version) in model.items():
            assert s.get(p) == Record(p, value, version)
        assert s.verify() == len(counts)


def test_links_and_bytes_round_trip_through_the_store(store):
    from protocol.cid import CID

    cid = CID.of_dagcbor(b"\xa0")
    value = {"grant": cid, "raw": b"\x00\x01envelope", "list": [cid]}
    store.put("grants/1", value, space="node")
    assert store.get("grants/1", space="node").value == value
