"""Environment locks through the real ASGI app: `/deploy lock`, `unlock`, `locks`; a lock
refuses `/deploy` for everyone but its holder, survives a restart, is audited, expires, and
of concurrent lock attempts exactly one wins. The gate's interface is tested directly."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from slack_sdk.models.views import View

from bot import logs
from bot.config import ConfigError, parse_config
from bot.refs import UsageError, parse_lock_args
from handlers.deploy.locks import EXPIRY_JOB, expire_locks, lock_refusal_for_gate
from tests.conftest import CHANNEL, REPO, USER, Harness
from tests.test_deploy import APPROVER, APPROVER2, RUN_ID, STRANGER, add_training_run, click
from tests.test_deploy import request_deploy as deploy_with_card

# Text a person might type as a reason: a mention, a link and mrkdwn must stay text.
REASON = "release freeze <!channel> <https://evil.example|docs> *until* Friday"
ESCAPED = "release freeze &lt;!channel&gt; &lt;https://evil.example|docs&gt; *until* Friday"


@pytest.fixture(autouse=True)
def _run(github: Any) -> None:
    add_training_run(github)


def say(h: Harness, text: str, *, user: str = USER, channel: str = CHANNEL) -> dict[str, Any]:
    """Send `/deploy <text>`; the answer Slack gets in the HTTP response (the ack)."""
    resp = h.slash("/deploy", text, user=user, channel=channel)
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


def deploy_refused(h: Harness, text: str = str(RUN_ID), *, user: str = USER) -> str:
    """`/deploy` that must be refused before anything is stored: the ephemeral text."""
    before = len(h.store.find(kind="deploy"))
    body = say(h, text, user=user)
    assert body["response_type"] == "ephemeral"
    assert "request `" not in body["text"], body["text"]
    h.settle()
    assert len(h.store.find(kind="deploy")) == before
    return str(body["text"])


def lock_rows(h: Harness) -> list[dict[str, Any]]:
    return [r for r in h.store.audit_rows() if r["action"].startswith("deploy.lock")] + [
        r for r in h.store.audit_rows() if r["action"] == "deploy.unlock"
    ]


# -- lock → /deploy refused; other environments, the holder, unlock -----------------------------


def test_a_lock_refuses_deploy_naming_holder_and_reason(harness: Harness, github, slack) -> None:
    h = harness
    body = say(h, f"lock production {REASON}", user=APPROVER)
    assert body["response_type"] == "in_channel", body
    assert f"<@{APPROVER}> locked deploys to *production* in `{REPO}`" in body["text"]
    assert ESCAPED in body["text"] and "<!channel>" not in body["text"]

    refusal = deploy_refused(h)
    print("\n--- /deploy refused by a lock (ephemeral) ---\n" + refusal)
    assert f"locked by <@{APPROVER}>" in refusal
    assert ESCAPED in refusal and "<!channel>" not in refusal and "<https://evil" not in refusal
    assert "since <!date^" in refusal
    assert "`/deploy unlock production`" in refusal
    assert "Other environments are not affected" in refusal
    assert github.dispatches == [] and slack.calls_to("chat.postMessage") == []

    # Another environment is not affected: its card is posted.
    staging = deploy_with_card(h, slack, f"{RUN_ID} staging")
    assert staging.environment == "staging" and staging.root_ts

    # The holder may still deploy to the environment they locked.
    mine = deploy_with_card(h, slack, str(RUN_ID), user=APPROVER)
    assert mine.environment == "production" and mine.status == "pending_approval"

    # Unlock: cards again for everyone.
    body = say(h, "unlock production", user=APPROVER)
    assert body["response_type"] == "in_channel"
    assert f"<@{APPROVER}> unlocked *production*" in body["text"]
    after = deploy_with_card(h, slack)
    assert after.environment == "production" and after.root_ts
    assert [r["action"] for r in lock_rows(h)] == ["deploy.lock", "deploy.unlock"]
    assert {r["actor"] for r in lock_rows(h)} == {APPROVER}


def test_environment_names_compare_without_case(harness: Harness, github, slack) -> None:
    say(harness, "lock PRODUCTION", user=APPROVER)
    assert "locked by" in deploy_refused(harness, f"{RUN_ID} Production")


def test_locking_a_locked_environment_tells_who_holds_it(harness: Harness, github, slack) -> None:
    say(harness, "lock production db migration", user=APPROVER)
    body = say(harness, "lock production mine now", user=APPROVER2)
    assert body["response_type"] == "ephemeral"
    assert f"already locked by <@{APPROVER}>" in body["text"]
    assert "“db migration”" in body["text"] and "/deploy unlock production" in body["text"]
    body = say(harness, "lock production", user=APPROVER)
    assert "already locked by you" in body["text"]
    assert harness.store.lock_of(REPO, "production").reason == "db migration"  # unchanged


def test_a_lock_survives_a_restart(make_harness, github, slack) -> None:
    first = make_harness()
    say(first, "lock production nightly backfill", user=APPROVER)
    second = make_harness()  # a new process on the same database
    assert second.bridge is not first.bridge
    refusal = deploy_refused(second)
    assert f"locked by <@{APPROVER}>" in refusal and "nightly backfill" in refusal
    assert "nightly backfill" in say(second, "locks")["text"]
    say(second, "unlock production", user=APPROVER)
    assert deploy_with_card(second, slack).root_ts


# -- who may lock and unlock ------------------------------------------------------------------


def test_a_stranger_can_neither_lock_nor_unlock(harness: Harness, github, slack) -> None:
    h = harness
    body = say(h, "lock production mine", user=STRANGER)
    assert body["response_type"] == "ephemeral"
    assert "You cannot lock *production*" in body["text"]
    assert f"<@{APPROVER}>" in body["text"] and f"<@{APPROVER2}>" in body["text"]
    assert h.store.lock_of(REPO, "production") is None
    deploy_with_card(h, slack)  # still free

    say(h, "lock production", user=APPROVER)
    body = say(h, "unlock production", user=STRANGER)
    assert body["response_type"] == "ephemeral"
    assert "You cannot unlock *production*" in body["text"]
    assert f"<@{APPROVER}> locked it and may unlock it too" in body["text"]
    assert h.store.lock_of(REPO, "production") is not None
    refused = [r for r in h.store.audit_rows() if r["action"] == "deploy.lock.refused"]
    assert [(r["actor"], r["outcome"]) for r in refused] == [(STRANGER, "refused")] * 2

    # Another approver may unlock the holder's lock.
    body = say(h, "unlock production", user=APPROVER2)
    assert body["response_type"] == "in_channel" and "unlocked" in body["text"]
    assert h.store.lock_of(REPO, "production") is None


def test_the_holder_may_unlock_without_being_an_approver(
    make_harness, github, slack, config_data
) -> None:
    """The approvers change after the lock was taken: the holder may still unlock."""
    first = make_harness(config_data)
    say(first, "lock production", user=APPROVER)
    config_data["commands"]["deploy"]["approval"]["approvers"] = [APPROVER2, USER]
    second = make_harness(config_data)
    body = say(second, "unlock production", user=APPROVER)
    assert body["response_type"] == "in_channel" and "unlocked" in body["text"]


def test_usergroup_approvers_may_lock(make_harness, github, slack, config_data) -> None:
    config_data["commands"]["deploy"]["environments"]["staging"] = {
        "approval": {"approver_usergroups": ["S0SRE"]}
    }
    slack.usergroups["S0SRE"] = ["U0SREONE"]
    h = make_harness(config_data)
    assert "You cannot lock *staging*" in say(h, "lock staging", user=APPROVER)["text"]
    assert "members of <!subteam^S0SRE>" in say(h, "lock staging", user=APPROVER)["text"]
    assert say(h, "lock staging", user="U0SREONE")["response_type"] == "in_channel"


# -- expiry -----------------------------------------------------------------------------------


def run_job(h: Harness, job_id: str) -> Any:
    hk = h.bridge.housekeeping
    for installer in hk._extra:
        installer(hk)
    hk.is_leader = True
    job = hk.scheduler.get_job(job_id)
    assert job is not None
    return job


def test_an_expired_lock_stops_blocking_and_is_removed_audited_and_announced(
    make_harness, github, slack, clock, config_data
) -> None:
    config_data["commands"]["deploy"]["lock_expires_after_hours"] = 2
    h = make_harness(config_data, use_clock=True)
    body = say(h, f"lock production {REASON}", user=APPROVER)
    assert "or until it expires <!date^" in body["text"]
    job = run_job(h, EXPIRY_JOB)
    assert job.trigger.interval.total_seconds() == 60
    clock.advance(2 * 3600 - 1)
    job.func()  # not yet
    assert "locked by" in deploy_refused(h)
    assert slack.calls_to("chat.postMessage") == []

    clock.advance(2)  # expired: no longer blocks, even before the job removes it
    assert deploy_with_card(h, slack).root_ts
    posts = len(slack.calls_to("chat.postMessage"))
    job.func()
    notices = slack.calls_to("chat.postMessage")[posts:]
    assert len(notices) == 1
    notice = notices[0].params
    print("\n--- lock expiry notice (chat.postMessage) ---\n" + notice["text"])
    assert notice["channel"] == CHANNEL and "thread_ts" not in notice
    assert "has expired" in notice["text"] and f"<@{APPROVER}>" in notice["text"]
    assert ESCAPED in notice["text"] and "<!channel>" not in notice["text"]
    expired = [r for r in h.store.audit_rows() if r["action"] == "deploy.lock.expired"]
    assert [(r["actor"], r["outcome"]) for r in expired] == [("bridge", "expired")]
    assert h.store.expired_locks() == []
    job.func()  # once only
    assert len(slack.calls_to("chat.postMessage")) == posts + 1
    assert "No environment is locked" in say(h, "locks")["text"]


def test_an_expiry_notice_waits_out_a_slack_outage(
    make_harness, github, slack, clock, config_data
) -> None:
    config_data["commands"]["deploy"]["lock_expires_after_hours"] = 1
    h = make_harness(config_data, use_clock=True)
    say(h, "lock production", user=APPROVER)
    clock.advance(3601)
    job = run_job(h, EXPIRY_JOB)
    slack.fail_next("chat.postMessage", "service_unavailable", status=503, times=10)
    job.func()
    assert len(h.store.expired_locks()) == 1  # kept: the notice is still to be said
    slack.reset()
    job.func()
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert h.store.expired_locks() == []
    assert [r["action"] for r in h.store.audit_rows()].count("deploy.lock.expired") == 1


def test_locking_over_an_expired_lock_ends_it_once(
    make_harness, github, slack, clock, config_data
) -> None:
    config_data["commands"]["deploy"]["lock_expires_after_hours"] = 1
    h = make_harness(config_data, use_clock=True)
    say(h, "lock production", user=APPROVER)
    clock.advance(3601)
    body = say(h, "lock production new reason", user=APPROVER2)
    assert body["response_type"] == "in_channel"
    assert f"(The lock <@{APPROVER}> took had expired.)" in body["text"]
    assert [r["action"] for r in lock_rows(h)] == [
        "deploy.lock",
        "deploy.lock.expired",
        "deploy.lock",
    ]
    run_job(h, EXPIRY_JOB).func()  # nothing left to expire: the new lock is not touched
    assert h.store.lock_of(REPO, "production").user_id == APPROVER2


def test_lock_expiry_setting_is_validated() -> None:
    base = {"commands": {"deploy": {"approval": "none", "lock_expires_after_hours": 0}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(base)
    assert "commands.deploy.lock_expires_after_hours" in caught.value.problems[0]
    base["commands"]["deploy"]["lock_expires_after_hours"] = "soon"
    with pytest.raises(ConfigError):
        parse_config(base)
    base["commands"]["deploy"]["lock_expires_after_hours"] = 12
    assert parse_config(base).commands.deploy.lock_expires_after_hours == 12
    assert parse_config({}).commands.deploy.lock_expires_after_hours is None


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_lock_commands_have_exactly_one_winner(
    make_harness, github, slack, config_data
) -> None:
    crowd = [f"U0CROWD{i:02d}" for i in range(12)]
    config_data["commands"]["deploy"]["approval"]["approvers"] = crowd
    h = make_harness(config_data)
    start = threading.Barrier(len(crowd))

    def lock(user: str) -> dict[str, Any]:
        start.wait()
        return say(h, f"lock production by {user}", user=user)

    with ThreadPoolExecutor(len(crowd)) as pool:
        answers = list(pool.map(lock, crowd))
    winners = [a for a in answers if a["response_type"] == "in_channel"]
    assert len(winners) == 1
    holder = h.store.lock_of(REPO, "production")
    assert holder is not None and f"<@{holder.user_id}> locked" in winners[0]["text"]
    for lost in (a for a in answers if a["response_type"] == "ephemeral"):
        assert f"already locked by <@{holder.user_id}>" in lost["text"]
    assert [r["action"] for r in lock_rows(h)] == ["deploy.lock"]


def test_concurrent_store_attempts_have_exactly_one_winner(harness: Harness) -> None:
    """Straight at the store, many threads at once (SQLite's writer queue or PostgreSQL's
    row locks): the primary key lets exactly one insert through."""
    store = harness.store
    users = [f"U0RACE{i:02d}" for i in range(20)]
    start = threading.Barrier(len(users))

    def attempt(user: str) -> Any:
        start.wait()
        return store.take_lock(
            repo=REPO,
            environment="production",
            user_id=user,
            channel_id=CHANNEL,
            reason="",
            expires_at=None,
        )

    with ThreadPoolExecutor(len(users)) as pool:
        results = list(pool.map(attempt, users))
    taken = [r for r in results if r.taken]
    assert len(taken) == 1
    assert {r.lock.lock_id for r in results} == {taken[0].lock.lock_id}


# -- listing: /deploy locks, /deploy status, App Home, help ----------------------------------


def test_locks_are_listed_in_locks_status_home_and_help(harness: Harness, github, slack) -> None:
    h = harness
    say(h, f"lock staging {REASON}", user=APPROVER)
    listing = say(h, "locks")
    assert listing["response_type"] == "ephemeral"
    assert f"*staging* in `{REPO}`: locked by <@{APPROVER}>" in listing["text"]
    assert ESCAPED in listing["text"]

    status = say(h, "status")["text"]
    assert "*Locked environments*" in status and ESCAPED in status
    assert "Locked environments" in say(h, "status staging")["text"]
    assert "Locked environments" not in say(h, "status production")["text"]

    helped = say(h, "help")["text"]
    assert "/deploy lock [owner/repo] <environment> [reason]" in helped
    assert "/deploy unlock" in helped and "/deploy locks" in helped

    h.event({"type": "app_home_opened", "user": USER, "tab": "home", "event_ts": "1.1"})
    view = [c for c in slack.wait_for("views.publish") if c.params["user_id"] == USER][-1]
    home = view.params["view"]
    View(**home).validate_json()
    text = json.dumps(home)
    assert "Locked environments" in text and "locked by <@U0APPROVER1>" in text
    assert json.dumps(ESCAPED)[1:-1] in text and "<!channel>" not in text


def test_a_named_repository_is_locked_apart(make_harness, github, slack, config_data) -> None:
    config_data["repositories"]["allowed"] = ["acme/other"]
    h = make_harness(config_data)
    github.add_repo("acme/other", installation_id=101)
    body = say(h, "lock acme/other production", user=APPROVER)
    assert "in `acme/other`" in body["text"]
    assert "`/deploy unlock acme/other production`" in body["text"]
    assert deploy_with_card(h, slack).root_ts  # this channel's repository is free
    assert "locked by" in deploy_refused(h, f"acme/other@{RUN_ID}")
    body = say(h, "lock not-allowed/repo production", user=APPROVER)
    assert "not a repository this bridge works on" in body["text"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lock", "Which environment?"),
        ("unlock", "Which environment?"),
        ("lock moon", "`moon` is not an environment I deploy to"),
        ("lock acme/ml-models", "Which environment?"),
        ("lock e$v", "is not an environment name"),
        ("unlock production now", "Too many words"),
        ("locks please", "Too many words"),
        ("lock bad!/repo production", "is not a repository name"),
        ("lock production " + "x" * 301, "The reason is too long"),
    ],
)
def test_bad_input_is_explained_with_usage(harness: Harness, text: str, expected: str) -> None:
    body = say(harness, text, user=APPROVER)
    assert body["response_type"] == "ephemeral"
    assert expected in body["text"], body["text"]
    assert "/deploy lock [owner/repo] <environment> [reason]" in body["text"]
    assert harness.store.active_locks() == []


def test_unlocking_a_free_environment_says_so(harness: Harness) -> None:
    body = say(harness, "unlock staging", user=APPROVER)
    assert body["response_type"] == "ephemeral" and "is not locked" in body["text"]


def test_parse_lock_args() -> None:
    args = parse_lock_args("LOCK acme/x  Production   big   release ")
    assert (args.action, args.repo, args.environment, args.reason) == (
        "lock",
        "acme/x",
        "Production",
        "big release",
    )
    assert parse_lock_args("locks").environment is None
    with pytest.raises(UsageError) as caught:
        parse_lock_args("lock")
    assert caught.value.name == "missing_environment"
    with pytest.raises(UsageError) as caught:
        parse_lock_args("lock production " + "y" * 400)
    assert caught.value.name == "lock_reason_too_long"


# -- the reason is never logged ---------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[_Lines]:
    capture = _Lines()
    capture.setFormatter(logs.JsonFormatter())
    capture.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


def test_the_reason_is_never_logged(
    make_harness, github, slack, clock, config_data, log_lines: _Lines
) -> None:
    config_data["commands"]["deploy"]["lock_expires_after_hours"] = 1
    h = make_harness(config_data, use_clock=True)
    secret_reason = f"reason-{uuid.uuid4().hex}"
    say(h, f"lock production {secret_reason}", user=APPROVER)
    say(h, f"lock production {secret_reason}", user=APPROVER2)
    deploy_refused(h)
    say(h, "locks")
    clock.advance(3601)
    run_job(h, EXPIRY_JOB).func()
    assert any("decision recorded" in line for line in log_lines.lines)
    assert not [line for line in log_lines.lines if secret_reason in line]


# -- the gate's interface ---------------------------------------------------------------------


def test_lock_refusal_for_gate(make_harness, github, slack, config_data, clock) -> None:
    config_data["github_users"] = {APPROVER: "Alice-GH"}
    config_data["commands"]["deploy"]["lock_expires_after_hours"] = 1
    h = make_harness(config_data, use_clock=True)
    deps = h.bridge.deps
    assert lock_refusal_for_gate(deps, REPO, "production", "bob") is None  # free
    say(h, f"lock production {REASON}", user=APPROVER)

    comment = lock_refusal_for_gate(deps, REPO, "production", "bob")
    print("\n--- protection-rule comment for a locked environment ---\n" + str(comment))
    assert comment is not None and comment.startswith(f"locked by @Alice-GH: {REASON} (since ")
    assert "/deploy unlock production" in comment
    assert lock_refusal_for_gate(deps, REPO, "production", None) == comment
    # The holder's own linked login passes (GitHub logins compare without case).
    assert lock_refusal_for_gate(deps, REPO, "production", "alice-gh") is None
    # GitHub's environment name in another case, another repository, another environment.
    assert lock_refusal_for_gate(deps, REPO.upper(), "PRODUCTION", "bob") == comment
    assert lock_refusal_for_gate(deps, "acme/other", "production", "bob") is None
    assert lock_refusal_for_gate(deps, REPO, "staging", "bob") is None

    # A holder without a linked GitHub login: named by Slack id, and no login passes.
    say(h, "lock staging", user=APPROVER2)
    comment = lock_refusal_for_gate(deps, REPO, "staging", "Alice-GH")
    assert comment is not None
    assert comment.startswith(f"locked by Slack user {APPROVER2}: no reason given (since ")

    clock.advance(3601)  # expired: no longer refuses
    assert lock_refusal_for_gate(deps, REPO, "production", "bob") is None


def test_a_crash_between_notice_and_removal_does_not_repeat_the_notice(
    make_harness, github, slack, clock, config_data, monkeypatch
) -> None:
    """The notice is posted, then the process dies before the lock row is removed: the next
    run (here, after a restart) removes it without a second notice."""
    config_data["commands"]["deploy"]["lock_expires_after_hours"] = 1
    first = make_harness(config_data, use_clock=True)
    say(first, "lock production", user=APPROVER)
    clock.advance(3601)

    def crash(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("killed")

    monkeypatch.setattr(first.store, "release_lock", crash)
    with pytest.raises(RuntimeError):
        expire_locks(first.bridge.deps)
    assert len(slack.calls_to("chat.postMessage")) == 1
    second = make_harness(config_data, use_clock=True)
    run_job(second, EXPIRY_JOB).func()
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert second.store.expired_locks() == []
    assert [r["action"] for r in second.store.audit_rows()].count("deploy.lock.expired") == 1


def test_a_lock_is_released_and_audited_once(harness: Harness) -> None:
    """The expiry job and an unlock racing on the same lock: one removes it, one audit row."""
    store = harness.store
    taken = store.take_lock(
        repo=REPO,
        environment="production",
        user_id=APPROVER,
        channel_id=CHANNEL,
        reason="",
        expires_at=None,
    )
    assert store.release_lock(taken.lock, actor=APPROVER2) is True
    assert store.release_lock(taken.lock, actor="bridge", expired=True) is False
    actions = [r["action"] for r in store.audit_rows()]
    assert actions == ["deploy.lock", "deploy.unlock"]


def test_a_card_posted_before_the_lock_cannot_be_approved_while_it_holds(
    harness: Harness, github, slack
) -> None:
    h = harness
    waiting = deploy_with_card(h, slack)
    say(h, "lock production incident", user=APPROVER2)
    click(h, "deploy_approve", waiting, APPROVER)
    h.settle()
    told = [c for c in slack.calls_to("chat.postEphemeral") if c.params["user"] == APPROVER]
    assert f"locked by <@{APPROVER2}>" in told[-1].params["text"]
    assert h.store.get(waiting.id).status == "pending_approval" and github.dispatches == []
    say(h, "unlock production", user=APPROVER2)
    click(h, "deploy_approve", waiting, APPROVER)
    github.wait_for("POST", r"/dispatches$")
    h.settle()
    assert len(github.dispatches) == 1


def test_many_long_locks_fit_the_home_tab(make_harness, github, slack, config_data) -> None:
    """Reasons of 300 characters that escaping makes five times longer: whole lines only,
    and a count of the rest, within one section."""
    envs = {f"env{i}": {} for i in range(12)}
    config_data["commands"]["deploy"]["environments"] = envs
    h = make_harness(config_data)
    for env in envs:
        say(h, f"lock {env} " + "&" * 300, user=APPROVER)
    h.event({"type": "app_home_opened", "user": USER, "tab": "home", "event_ts": "1.1"})
    view = [c for c in slack.wait_for("views.publish") if c.params["user_id"] == USER][-1]
    home = view.params["view"]
    View(**home).validate_json()
    i = next(
        n
        for n, b in enumerate(home["blocks"])
        if b.get("text", {}).get("text") == "Locked environments"
    )
    text = home["blocks"][i + 1]["text"]["text"]
    assert len(text) <= 3000 and text.endswith("more")
    assert all(line.endswith("”") for line in text.split("\n")[:-1])
