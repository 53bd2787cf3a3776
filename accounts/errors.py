"""The one exception of `accounts`: a refused credential, with a stable machine-readable code.

The code is what the app maps to a status and puts in error bodies; the message is for logs and
humans and may change.
"""

from __future__ import annotations


class AuthError(Exception):
    """A credential was refused (or could not be checked).

    Codes in use: "invalid_token" (malformed, bad signature, missing or bad claims),
    "expired_token", "wrong_audience", "wrong_issuer", "unsupported_algorithm", "unknown_key",
    "keys_unavailable" (the key set could not be fetched: our problem, not the caller's),
    "invalid_ticket", "origin_not_allowed", "undecryptable".
    """

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message or code.replace("_", " ")
        super().__init__(f"{code}: {self.message}")
