"""The consent request lifecycle table: every legal transition, and every other pair refused."""

from __future__ import annotations

import itertools

import pytest

from consent.lifecycle import TRANSITIONS, Event, IllegalTransition, State, is_final, next_state, wire_status
from protocol.errors import ErrorCode

LEGAL = [
    ("pending", "approve_all", "granted"),
    ("pending", "approve_some", "partly_granted"),
    ("pending", "deny", "denied"),
    ("pending", "expire", "expired"),
    ("granted", "revoke_all", "revoked"),
    ("granted", "expire", "expired"),
    ("partly_granted", "revoke_all", "revoked"),
    ("partly_granted", "expire", "expired"),
]


@pytest.mark.parametrize("state,event,after", LEGAL, ids=[f"{s}-{e}" for s, e, _ in LEGAL])
def test_legal(state, event, after):
    assert next_state(state, event) is State(after)


ILLEGAL = [(s, e) for s, e in itertools.product(State, Event) if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize("state,event", ILLEGAL, ids=[f"{s.value}-{e.value}" for s, e in ILLEGAL])
def test_illegal_is_conflict(state, event):
    with pytest.raises(IllegalTransition) as err:
        next_state(state, event)
    assert err.value.code is ErrorCode.CONFLICT


def test_table_is_exactly_the_legal_list():
    assert {(s.value, e.value, t.value) for (s, e), t in TRANSITIONS.items()} == set(LEGAL)


def test_final_states_and_wire_status():
    assert {s for s in State if is_final(s)} == {State.DENIED, State.EXPIRED, State.REVOKED}
    assert wire_status("partly_granted") == "granted"
    assert {wire_status(s) for s in State} == {"pending", "granted", "denied", "expired", "revoked"}


def test_unknown_names_are_refused():
    with pytest.raises(ValueError):
        next_state("bogus", "deny")
    with pytest.raises(ValueError):
        next_state("pending", "bogus")
