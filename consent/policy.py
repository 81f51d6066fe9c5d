"""The UCAN 1.0 policy language: parsing a delegation's `pol` and evaluating it against invocation `args`.

Everything about selectors and statement semantics lives here. Rules (UCAN delegation spec, "Policy"):
a selector that cannot be resolved makes its statement false (never an exception); a missing map key
selects `null`; numbers compare across int/float but never equal a bool; `like` has one wildcard `*`
(`\\*` is a literal star); `and []` and `or []` are true; quantifiers over a non-collection are false.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from protocol.errors import ErrorCode, ProtocolError

__all__ = ["Policy", "Selector", "parse_policy", "parse_selector", "ipld_equal"]


class _Unresolved(Exception):
    """A selector path that does not exist in the data; the enclosing statement is false."""


# Bounds evaluation depth (each `[]` recurses) well below Python's recursion limit.
MAX_SEGMENTS = 64


# ---------------------------------------------------------------- selectors

@dataclass(frozen=True)
class _Seg:
    kind: str  # "field" | "index" | "slice" | "iterate"
    value: Any = None
    optional: bool = False


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_CLAIM, message)


def _parse_bracket(text: str, i: int) -> tuple[_Seg, int]:
    """Parse `[...]` starting at text[i] == '['; returns the segment and the index after `]`."""
    if text.startswith('["', i):
        # A JSON string literal, so keys may hold any character, escaped the JSON way.
        try:
            key, end = json.JSONDecoder().raw_decode(text, i + 1)
        except ValueError:
            raise _bad(f"selector {text!r} has a bad quoted key") from None
        if not isinstance(key, str) or not text.startswith("]", end):
            raise _bad(f"selector {text!r} has a bad quoted key")
        return _Seg("field", key), end + 1
    close = text.find("]", i)
    if close < 0:
        raise _bad(f"selector {text!r} has an unclosed bracket")
    inner = text[i + 1:close]
    if inner == "":
        return _Seg("iterate"), close + 1
    if ":" in inner:
        start, _, stop = inner.partition(":")
        bounds = []
        for part in (start, stop):
            if part == "":
                bounds.append(None)
            elif _INT.fullmatch(part):
                bounds.append(int(part))
            else:
                raise _bad(f"selector {text!r} has a bad slice")
        return _Seg("slice", tuple(bounds)), close + 1
    if _INT.fullmatch(inner):
        return _Seg("index", int(inner)), close + 1
    raise _bad(f"selector {text!r} has a bad bracket segment")


@dataclass(frozen=True)
class Selector:
    """A parsed jq-style selector; `select(data)` returns the value or raises _Unresolved."""

    text: str
    segments: tuple[_Seg, ...]

    def select(self, data: Any) -> Any:
        return _walk(data, self.segments)


def parse_selector(text: Any) -> Selector:
    if not isinstance(text, str) or not text.startswith("."):
        raise _bad(f"selector {text!r} must be text starting with '.'")
    if text == ".":
        return Selector(text, ())
    segs: list[_Seg] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == ".":
            i += 1
            if i < n and text[i] == "[":
                seg, i = _parse_bracket(text, i)
            else:
                m = _IDENT.match(text, i)
                if not m:
                    raise _bad(f"selector {text!r} has an empty or bad field name")
                seg, i = _Seg("field", m.group()), m.end()
        elif text[i] == "[":
            seg, i = _parse_bracket(text, i)
        else:
            raise _bad(f"selector {text!r} has an unexpected character at {i}")
        optional = False
        while i < n and text[i] == "?":  # repeated `?` is one `?`
            optional, i = True, i + 1
        segs.append(_Seg(seg.kind, seg.value, optional))
        if len(segs) > MAX_SEGMENTS:
            raise _bad(f"a selector has at most {MAX_SEGMENTS} segments")
    return Selector(text, tuple(segs))


def _step(cur: Any, seg: _Seg) -> Any:
    if seg.kind == "field":
        if not isinstance(cur, dict):
            raise _Unresolved
        # The spec: a missing key on a map selects null; going further into that null then fails.
        return cur.get(seg.value)
    if seg.kind == "index":
        if not isinstance(cur, (list, bytes)):
            raise _Unresolved
        idx = seg.value
        if not -len(cur) <= idx < len(cur):
            raise _Unresolved
        return cur[idx]
    if seg.kind == "slice":
        if not isinstance(cur, (list, bytes)):
            raise _Unresolved
        start, stop = seg.value
        return cur[start:stop]
    raise AssertionError(seg.kind)  # pragma: no cover


def _walk(cur: Any, segs: tuple[_Seg, ...]) -> Any:
    for pos, seg in enumerate(segs):
        if seg.kind == "iterate":
            if isinstance(cur, list):
                children = cur
            elif isinstance(cur, dict):
                children = list(cur.values())
            elif seg.optional:
                return None
            else:
                raise _Unresolved
            # `[]` fans the remaining path out over every child and collects the results.
            return [_walk(child, segs[pos + 1:]) for child in children]
        try:
            cur = _step(cur, seg)
        except _Unresolved:
            if seg.optional:
                return None
            raise
    return cur


# ---------------------------------------------------------------- values

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def ipld_equal(a: Any, b: Any) -> bool:
    """Deep IPLD equality: ints equal floats of the same value; booleans equal only booleans."""
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(ipld_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(ipld_equal(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    return a == b


def _glob(pattern: str) -> Callable[[str], bool]:
    """Compile a `like` pattern to a matcher that runs in linear-ish time (no regex backtracking to exploit)."""
    chunks, i = [""], 0
    while i < len(pattern):
        if pattern.startswith("\\*", i):
            chunks[-1] += "*"
            i += 2
        elif pattern[i] == "*":
            chunks.append("")
            i += 1
        else:
            chunks[-1] += pattern[i]
            i += 1
    if len(chunks) == 1:
        return lambda s: s == chunks[0]
    head, *middle, tail = chunks

    def match(s: str) -> bool:
        if len(s) < len(head) + len(tail) or not s.startswith(head) or not s.endswith(tail):
            return False
        # With `*` the only wildcard, taking each middle chunk at its leftmost place is never wrong.
        pos, end = len(head), len(s) - len(tail)
        for chunk in middle:
            found = s.find(chunk, pos, end)
            if found < 0:
                return False
            pos = found + len(chunk)
        return True

    return match


# ---------------------------------------------------------------- statements

Test = Callable[[Any], bool]

_INEQUALITIES: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


def _selecting(sel: Selector, test: Callable[[Any], bool]) -> Test:
    def run(data: Any) -> bool:
        try:
            value = sel.select(data)
        except _Unresolved:
            return False
        return test(value)
    return run


def _quantifier(sel: Selector, inner: Test, combine: Callable) -> Test:
    def over(value: Any) -> bool:
        if isinstance(value, list):
            items = value
        elif isinstance(value, dict):
            items = value.values()
        else:
            return False
        return combine(inner(item) for item in items)
    return _selecting(sel, over)


def _compile(stmt: Any) -> Test:
    if not isinstance(stmt, list) or not stmt or not isinstance(stmt[0], str):
        raise _bad(f"policy statement {stmt!r} must be a list starting with an operator")
    op, rest = stmt[0], stmt[1:]
    if op in ("and", "or"):
        if len(rest) != 1 or not isinstance(rest[0], list):
            raise _bad(f"'{op}' takes one list of statements")
        parts = [_compile(s) for s in rest[0]]
        if op == "and":
            return lambda data: all(p(data) for p in parts)
        # An empty `or` is true by the spec, unlike Python's any([]).
        return lambda data: not parts or any(p(data) for p in parts)
    if op == "not":
        if len(rest) != 1:
            raise _bad("'not' takes one statement")
        inner = _compile(rest[0])
        return lambda data: not inner(data)
    if len(rest) != 2:
        raise _bad(f"'{op}' takes a selector and one argument")
    sel, arg = parse_selector(rest[0]), rest[1]
    if op == "==":
        return _selecting(sel, lambda v: ipld_equal(v, arg))
    if op == "!=":
        return _selecting(sel, lambda v: not ipld_equal(v, arg))
    if op in _INEQUALITIES:
        if not _is_number(arg):
            raise _bad(f"'{op}' compares with a number, not {arg!r}")
        cmp = _INEQUALITIES[op]
        return _selecting(sel, lambda v: _is_number(v) and cmp(v, arg))
    if op == "like":
        if not isinstance(arg, str):
            raise _bad("'like' takes a text pattern")
        glob = _glob(arg)
        return _selecting(sel, lambda v: isinstance(v, str) and glob(v))
    if op in ("all", "any"):
        return _quantifier(sel, _compile(arg), all if op == "all" else any)
    raise _bad(f"unknown policy operator {op!r}")


class Policy:
    """A parsed `pol`: the statements' implicit `and`, checked once, evaluated many times."""

    __slots__ = ("raw", "_tests")

    def __init__(self, raw: list, tests: list[Test]) -> None:
        self.raw = raw
        self._tests = tests

    def matches(self, args: Any) -> bool:
        return all(t(args) for t in self._tests)

    def __repr__(self) -> str:
        return f"Policy({self.raw!r})"


def parse_policy(pol: Any) -> Policy:
    """Check `pol`'s syntax; raises ProtocolError(InvalidClaim) on any malformed statement or selector."""
    if not isinstance(pol, list):
        raise _bad("a policy must be a list of statements")
    return Policy(pol, [_compile(s) for s in pol])
