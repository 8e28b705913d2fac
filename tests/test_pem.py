"""bot/pem.py against cryptography: the start-up key check and the library that signs agree.

The check runs without cryptography so that a serving process does not load it at start. It
must never pass a key that cryptography and PyJWT cannot sign with (the first GitHub call would
fail where start-up said all was well), and must pass every key they can sign with in the forms
GitHub's keys come in.
"""

from __future__ import annotations

import base64
import functools
import re

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.pem import ENCRYPTED, rsa_key_problem


@functools.cache
def _rsa(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _pem(key: object, fmt: serialization.PrivateFormat, password: bytes | None = None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption).decode()  # type: ignore[attr-defined]


PKCS1 = serialization.PrivateFormat.TraditionalOpenSSL
PKCS8 = serialization.PrivateFormat.PKCS8


def library_signs(pem: str) -> bool:
    """What the first GitHub call does with the key (bot/github.py `_jwt_signer`)."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), None)
        jwt.encode({"iss": "1"}, key, algorithm="RS256")  # type: ignore[arg-type]
    except (ValueError, TypeError, jwt.PyJWTError, NotImplementedError):
        return False
    return True


@pytest.mark.parametrize("fmt", [PKCS1, PKCS8], ids=["pkcs1", "pkcs8"])
@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_keys_the_library_signs_with_pass(fmt: serialization.PrivateFormat, bits: int) -> None:
    pem = _pem(_rsa(bits), fmt)
    assert library_signs(pem)
    assert rsa_key_problem(pem) == ""
    # as env files and editors carry it: CRLF line ends, indentation, no trailing newline
    assert rsa_key_problem(pem.replace("\n", "\r\n")) == ""
    assert rsa_key_problem("  " + pem.strip()) == ""


def test_an_encrypted_key_is_named_so() -> None:
    for fmt in (PKCS1, PKCS8):
        pem = _pem(_rsa(), fmt, password=b"secret-pass")
        assert not library_signs(pem)
        assert rsa_key_problem(pem) == ENCRYPTED


def test_a_key_shorter_than_githubs_is_refused() -> None:
    """GitHub makes 2048-bit App keys, and an App takes no other; PyJWT warns below 2048."""
    pem = _pem(_rsa(1024), PKCS1)
    assert rsa_key_problem(pem) == (
        "it cannot sign a GitHub App JWT: the key is 1024 bits; GitHub App keys are 2048"
    )


def test_an_ec_key_is_not_an_app_key() -> None:
    pem = _pem(ec.generate_private_key(ec.SECP256R1()), PKCS8)
    assert rsa_key_problem(pem) == (
        "it cannot sign a GitHub App JWT: not an RSA key (GitHub App keys are RSA)"
    )
    sec1 = _pem(ec.generate_private_key(ec.SECP256R1()), PKCS1)  # "BEGIN EC PRIVATE KEY"
    assert "ec private key, not an RSA private key" in rsa_key_problem(sec1)


def _body(pem: str) -> tuple[str, bytes, str]:
    head, body, tail = re.match(
        r"(-----BEGIN [^-]+-----\n)(.*?)(\n-----END .*)", pem, re.S
    ).groups()  # type: ignore[union-attr]
    return head, base64.b64decode("".join(body.split())), tail


def _with_body(head: str, der: bytes, tail: str) -> str:
    text = base64.b64encode(der).decode()
    return head + "\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + tail


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p[: len(p) // 2],  # cut in half: no END line
        lambda p: p.replace("-----END RSA", "-----END EC"),
        lambda p: p.replace("A", "*", 1),  # not base64
        lambda p: "\n".join(p.splitlines()[:-3] + p.splitlines()[-1:]),  # lines lost
    ],
    ids=["half", "labels", "not-base64", "lines-lost"],
)
def test_a_damaged_text_is_refused_by_both(damage) -> None:  # type: ignore[no-untyped-def]
    pem = damage(_pem(_rsa(), PKCS1))
    assert not library_signs(pem)
    assert rsa_key_problem(pem).startswith("it cannot sign a GitHub App JWT: ")


def test_numbers_that_do_not_belong_together_are_refused() -> None:
    """A structurally perfect key whose modulus is another key's: only the RSA relations see
    it (cryptography checks them on load too)."""
    numbers = _rsa().private_numbers()
    other = _rsa(3072).private_numbers()
    head, _, tail = _body(_pem(_rsa(), PKCS1))

    fields = [
        0,
        other.public_numbers.n,
        numbers.public_numbers.e,
        numbers.d,
        numbers.p,
        numbers.q,
        numbers.dmp1,
        numbers.dmq1,
        numbers.iqmp,
    ]
    body = b"".join(_integer(n) for n in fields)
    forged = _with_body(head, b"\x30" + _length(len(body)) + body, tail)
    assert not library_signs(forged)
    assert rsa_key_problem(forged) == (
        "it cannot sign a GitHub App JWT: the modulus is not the product of the key's primes"
    )


def _integer(n: int) -> bytes:
    raw = n.to_bytes(n.bit_length() // 8 + 1, "big")
    return b"\x02" + _length(len(raw)) + raw


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


@settings(max_examples=150, deadline=None)
@example(fmt=PKCS8, where=0.005, flip=1, cut=False)  # PKCS#8 version 0 -> 1: refused by both
@example(fmt=PKCS8, where=0.017578125, flip=1, cut=False)  # rsaEncryption's NULL damaged
@given(
    fmt=st.sampled_from([PKCS1, PKCS8]),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    flip=st.integers(min_value=1, max_value=255),
    cut=st.booleans(),
)
def test_a_changed_byte_anywhere_never_passes_what_the_library_refuses(
    fmt: serialization.PrivateFormat, where: float, flip: int, cut: bool
) -> None:
    """Any one byte of the DER changed (or the DER cut there), re-encoded as valid base64: if
    the start-up check passes it, cryptography signs with it."""
    head, der, tail = _body(_pem(_rsa(), fmt))
    at = int(where * len(der))
    changed = der[:at] if cut else der[:at] + bytes([der[at] ^ flip]) + der[at + 1 :]
    pem = _with_body(head, changed, tail)
    if rsa_key_problem(pem) == "":
        assert library_signs(pem)


@pytest.mark.parametrize("fmt", [PKCS1, PKCS8], ids=["pkcs1", "pkcs8"])
def test_bytes_after_the_key_are_refused_by_both(fmt: serialization.PrivateFormat) -> None:
    head, der, tail = _body(_pem(_rsa(), fmt))
    pem = _with_body(head, der + b"\x05\x00", tail)
    assert not library_signs(pem)
    assert rsa_key_problem(pem) == "it cannot sign a GitHub App JWT: trailing data after the key"


def test_bytes_after_the_key_inside_pkcs8_are_refused_by_both() -> None:
    """Within PKCS#8's SEQUENCE, after the key's OCTET STRING (the outer length made to fit)."""
    head, der, tail = _body(_pem(_rsa(), PKCS8))
    header = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    body = der[header:] + b"\x05\x00"
    pem = _with_body(head, b"\x30" + _length(len(body)) + body, tail)
    assert not library_signs(pem)
    assert rsa_key_problem(pem) == "it cannot sign a GitHub App JWT: trailing data after the key"


def test_numbers_out_of_range_are_refused_by_both() -> None:
    """e = d = 1 satisfies every relation between the numbers, and signs nothing."""
    numbers = _rsa().private_numbers()
    p, q = numbers.p, numbers.q
    head, _, tail = _body(_pem(_rsa(), PKCS1))

    fields = [0, p * q, 1, 1, p, q, 1, 1, pow(q, -1, p)]
    body = b"".join(_integer(n) for n in fields)
    weak = _with_body(head, b"\x30" + _length(len(body)) + body, tail)
    assert not library_signs(weak)
    assert (
        rsa_key_problem(weak)
        == "it cannot sign a GitHub App JWT: the key's numbers are out of range"
    )
