"""GitHub failures as GitHubApp sees them: documented statuses from Prism (`Prefer: code=`),
undocumented ones injected by the proxy. Each maps to one class of the bot's error tree."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from github_contract import GitHubContract

from bot.github import (
    NotFound,
    NotInstalled,
    PermissionDenied,
    RateLimited,
    Unavailable,
    ValidationFailed,
)

pytestmark = pytest.mark.contract

REPO = "acme/ml-models"
PULL = rf"^/repos/{REPO}/pulls/42$"
LABELS = rf"^/repos/{REPO}/issues/42/labels$"
DISPATCH = rf"^/repos/{REPO}/dispatches$"


def test_pull_request_not_found(gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    gh.documented("GET", PULL, 404)
    with pytest.raises(NotFound) as caught:
        make_app().get_pull(REPO, 42)
    assert caught.value.status == 404
    assert "found nothing" in caught.value.message


def test_app_not_installed(gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    gh.documented("GET", rf"^/repos/{REPO}/installation$", 404)
    app = make_app()
    with pytest.raises(NotInstalled) as caught:
        app.get_pull(REPO, 42)
    assert "not installed on acme/ml-models" in caught.value.message
    assert gh.requests_to("GET", PULL) == []
    # Installed a minute later: the next attempt looks again (a miss is not cached).
    assert app.get_pull(REPO, 42).number == 1347


def test_missing_permission(gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    gh.forbidden("POST", LABELS)
    with pytest.raises(PermissionDenied) as caught:
        make_app().add_label(REPO, 42, "evaluate")
    assert caught.value.status == 403
    assert "Resource not accessible by integration" in caught.value.message
    assert "may not add the label 'evaluate'" in caught.value.message


def test_validation_failed(gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    gh.documented("POST", LABELS, 422)
    with pytest.raises(ValidationFailed) as caught:
        make_app().add_label(REPO, 42, "evaluate")
    assert caught.value.status == 422 and "Validation Failed" in caught.value.message


def test_primary_rate_limit(gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    reset = gh.rate_limited("GET", PULL, reset_in=600)
    app = make_app()
    with pytest.raises(RateLimited) as caught:
        app.get_pull(REPO, 42)
    assert caught.value.retry_at == reset
    assert time.strftime("%H:%M UTC", time.gmtime(reset)) in caught.value.message
    assert len(gh.requests_to("GET", PULL)) == 1  # no sleeping through it on this thread
    assert app.get_pull(REPO, 42).number == 1347  # the next attempt after the reset works


def test_secondary_rate_limit(gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    gh.secondary_rate_limited("POST", DISPATCH, retry_after=90)
    before = time.time()
    with pytest.raises(RateLimited) as caught:
        make_app().dispatch(REPO, "evaluate", {"request_id": "0123456789ab"})
    assert caught.value.status == 429
    assert before + 89 <= (caught.value.retry_at or 0) <= time.time() + 91
    assert len(gh.requests_to("POST", DISPATCH)) == 1


def test_read_retried_after_one_bad_gateway(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    gh.bad_gateway("GET", PULL)
    assert make_app().get_pull(REPO, 42).number == 1347
    assert [r.status for r in gh.requests_to("GET", PULL)] == [502, 200]


def test_read_gives_up_after_its_retry_budget(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    gh.bad_gateway("GET", PULL, times=5)
    with pytest.raises(Unavailable) as caught:
        make_app(read_retries=2).get_pull(REPO, 42)
    assert "(502)" in caught.value.message and "I will retry" in caught.value.message
    assert len(gh.requests_to("GET", PULL)) == 3  # one try + two retries


def test_write_is_not_retried_blindly(gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    """A 502 can hide a dispatch GitHub did accept: one POST only, the job layer decides."""
    gh.bad_gateway("POST", DISPATCH, applied=True)
    with pytest.raises(Unavailable):
        make_app().dispatch(REPO, "evaluate", {"request_id": "0123456789ab"})
    assert len(gh.requests_to("POST", DISPATCH)) == 1


def test_slow_read_is_retried(gh: GitHubContract, make_app: Callable[..., Any]) -> None:
    gh.slow("GET", PULL, 1.6)
    assert make_app(timeout=1).get_pull(REPO, 42).number == 1347
    assert len(gh.requests_to("GET", PULL)) == 2


def test_slow_write_is_reported_not_repeated(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    gh.slow("POST", LABELS, 1.6)
    with pytest.raises(Unavailable) as caught:
        make_app(timeout=1).add_label(REPO, 42, "evaluate")
    assert "did not answer in time" in caught.value.message
    time.sleep(0.7)  # let the slow answer finish on the double's side
    assert len(gh.requests_to("POST", LABELS)) == 1


def test_missing_label_on_removal_is_success(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    gh.documented("DELETE", r"/labels/evaluate$", 404)
    make_app().remove_label(REPO, 42, "evaluate")  # the goal (label absent) is reached


def test_unknown_collaborator_has_no_permission(
    gh: GitHubContract, make_app: Callable[..., Any]
) -> None:
    gh.documented("GET", r"/collaborators/nobody/permission$", 404)
    assert make_app().permission(REPO, "nobody") == "none"
