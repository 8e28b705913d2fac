"""GitHub webhook signatures, checked against GitHub's published test vector."""

from bot.signing import github_signature, verify_github

VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_published_vector() -> None:
    assert github_signature(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIG
    assert verify_github(VECTOR_SECRET, VECTOR_BODY, VECTOR_SIG)


def test_wrong_body_secret_or_header_is_refused() -> None:
    assert not verify_github(VECTOR_SECRET, VECTOR_BODY + b" ", VECTOR_SIG)
    assert not verify_github("other", VECTOR_BODY, VECTOR_SIG)
    assert not verify_github(VECTOR_SECRET, VECTOR_BODY, None)
    assert not verify_github(VECTOR_SECRET, VECTOR_BODY, "sha1=" + VECTOR_SIG[7:])
    assert not verify_github(VECTOR_SECRET, VECTOR_BODY, VECTOR_SIG.upper())
