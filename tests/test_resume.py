import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.resume import INDEX, export_resume, import_resume, slugify
from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import validate_path

SAMPLE = Path(__file__).parent / "data" / "resume.json"


@pytest.fixture
def sample():
    return json.loads(SAMPLE.read_text())


def test_sample_maps_to_readable_records(sample):
    records = import_resume(sample)
    assert records["cv/basics"] == sample["basics"]
    assert records["cv/meta"] == sample["meta"]
    assert records["cv/work/nordlys-data-ab-2021"] == sample["work"][0]
    assert records["cv/work/acme-logistics-2017"] == sample["work"][1]
    assert records["cv/work/acme-logistics-2017-2"] == sample["work"][2]
    assert records["cv/education/chalmers-tekniska-hogskola-2014"] == sample["education"][0]
    assert records["cv/languages/swedish"] == sample["languages"][0]
    assert records["cv/skills/c"] == sample["skills"][2]
    for path in records:
        validate_path(path)


def test_round_trip_is_exact_including_order(sample):
    records = import_resume(sample)
    out = export_resume(records)
    assert out == sample
    assert json.dumps(out) == json.dumps(sample)  # key and entry order too


def test_round_trip_survives_store_order(sample):
    records = import_resume(sample)
    shuffled = dict(sorted(records.items(), reverse=True))
    assert json.dumps(export_resume(shuffled)) == json.dumps(sample)


def test_export_without_index_and_with_added_entries(sample):
    records = import_resume(sample)
    records["cv/work/zeta-2024"] = {"name": "Zeta", "startDate": "2024-01-01"}
    doc = export_resume(records)
    assert doc["work"][:3] == sample["work"] and doc["work"][3]["name"] == "Zeta"
    del records[INDEX]
    doc = export_resume(records)
    assert list(doc)[0] == "basics" and list(doc)[-1] == "meta"
    assert "$schema" not in doc and len(doc["work"]) == 4
    assert export_resume({"notes/x": 1, "cv/a/b/c": 2}) == {}


def test_empty_sections_and_unknown_keys_round_trip():
    doc = {"work": [], "basics": {}, "x-custom": {"a": 1}, "tags": [{"name": "t"}], "$weird key": [1, "two"]}
    assert json.dumps(export_resume(import_resume(doc))) == json.dumps(doc)


@pytest.mark.parametrize(
    "bad, words",
    [
        ([], "must be a JSON object"),
        ("resume", "must be a JSON object"),
        ({"basics": []}, "'basics' section must be an object"),
        ({"work": {"name": "x"}}, "'work' section must be a list"),
        ({"work": [{"name": "ok"}, "nope"]}, "entry 2 of 'work'"),
        ({"meta": None}, "'meta' section must be an object"),
    ],
)
def test_wrong_types_are_clear_errors(bad, words):
    with pytest.raises(ProtocolError) as exc:
        import_resume(bad)
    assert exc.value.code is ErrorCode.MALFORMED and words in exc.value.message


def test_slugs():
    assert slugify("Chalmers tekniska högskola") == "chalmers-tekniska-hogskola"
    assert slugify("  C++ / Rust!! ") == "c-rust"
    assert slugify("日本語") == ""
    assert len(slugify("x" * 200)) <= 48
    records = import_resume({"skills": [{"name": "日本語"}, {"level": "no name"}, {"name": "日本語"}]})
    assert [p for p in records if p != INDEX] == ["cv/skills/entry", "cv/skills/entry-2", "cv/skills/entry-3"]


json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
entry = st.dictionaries(st.sampled_from(["name", "startDate", "date", "x", "language"]), json_leaf | st.text(max_size=20))


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "basics": st.dictionaries(st.text(max_size=5), json_leaf),
            "work": st.lists(entry, max_size=5),
            "skills": st.lists(entry, max_size=5),
            "languages": st.lists(entry, max_size=3),
            "meta": st.dictionaries(st.text(max_size=5), json_leaf),
        },
    )
)
def test_any_wellformed_resume_round_trips(doc):
    records = import_resume(doc)
    for p in records:
        validate_path(p)
    assert export_resume(records) == doc
