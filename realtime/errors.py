"""The one refusal of the core: a client event it will not take, with the protocol's error code.

Raised while handling a client event, turned into an `error` event by `RealtimeSession`; the
session goes on. `collect` lets one refused field of an update leave the rest applied.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class ClientError(Exception):
    """A client event we refuse; becomes an `error` event, the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@contextmanager
def collect(problems: list[ClientError]) -> Iterator[None]:
    """One field of an update: a refusal is noted and the rest of the update goes on."""
    try:
        yield
    except ClientError as exc:
        problems.append(exc)
