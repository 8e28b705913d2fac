"""The redactor's fast path (literal pre-checks, a cache of short values) scrubs exactly what
running every expression on every value scrubs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot import logs

SECRETS = ["s3cr3t-signing-value", "xoxb-known-bot-token-1234"]

# Text built from pieces of every shape (and their near misses, in any case), so that
# matches, partial matches and case changes are common rather than rare.
PIECES = st.sampled_from(
    [
        "ghs_",
        "ghp_",
        "github_pat_",
        "A1b2C3d4E5f6G7h8I9j0K1l2",
        "xoxb-",
        "XOXB-",
        "xapp-",
        "eyJ",
        "eyJhbGciOi.",
        ".c2lnbmF0dXJl",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----END RSA PRIVATE KEY-----",
        "private key",
        "Authorization: Bearer ",
        "AUTHORIZATION='token ",
        "authorization=basic ",
        "postgresql://user:",
        "pa55@host/db",
        "https://hooks.slack.com/commands/T1/2/abc",
        "https%3A%2F%2FHOOKS.SLACK.COM%2Fx",
        "https:\\/\\/hooks.slack.com\\/y",
        "://",
        "@",
        " ",
        "\n",
        "'",
        '"',
        ",",
        "}",
        "\u00e9",
        "\u017f",
        "\u212a",
        "\u0130",
        "s3cr3t-signing-value",
        "xoxb-known-bot-token-1234",
    ]
)
TEXTS = st.one_of(
    st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=24).map("".join),
    st.text(max_size=300),
)


def every_expression(red: logs.Redactor, value: str) -> str:
    """The redactor without its fast path: every secret, then every shape's expression."""
    for s in red.secrets:
        value = value.replace(s, "[redacted]")
    for pattern, keep in logs._SHAPES:
        value = pattern.sub((keep + "[redacted]") if keep else "[redacted]", value)
    return value


@settings(max_examples=600, deadline=None)
@given(TEXTS)
def test_the_fast_path_scrubs_what_every_expression_scrubs(text: str) -> None:
    red = logs.Redactor(SECRETS)
    assert red.scrub(text) == every_expression(red, text)
    assert red.scrub(text) == every_expression(red, text)  # again: from the cache
    long = text + " " * (logs._CACHED_LEN + 1)  # past the cached length
    assert red.scrub(long) == every_expression(red, long)


def test_text_whose_case_folding_lower_does_not_show_runs_every_expression() -> None:
    """(?i) matches U+0130 as "i" and U+017F as "s"; str.lower() maps neither so: such text
    (not ASCII) skips no expression."""
    red = logs.Redactor([])
    for text in (
        "Author\u0130zation: Bearer abcdef123",
        "see https://hook\u017f.slack.com/commands/T/1",
    ):
        assert red.scrub(text) == every_expression(red, text)
        assert "[redacted]" in red.scrub(text), text


def test_a_needle_list_for_every_shape() -> None:
    assert len(logs._NEEDS) == len(logs._SHAPES)


def test_each_shape_is_still_found_through_the_fast_path() -> None:
    """One example per shape, in the case the expression accepts: each comes out redacted."""
    red = logs.Redactor([])
    examples = [
        "token ghs_" + "A1b2" * 8,
        "xoxb-123-456-abcdefABCDEF",
        "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjQyfQ.c2lnbmF0dXJlLWJ5dGVz",
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
        "AUTHORIZATION: Bearer abcdef",
        "postgresql://app:hunter22@db/x",
        "see HTTPS://HOOKS.SLACK.COM/commands/T1/2/abc",
    ]
    for text in examples:
        assert "[redacted]" in red.scrub(text), text
