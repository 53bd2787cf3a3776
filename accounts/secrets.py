"""Encryption of the secrets we keep at rest (refresh tokens, users' provider keys).

Fernet (AES-128-CBC + HMAC-SHA256, authenticated) under a list of keys: the first encrypts, all
decrypt, so a new key can be put first and old ciphertexts re-encrypted with `rotate` at leisure.
"""

from __future__ import annotations

from typing import Callable, Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from accounts.errors import AuthError


def generate_key() -> str:
    """A new random Fernet key (url-safe base64 text), for the front of the key list."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts and decrypts text under a rotating list of Fernet keys."""

    def __init__(self, keys: str | Iterable[str]) -> None:
        """`keys`: newest first, as a list or a comma-separated string (an environment variable)."""
        names = keys.split(",") if isinstance(keys, str) else list(keys)
        names = [key.strip() for key in names if key.strip()]
        if not names:
            raise ValueError("SecretBox needs at least one Fernet key")
        fernets = []
        for position, key in enumerate(names, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # Say which key is wrong, never what it is: this message may end up in logs.
                raise ValueError(f"Fernet key #{position} is not 32 url-safe base64-encoded "
                                 "bytes") from None
        self._box = MultiFernet(fernets)

    def encrypt(self, plaintext: str) -> str:
        return self._box.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """The plaintext; AuthError("undecryptable") if no key opens it or it was altered."""
        return _opened(self._box.decrypt, ciphertext).decode()

    def rotate(self, ciphertext: str) -> str:
        """The same secret encrypted under the first (newest) key."""
        return _opened(self._box.rotate, ciphertext).decode()


def _opened(open_token: Callable[[bytes], bytes], ciphertext: str) -> bytes:
    try:
        # A Fernet token is ASCII: anything else is not one of ours.
        return open_token(ciphertext.encode("ascii"))
    except (InvalidToken, UnicodeError, AttributeError):
        raise AuthError("undecryptable",
                        "the secret cannot be decrypted with any configured key") from None
