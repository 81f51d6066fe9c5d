"""The UCAN policy language: every policy fixture, selector semantics, syntax rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from consent.policy import ipld_equal, parse_policy, parse_selector
from protocol.errors import ErrorCode, ProtocolError

FIXTURES = json.loads((Path(__file__).parent / "fixtures/ucan-1.0.0/policy.json").read_text())


def _cases(kind: str):
    for i, group in enumerate(FIXTURES[kind]):
        for j, pol in enumerate(group["policies"]):
            yield pytest.param(group["args"], pol, id=f"{kind}-{i}.{j}-{json.dumps(pol)[:60]}")


@pytest.mark.parametrize("args,pol", list(_cases("valid")))
def test_fixture_valid(args, pol):
    assert parse_policy(pol).matches(args)


@pytest.mark.parametrize("args,pol", list(_cases("invalid")))
def test_fixture_invalid(args, pol):
    assert not parse_policy(pol).matches(args)


ARGS = {
    "from": "alice@example.com",
    "to": ["bob@example.com", "carol@not.example.com", "dan@example.com"],
    "n": {"x": 1, "y": 2},
    "weird key": {"$_*": True, "1": "one", ".": "dot"},
    "blob": b"\xd6\xa9\xc1\x8c\xf8\xc4",
    "empty": [],
    "nul": None,
    "f": 2.5,
    "t": True,
}


@pytest.mark.parametrize("selector,expected", [
    (".", ARGS),
    (".from", "alice@example.com"),
    (".to[1]", "carol@not.example.com"),
    (".to.[1]", "carol@not.example.com"),
    (".to[-1]", "dan@example.com"),
    (".to[99]?", None),
    (".to[0:2]", ["bob@example.com", "carol@not.example.com"]),
    (".to[1:]", ["carol@not.example.com", "dan@example.com"]),
    (".to[:-2]", ["bob@example.com"]),
    (".to[]", ARGS["to"]),
    (".n[]", [1, 2]),
    ('.["weird key"]["$_*"]', True),
    ('.["weird key"]["1"]', "one"),
    ('.["weird key"]["."]', "dot"),
    (".blob[3]", 0x8C),
    (".blob[1:3]", b"\xa9\xc1"),
    (".missing", None),
    (".missing?", None),
    (".missing.deeper?", None),
    (".from.x???", None),
    (".n.x", 1),
])
def test_selector_resolves(selector, expected):
    assert parse_policy([["==", selector, expected]]).matches(ARGS)


@pytest.mark.parametrize("selector", [
    ".to[99]", ".to[-4]", ".from.x", ".from[0]", ".missing.deeper", ".n[0]", ".nul[]", ".to[99].x?",
])
def test_unresolvable_selector_makes_statement_false(selector):
    for op, arg in [("==", None), ("!=", None), ("like", "*"), (">", 0)]:
        assert not parse_policy([[op, selector, arg]]).matches(ARGS), (op, selector)
    assert not parse_policy([["any", selector, ["==", ".", 1]]]).matches(ARGS)


@pytest.mark.parametrize("pol,ok", [
    ([["==", ".f", 2.5]], True),
    ([[">", ".f", 2]], True),
    ([["<", ".t", 2]], False),  # a bool is not a number
    ([["==", ".t", 1]], False),
    ([["==", ".n.x", True]], False),
    ([[">", ".from", 0]], False),  # comparing a non-number is false, not an error
    ([["like", ".n", "*"]], False),  # like on a non-string is false
    ([["like", ".from", "*"]], True),
    ([["like", ".from", "alice@*.com"]], True),
    ([["like", ".from", "alice\\*"]], False),
    ([["like", ".from", "ALICE*"]], False),
    ([["all", ".empty", ["==", ".", 1]]], True),
    ([["any", ".empty", ["==", ".", 1]]], False),
    ([["all", ".from", ["==", ".", 1]]], False),  # quantifying a non-collection is false
    ([["any", ".n", ["==", ".", 2]]], True),  # maps quantify over values
    ([["or", []]], True),
    ([["and", []]], True),
    ([["not", ["or", []]]], False),
    ([["!=", ".missing", None]], False),  # a missing key selects null
    ([["==", ".nul", None]], True),
    ([], True),
])
def test_semantics(pol, ok):
    assert parse_policy(pol).matches(ARGS) is ok


def test_like_matches_across_newlines_and_literal_specials():
    assert parse_policy([["like", ".", "a*c"]]).matches("a\nb\nc")
    assert parse_policy([["like", ".", "a.c(x)+"]]).matches("a.c(x)+")
    assert not parse_policy([["like", ".", "a.c"]]).matches("abc")


@pytest.mark.parametrize("pol", [
    "not a list",
    [["=="]],
    [["==", ".a"]],
    [["==", ".a", 1, 2]],
    [["===", ".a", 1]],
    [[1, ".a", 1]],
    [[]],
    ["==", ".a", 1],  # a statement where a list of statements is expected
    [["==", "a", 1]],
    [["==", "", 1]],
    [["==", "..a", 1]],
    [["==", ".a.", 1]],
    [["==", ".a[", 1]],
    [["==", ".a[x]", 1]],
    [["==", ".a[1:x]", 1]],
    [["==", '.["unterminated]', 1]],
    [["==", '.["a"', 1]],
    [["==", ".1a", 1]],
    [["==", ".a b", 1]],
    [["==", 7, 1]],
    [["<", ".a", "1"]],
    [["<", ".a", True]],
    [["like", ".a", 1]],
    [["and", ["==", ".a", 1]]],
    [["and", [["==", ".a", 1]], 2]],
    [["or"]],
    [["not"]],
    [["not", ["==", ".a", 1], ["==", ".a", 1]]],
    [["not", "x"]],
    [["all", ".a"]],
    [["any", ".a", "x"]],
    [["any", ".a", ["bogus", ".a", 1]]],
])
def test_bad_syntax_is_invalid_claim(pol):
    with pytest.raises(ProtocolError) as err:
        parse_policy(pol)
    assert err.value.code is ErrorCode.INVALID_CLAIM


def test_selector_text_is_kept():
    assert parse_selector('.a["b"][0]?').text == '.a["b"][0]?'


_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False) | st.text(max_size=3)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=2), inner, max_size=3), max_leaves=8)


@given(_values)
def test_equality_is_reflexive_and_not_is_its_negation(v):
    assert ipld_equal(v, v)
    assert parse_policy([["==", ".", v]]).matches(v)
    assert not parse_policy([["!=", ".", v]]).matches(v)


@given(_values, _values)
def test_equality_is_symmetric(a, b):
    assert ipld_equal(a, b) == ipld_equal(b, a)


@pytest.mark.parametrize("pattern,text,ok", [
    ("", "", True), ("", "a", False), ("*", "", True), ("**", "abc", True), ("a*", "a", True),
    ("*a", "a", True), ("a*a", "a", False), ("a*a", "aa", True), ("a*b*c", "abc", True), ("a*b*c", "acb", False),
    ("ab*ba", "aba", False), ("*ab*ab*", "xabyab", True), ("*ab*ab*", "xaby", False), ("\\*", "*", True),
    ("\\*", "x", False), ("a\\b", "a\\b", True), ("*.com", "x.com", True), ("*.com", "xcom", False),
])
def test_glob_table(pattern, text, ok):
    assert parse_policy([["like", ".", pattern]]).matches(text) is ok


def test_like_cannot_be_made_to_backtrack():
    # A regex translation of this pattern would take exponential time on this text; the matcher is linear-ish.
    pattern = "*a" * 40 + "*b"
    assert not parse_policy([["like", ".", pattern]]).matches("a" * 5000)


def test_selector_length_is_bounded():
    parse_selector("." + "[]" * 64)
    with pytest.raises(ProtocolError) as err:
        parse_selector("." + "[]" * 65)
    assert err.value.code is ErrorCode.INVALID_CLAIM


@given(st.text(alphabet="ab*", max_size=8), st.text(alphabet="ab*", max_size=10))
def test_glob_agrees_with_fnmatch(pattern, text):
    import fnmatch
    import re
    # fnmatch's `*` is the same wildcard once its other specials are out of the alphabet.
    expected = re.fullmatch(fnmatch.translate(pattern), text, re.DOTALL) is not None
    assert parse_policy([["like", ".", pattern]]).matches(text) is expected
