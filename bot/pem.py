"""Whether a PEM text is an RSA private key that can sign a GitHub App JWT, without cryptography.

The serving process checks the App key at start, so a damaged key is refused with one line
instead of being first met by a user's command. Checking it by loading it with cryptography
(and signing with PyJWT) kept both in every process from the start: ~9 MB resident and ~0.1 s
of imports, for a library that is needed only at the first GitHub call (bot/github.py imports
it there, and the first signature parses the key again). This module reads the key's DER
structure with the standard library and checks the RSA relations between its numbers, which is
what "can sign" means: the modulus is the product of the two primes, and the exponents invert
each other modulo both. A key that passes is one cryptography loads (tests/test_pem.py holds the
two verdicts side by side, for good keys and for damaged ones). Pure functions.

Accepted: PKCS#1 ("BEGIN RSA PRIVATE KEY", what GitHub hands out) and unencrypted PKCS#8
("BEGIN PRIVATE KEY") holding an RSA key.
"""

from __future__ import annotations

import binascii
import math
import re

ENCRYPTED = "it is encrypted with a passphrase; GitHub App keys are used without one"
_CANNOT = "it cannot sign a GitHub App JWT: "

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END ([A-Z0-9 ]+)-----", re.DOTALL)
# rsaEncryption, 1.2.840.113549.1.1.1, as DER (PKCS#8's AlgorithmIdentifier).
_RSA_OID = bytes.fromhex("2a864886f70d010101")
# GitHub makes 2048-bit App keys (an App takes no other); PyJWT warns below 2048 bits.
_MIN_BITS = 2048


class _Bad(ValueError):
    """The key's structure is not what its label says (a one-line reason, no key material)."""


def _tlv(data: bytes, at: int, tag: int) -> tuple[bytes, int]:
    """The contents of the DER element of type `tag` at `at`, and where the next one starts."""
    if at + 2 > len(data) or data[at] != tag:
        raise _Bad("unexpected DER structure")
    length, at = data[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or at + count > len(data):
            raise _Bad("bad DER length")
        length, at = int.from_bytes(data[at : at + count], "big"), at + count
    if at + length > len(data):
        raise _Bad("the key is cut short")
    return data[at : at + length], at + length


def _integers(body: bytes) -> list[int]:
    """The INTEGERs of a DER SEQUENCE's contents, in order (and nothing else in it)."""
    out, at = [], 0
    while at < len(body):
        raw, at = _tlv(body, at, 0x02)
        if not raw:
            raise _Bad("empty integer")
        out.append(int.from_bytes(raw, "big", signed=True))
    return out


def _pkcs1(der: bytes) -> list[int]:
    body, end = _tlv(der, 0, 0x30)
    if end != len(der):
        raise _Bad("trailing data after the key")
    numbers = _integers(body)
    if len(numbers) != 9 or numbers[0] != 0:
        raise _Bad("not a two-prime RSA private key")
    return numbers[1:]


def _pkcs8(der: bytes) -> list[int]:
    body, end = _tlv(der, 0, 0x30)
    if end != len(der):
        raise _Bad("trailing data after the key")
    version, at = _tlv(body, 0, 0x02)
    # Version 0 is what `openssl pkcs8` writes. cryptography refuses version 1 (RFC 5958's
    # OneAsymmetricKey) for an RSA key without its public key, so this does too: a key the
    # check passes must sign (tests/test_pem.py, found by the changed-byte property test).
    if version != b"\x00":
        raise _Bad("unknown PKCS#8 version")
    algorithm, at = _tlv(body, at, 0x30)
    oid, params_at = _tlv(algorithm, 0, 0x06)
    if oid != _RSA_OID:
        raise _Bad("not an RSA key (GitHub App keys are RSA)")
    if algorithm[params_at:] != b"\x05\x00":  # rsaEncryption's parameters: NULL (RFC 8017)
        raise _Bad("unexpected DER structure")
    inner, end = _tlv(body, at, 0x04)
    if end != len(body):  # no attributes: `openssl pkcs8` writes none
        raise _Bad("trailing data after the key")
    return _pkcs1(inner)


def _rsa_problem(numbers: list[int]) -> str:
    n, e, d, p, q, dp, dq, qinv = numbers
    if min(numbers) <= 0 or e < 3 or e % 2 == 0:
        return "the key's numbers are out of range"
    if p * q != n:
        return "the modulus is not the product of the key's primes"
    if n.bit_length() < _MIN_BITS:
        return f"the key is {n.bit_length()} bits; GitHub App keys are 2048"
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    if (e * d) % lam != 1 or dp != d % (p - 1) or dq != d % (q - 1) or (qinv * q) % p != 1:
        return "the key's exponents do not match its primes"
    return ""


def rsa_key_problem(pem: str) -> str:
    """Why `pem` cannot sign a GitHub App JWT (RS256), or "" when it can. Pure; the reason
    names the problem, never the key material."""
    if "ENCRYPTED" in pem:  # "BEGIN ENCRYPTED PRIVATE KEY", or a Proc-Type: 4,ENCRYPTED header
        return ENCRYPTED
    found = _BLOCK.search(pem)
    if found is None:
        return _CANNOT + "no complete PEM block (BEGIN ... PRIVATE KEY through END)"
    label, payload, end_label = found.groups()
    if label != end_label:
        return _CANNOT + "its BEGIN and END lines do not match"
    if label not in ("RSA PRIVATE KEY", "PRIVATE KEY"):
        return _CANNOT + f"it is a {label.lower()}, not an RSA private key"
    try:
        der = binascii.a2b_base64("".join(payload.split()), strict_mode=True)
    except binascii.Error:
        return _CANNOT + "its base64 body is damaged"
    try:
        numbers = _pkcs1(der) if label == "RSA PRIVATE KEY" else _pkcs8(der)
    except _Bad as exc:
        return _CANNOT + str(exc)
    why = _rsa_problem(numbers)
    return _CANNOT + why if why else ""
