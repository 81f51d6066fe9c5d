"""The consent request lifecycle as one transition table: every legal (state, event) -> state pair is here.

pending -> granted / partly granted / denied / expired; a grant -> revoked / expired. Anything else is illegal.
"""

from __future__ import annotations

import enum

from protocol.errors import ErrorCode, ProtocolError

__all__ = ["State", "Event", "TRANSITIONS", "IllegalTransition", "next_state", "wire_status", "is_final"]


class State(str, enum.Enum):
    PENDING = "pending"
    GRANTED = "granted"
    PARTLY_GRANTED = "partly_granted"
    DENIED = "denied"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Event(str, enum.Enum):
    APPROVE_ALL = "approve_all"
    APPROVE_SOME = "approve_some"
    DENY = "deny"
    EXPIRE = "expire"  # unanswered by the deadline, or the grant's exp passed
    REVOKE_ALL = "revoke_all"  # the last unrevoked delegation of the grant was revoked


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.PENDING, Event.APPROVE_ALL): State.GRANTED,
    (State.PENDING, Event.APPROVE_SOME): State.PARTLY_GRANTED,
    (State.PENDING, Event.DENY): State.DENIED,
    (State.PENDING, Event.EXPIRE): State.EXPIRED,
    (State.GRANTED, Event.REVOKE_ALL): State.REVOKED,
    (State.GRANTED, Event.EXPIRE): State.EXPIRED,
    (State.PARTLY_GRANTED, Event.REVOKE_ALL): State.REVOKED,
    (State.PARTLY_GRANTED, Event.EXPIRE): State.EXPIRED,
}


class IllegalTransition(ProtocolError):
    """An event that the current state does not allow (e.g. approving a denied request): Conflict on the wire."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(ErrorCode.CONFLICT, f"a {state.value} request cannot take the event {event.value}")
        self.state, self.event = state, event


def next_state(state: State | str, event: Event | str) -> State:
    state, event = State(state), Event(event)
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def is_final(state: State | str) -> bool:
    state = State(state)
    return not any(s is state for s, _ in TRANSITIONS)


def wire_status(state: State | str) -> str:
    """The status text of PROTOCOL.md §5: a partial grant is reported as "granted"."""
    state = State(state)
    return State.GRANTED.value if state is State.PARTLY_GRANTED else state.value
