"""PR references and deploy arguments: every accepted form, and clear errors otherwise."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.refs import PullRef, UsageError, parse_deploy_args, parse_pull_ref
from bot.wiring import web_base_for

owners = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,20}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9._-]{1,30}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
numbers = st.integers(min_value=1, max_value=2**31 - 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", PullRef(None, 42)),
        ("#42", PullRef(None, 42)),
        ("  #42  ", PullRef(None, 42)),
        ("acme/ml-models#42", PullRef("acme/ml-models", 42)),
        ("https://github.com/acme/ml-models/pull/42", PullRef("acme/ml-models", 42)),
        ("https://github.com/acme/ml-models/pull/42/files", PullRef("acme/ml-models", 42)),
        ("<https://github.com/acme/ml-models/pull/42>", PullRef("acme/ml-models", 42)),
        (
            "<https://github.com/acme/ml-models/pull/42|acme/ml-models#42>",
            PullRef("acme/ml-models", 42),
        ),
    ],
)
def test_accepted_forms(text: str, expected: PullRef) -> None:
    assert parse_pull_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "#",
        "#0",
        "042",
        "-1",
        "42 43",
        "acme#42",
        "acme/ml#x",
        "https://gitlab.com/a/b/pull/1",
        "https://github.com/a/b/issues/1",
        "99999999999",
    ],
)
def test_rejected_forms_say_what_was_wrong(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_pull_ref(text)
    assert str(err.value)


def test_enterprise_host_urls() -> None:
    _, hosts = web_base_for("https://ghe.acme.internal/api/v3")
    assert parse_pull_ref("https://ghe.acme.internal/a/b/pull/3", allowed_hosts=hosts) == PullRef(
        "a/b", 3
    )
    with pytest.raises(UsageError):
        parse_pull_ref("https://evil.example/a/b/pull/3", allowed_hosts=hosts)


@given(owners, names, numbers)
def test_every_form_of_the_same_pr_parses_alike(owner: str, name: str, n: int) -> None:
    repo = f"{owner}/{name}"
    assert parse_pull_ref(f"{repo}#{n}") == PullRef(repo, n)
    assert parse_pull_ref(f"https://github.com/{repo}/pull/{n}") == PullRef(repo, n)
    assert parse_pull_ref(f"#{n}") == PullRef(None, n) == parse_pull_ref(str(n))


@settings(max_examples=300)
@given(st.text())
def test_any_text_is_a_ref_or_a_usage_error(text: str) -> None:
    try:
        ref = parse_pull_ref(text)
    except UsageError as exc:
        assert str(exc)
    else:
        assert 1 <= ref.number <= 2**31 - 1


def test_deploy_args() -> None:
    assert parse_deploy_args("9876543210").run_id == "9876543210"
    a = parse_deploy_args("acme/ml@run-7 staging")
    assert (a.repo, a.run_id, a.environment) == ("acme/ml", "run-7", "staging")
    b = parse_deploy_args("https://github.com/acme/ml/actions/runs/123")
    assert (b.repo, b.run_id) == ("acme/ml", "123")
    for bad in ("", "a b c", "bad id!", "x production;rm"):
        with pytest.raises(UsageError):
            parse_deploy_args(bad)


@pytest.mark.parametrize(
    ("parse", "text", "name"),
    [
        (parse_pull_ref, "", "missing_pull_request"),
        (parse_pull_ref, "zzz", "bad_pull_request_reference"),
        (parse_pull_ref, "bad!/x#1", "bad_repository_name"),
        (parse_pull_ref, "https://evil.example/a/b/pull/1", "unknown_github_host"),
        (parse_pull_ref, "https://github.com/a/b/issues/1", "not_a_pull_request_url"),
        (parse_deploy_args, "", "missing_run_id"),
        (parse_deploy_args, "1 2 3", "too_many_words"),
        (parse_deploy_args, "https://github.com/a/b/pulls/1", "not_a_run_url"),
        (parse_deploy_args, "$$$", "bad_run_id"),
        (parse_deploy_args, "1 e$v", "bad_environment_name"),
    ],
)
def test_usage_errors_have_names_for_the_log(parse: Any, text: str, name: str) -> None:
    """The log names what was wrong; the message itself may quote what was typed."""
    with pytest.raises(UsageError) as caught:
        parse(text)
    assert caught.value.name == name
