"""Secrets at rest are encrypted under rotating Fernet keys; tampered ones refuse to decrypt."""

from __future__ import annotations

import pytest

from accounts.errors import AuthError
from accounts.secrets import SecretBox, generate_key

REFRESH_TOKEN = "1//0gRefreshTokenFromGoogle-élève"


def test_a_secret_round_trips_and_is_not_stored_in_clear() -> None:
    box = SecretBox(generate_key())
    sealed = box.encrypt(REFRESH_TOKEN)
    assert REFRESH_TOKEN not in sealed
    assert box.decrypt(sealed) == REFRESH_TOKEN
    assert box.encrypt(REFRESH_TOKEN) != sealed  # a fresh IV each time


def test_keys_come_as_a_comma_separated_list_newest_first() -> None:
    old, new = generate_key(), generate_key()
    sealed_with_old = SecretBox(old).encrypt(REFRESH_TOKEN)
    box = SecretBox(f" {new} , {old} ")
    assert box.decrypt(sealed_with_old) == REFRESH_TOKEN  # old keys still decrypt
    assert SecretBox(new).decrypt(box.encrypt(REFRESH_TOKEN)) == REFRESH_TOKEN  # the first encrypts


def test_rotate_re_encrypts_under_the_newest_key() -> None:
    old, new = generate_key(), generate_key()
    sealed_with_old = SecretBox(old).encrypt(REFRESH_TOKEN)
    rotated = SecretBox([new, old]).rotate(sealed_with_old)
    assert SecretBox(new).decrypt(rotated) == REFRESH_TOKEN  # the old key can now be dropped
    with pytest.raises(AuthError):
        SecretBox(old).decrypt(rotated)


@pytest.mark.parametrize("damage", [
    lambda s: s[:-4] + ("AAAA" if not s.endswith("AAAA") else "BBBB"),  # signature
    lambda s: s[:20] + ("x" if s[20] != "x" else "y") + s[21:],  # body
    lambda s: s[:-10],  # truncated
    lambda s: "not a token",
    lambda s: "",
])
def test_tampered_ciphertext_is_refused(damage) -> None:  # type: ignore[no-untyped-def]
    box = SecretBox(generate_key())
    with pytest.raises(AuthError) as raised:
        box.decrypt(damage(box.encrypt(REFRESH_TOKEN)))
    assert raised.value.code == "undecryptable"


def test_a_secret_under_an_unknown_key_is_refused() -> None:
    sealed = SecretBox(generate_key()).encrypt(REFRESH_TOKEN)
    for method in (SecretBox(generate_key()).decrypt, SecretBox(generate_key()).rotate):
        with pytest.raises(AuthError) as raised:
            method(sealed)
        assert raised.value.code == "undecryptable"


@pytest.mark.parametrize("keys", ["", " , ", "not-a-fernet-key", [generate_key(), "short"]])
def test_bad_key_lists_are_refused_at_startup_without_echoing_the_key(keys: object) -> None:
    with pytest.raises(ValueError) as raised:
        SecretBox(keys)  # type: ignore[arg-type]
    assert "not-a-fernet-key" not in str(raised.value) and "short" not in str(raised.value)
