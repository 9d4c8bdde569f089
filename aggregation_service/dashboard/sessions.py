"""Operator sessions of the dashboard, in memory.

The browser holds only a random session id (an HttpOnly cookie); the operator
token never leaves the login request. The server keeps, per session, the CSRF
token the page must echo on every state-changing call, and two deadlines:
an idle one that each request pushes back and an absolute one that nothing
extends. Sessions die with the process: a restart asks the operator to log in
again, which is the price of not writing credentials to disk.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from fedge.clock import Clock

IDLE_S = 3600.0  # an hour without a request (the page polls every 2 s while open)
MAX_AGE_S = 12 * 3600.0  # a working day at most, however busy
CAPACITY = 1024  # more live sessions than any operator team needs; the oldest go first


@dataclass
class Session:
    csrf: str
    created_at: float
    last_seen: float


def _plausible(session_id: str) -> bool:
    """Could this cookie value be one of our ids? They are short URL-safe ASCII;
    a client can send any bytes, which must not reach the hash as text."""
    return 0 < len(session_id) <= 128 and session_id.isascii()


def _key(session_id: str) -> str:
    # Looked up by digest, so a dict probe reveals nothing about stored ids.
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """``create`` at login, ``get`` on every request, ``drop`` at logout."""

    def __init__(
        self,
        clock: Clock,
        *,
        idle_s: float = IDLE_S,
        max_age_s: float = MAX_AGE_S,
        capacity: int = CAPACITY,
    ) -> None:
        self.clock = clock
        self.idle_s, self.max_age_s, self.capacity = idle_s, max_age_s, capacity
        self._by_key: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key)

    def create(self) -> tuple[str, Session]:
        """A new session: (the id for the cookie, its server-side record)."""
        now = self.clock.time()
        self._prune(now)
        while len(self._by_key) >= self.capacity:
            self._by_key.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), created_at=now, last_seen=now)
        self._by_key[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for a cookie value (its idle deadline pushed back), or None."""
        if session_id is None or not _plausible(session_id):
            return None
        key = _key(session_id)
        session = self._by_key.get(key)
        if session is None:
            return None
        now = self.clock.time()
        if self._expired(session, now):
            del self._by_key[key]
            return None
        session.last_seen = now
        self._by_key.move_to_end(key)
        return session

    def drop(self, session_id: str) -> bool:
        return _plausible(session_id) and self._by_key.pop(_key(session_id), None) is not None

    @staticmethod
    def csrf_matches(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "replace"), session.csrf.encode()
        )

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen > self.idle_s or now - session.created_at > self.max_age_s

    def _prune(self, now: float) -> None:
        for key in [k for k, s in self._by_key.items() if self._expired(s, now)]:
            del self._by_key[key]
