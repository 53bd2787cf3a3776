"""The ids a session hands out: its own, its items', responses', calls' and events'.

A factory is passed to the core (`RealtimeSession(..., ids=)`), so tests can have deterministic
ids; the default is a random per-session prefix and a counter (cheap, unique, and sortable).
The session's own id is the factory's first, so the shell knows it before the session exists
(billing counts the session under it) without ever setting it.
"""

from __future__ import annotations

import itertools
import os


class Ids:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._n = itertools.count(1)
        self.session = self("sess")

    @classmethod
    def random(cls) -> "Ids":
        return cls(os.urandom(6).hex())

    def __call__(self, kind: str) -> str:
        return f"{kind}_{self._prefix}{next(self._n):04d}"
