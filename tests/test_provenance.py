"""Issue 10, evidence nobody can fool: who may supply metrics, where they came from, links whose
text is their target, bounded rendering, and Slack hygiene — through the real ASGI app."""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webhook_examples import fixture

import bot.markdown as md
import bot.mrkdwn as mk
from bot import slacktext
from bot.config import ConfigError, MetricsTrust, parse_config
from bot.provenance import commit_of, trusted_as
from tests.conftest import HEAD_SHA, REPO, Harness
from tests.test_deploy import RUN_ID, add_training_run, request_deploy

OUTSIDER_TEXT = "OUTSIDER-7f3e"
INVISIBLE = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u200c\u200d\u2060\ufeff"


def metrics_body(loss: str, *, extra: str = "") -> str:
    return (
        "<!-- chatops:metrics -->\n### Evaluation\n| Source | Loss |\n|---|---:|\n"
        f"| Head | {loss} |\n{extra}"
    )


def comment_payload(
    body: str,
    *,
    cid: int = 1001,
    login: str = "github-actions[bot]",
    user_type: str = "Bot",
    association: str = "NONE",
    created: str = "2099-01-01T00:05:00Z",
) -> dict[str, Any]:
    """A real `issue_comment` `created` payload, pointed at PR 42 of the test repository."""
    payload = copy.deepcopy(fixture("issue_comment.created"))
    payload["repository"]["full_name"] = REPO
    payload["issue"]["number"] = 42
    payload["issue"]["pull_request"] = {"url": f"https://api.github.com/repos/{REPO}/pulls/42"}
    comment = payload["comment"]
    comment.update(
        {
            "id": cid,
            "body": body,
            "author_association": association,
            "created_at": created,
            "html_url": f"https://github.com/{REPO}/pull/42#issuecomment-{cid}",
        }
    )
    comment["user"].update({"login": login, "type": user_type, "id": 5000 + cid})
    return payload


def start_evaluation(h: Harness, slack: Any) -> Any:
    assert h.slash("/evaluate", "42").status_code == 200
    slack.wait_for("chat.update", 1)
    h.settle()
    return h.store.find(repo=REPO, pr_number=42, kind="evaluate")[0]


def thread_posts(slack: Any, req: Any) -> list[Any]:
    return [
        c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts") == req.root_ts
    ]


def card_blocks(slack: Any, req: Any) -> list[dict[str, Any]]:
    return list(slack.messages[(req.channel_id, req.root_ts)]["blocks"])


def metrics_part(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The card's metrics blocks: its table and the context line naming the source."""
    return [
        b
        for b in blocks
        if b["type"] == "table" or (b["type"] == "context" and "Metrics for" in json.dumps(b))
    ]


def table_values(blocks: list[dict[str, Any]]) -> list[str]:
    return [
        cell["text"]
        for b in blocks
        if b["type"] == "table"
        for row in b["rows"][1:]
        for cell in row
        if cell["type"] == "raw_text"
    ]


# -- 1. who may supply metrics -------------------------------------------------------------


def test_an_outsiders_metrics_comment_is_not_relayed_is_counted_and_never_on_the_card(
    harness: Harness, github, slack, caplog
) -> None:
    add_training_run(github)
    req = start_evaluation(harness, slack)
    before = len(slack.calls)
    payload = comment_payload(
        metrics_body(f"0.001 {OUTSIDER_TEXT}"), login="mallory", user_type="User"
    )
    with caplog.at_level(logging.INFO):
        assert harness.webhook("issue_comment", payload).status_code == 202
        harness.settle()
        # A redelivery (and the poller, every cycle) sees the same comment: counted once.
        assert harness.webhook("issue_comment", payload).status_code == 202
        harness.settle()
    calls = [(c.method, c.params.get("thread_ts")) for c in slack.calls[before:]]
    print("Slack calls after the outsider's metrics comment:", calls)
    assert calls == []
    assert thread_posts(slack, req) == [] or all(
        OUTSIDER_TEXT not in json.dumps(c.params) for c in thread_posts(slack, req)
    )
    scrape = harness.client.get("/metrics").text
    assert "chatops_untrusted_metrics_comments_total 1.0" in scrape
    refused = [r for r in caplog.records if "untrusted author" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.INFO
    assert refused[0].comment_id == 1001 and refused[0].github_user_id == 6001
    for record in caplog.records:  # ids only: no word of the comment reaches the log
        assert OUTSIDER_TEXT not in json.dumps(record.__dict__, default=str)

    deploy = request_deploy(harness, slack, str(RUN_ID))
    blocks = card_blocks(slack, deploy)
    print("Card metrics blocks:", json.dumps(metrics_part(blocks)))
    assert metrics_part(blocks) == []
    assert OUTSIDER_TEXT not in json.dumps(blocks)


def test_trusted_authors_from_chatops_yml_may_supply_metrics(
    make_harness, config_data, github, slack
) -> None:
    config_data["metrics"] = {"trusted_authors": ["ci-bot"]}
    h = make_harness(config_data)
    req = start_evaluation(h, slack)
    for cid, loss, login in ((1, "0.4", "mallory"), (2, "0.2", "CI-Bot")):
        payload = comment_payload(metrics_body(loss), cid=cid, login=login, user_type="User")
        assert h.webhook("issue_comment", payload).status_code == 202
    h.settle()
    posts = thread_posts(slack, req)
    assert len(posts) == 1 and "0.2" in json.dumps(posts[0].params["blocks"])


@pytest.mark.parametrize(
    ("floor", "association", "trusted"),
    [
        (None, "OWNER", False),  # the default: bots only, not even the owner by association
        ("OWNER", "OWNER", True),
        ("OWNER", "MEMBER", False),
        ("MEMBER", "OWNER", True),
        ("MEMBER", "COLLABORATOR", False),
        ("COLLABORATOR", "COLLABORATOR", True),
        ("COLLABORATOR", "CONTRIBUTOR", False),
        ("COLLABORATOR", "NONE", False),
        ("COLLABORATOR", "MANNEQUIN", False),
    ],
)
def test_author_association_is_a_floor(floor: Any, association: str, trusted: bool) -> None:
    comment = {"user": {"login": "x", "type": "User"}, "author_association": association}
    assert (trusted_as(MetricsTrust(author_association=floor), comment) is not None) is trusted


def test_bots_are_trusted_and_the_metrics_block_is_validated() -> None:
    assert trusted_as(MetricsTrust(), {"user": {"login": "github-actions[bot]", "type": "Bot"}})
    for bad in (
        {"metrics": {"trusted": ["x"]}},
        {"metrics": {"author_association": "CONTRIBUTOR"}},
        {"metrics": {"trusted_authors": ["not a login"]}},
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(bad)
        assert "metrics" in str(err.value)
    cfg = parse_config({"metrics": {"trusted_authors": ["ci-bot"], "author_association": "MEMBER"}})
    assert cfg.metrics.trusted_authors == ["ci-bot"]


# -- 2. metrics name their source and their commit -------------------------------------------


def test_card_shows_the_newest_trusted_metrics_with_source_and_never_swaps_them(
    harness: Harness, github, slack
) -> None:
    add_training_run(github)
    req = start_evaluation(harness, slack)
    for cid, loss, at in ((1001, "0.30", "00:05"), (1002, "0.20", "00:06")):
        body = metrics_body(loss)
        payload = comment_payload(body, cid=cid, created=f"2099-01-01T{at}:00Z")
        assert harness.webhook("issue_comment", payload).status_code == 202
        harness.settle()
    assert len(thread_posts(slack, req)) == 2
    deploy = request_deploy(harness, slack, str(RUN_ID))
    shown = metrics_part(card_blocks(slack, deploy))
    print("Card metrics blocks:", json.dumps(shown))
    assert table_values(shown) == ["Head", "0.20"]
    line = json.dumps(shown[-1])
    assert f"Metrics for commit `{HEAD_SHA[:7]}`" in line
    assert "#issuecomment-1002|a comment by github-actions[bot]>" in line
    assert "(bot)" in line and "The newest of 2 metrics comments for this commit" in line
    assert "#issuecomment-1001|github-actions[bot]>" in line

    # A later comment does not replace what an approver may already have read: it is named.
    payload = comment_payload(metrics_body("0.99"), cid=1003, created="2099-01-01T00:09:00Z")
    assert harness.webhook("issue_comment", payload).status_code == 202
    harness.settle()
    shown = metrics_part(card_blocks(slack, deploy))
    print("Card metrics blocks after a newer comment:", json.dumps(shown))
    assert table_values(shown) == ["Head", "0.20"]
    assert "Newer metrics for this commit were posted after this card" in json.dumps(shown)
    assert "#issuecomment-1003|github-actions[bot]>" in json.dumps(shown)


def test_metrics_for_another_commit_are_not_shown_for_this_run(
    harness: Harness, github, slack
) -> None:
    add_training_run(github)
    start_evaluation(harness, slack)
    data = json.dumps({"head_sha": "f" * 40})
    body = metrics_body("0.1", extra=f"<!-- chatops:data {data} -->\n")
    assert commit_of(body) == "f" * 40
    assert harness.webhook("issue_comment", comment_payload(body)).status_code == 202
    harness.settle()
    deploy = request_deploy(harness, slack, str(RUN_ID))
    assert metrics_part(card_blocks(slack, deploy)) == []


# -- 3. the text of a link is where it goes -----------------------------------------------------

DISGUISED = "[https://github.com/acme/ml-models/pull/42](https://evil.example/login)"


def test_a_disguised_link_in_a_relayed_comment_shows_its_real_host(
    harness: Harness, github, slack
) -> None:
    req = start_evaluation(harness, slack)
    body = metrics_body("0.2", extra=f"\nSee {DISGUISED}\n")
    assert harness.webhook("issue_comment", comment_payload(body)).status_code == 202
    harness.settle()
    (post,) = thread_posts(slack, req)
    sections = [b["text"]["text"] for b in post.params["blocks"] if b["type"] == "section"]
    print("mrkdwn of the disguised link:", [s for s in sections if "evil" in s])
    shown = json.dumps(post.params)
    assert (
        "https://github.com/acme/ml-models/pull/42 (<https://evil.example/login|evil.example>)"
        in ("\n".join(sections))
    )
    assert "<https://evil.example/login|https://github.com" not in shown


@pytest.mark.parametrize(
    ("url", "label", "expected"),
    [
        ("https://evil.example/x", "https://github.com/a", "https://github.com/a (<https://evil.example/x|evil.example>)"),
        ("https://evil.example/x", "github.com", "github.com (<https://evil.example/x|evil.example>)"),
        ("https://github.com@evil.example/", "github.com", "github.com (<https://github.com@evil.example/|evil.example>)"),
        ("https://github.com/x", "g\u0456thub.com", "g\u0456thub.com (<https://github.com/x|github.com>)"),
        ("https://evil.example/x", "github\uff0ecom", "github\uff0ecom (<https://evil.example/x|evil.example>)"),
        ("https://www.github.com/a", "github.com/a", "<https://www.github.com/a|github.com/a>"),
        ("https://github.com/a|b", "run 7", "<https://github.com/a%7Cb|run 7>"),
        ("https://evil.example/x", "logs", "<https://evil.example/x|logs>"),
        ("javascript:alert(1)", "github.com", "github.com"),
    ],
)  # fmt: skip
def test_one_link_builder_for_messages_and_markdown(url: str, label: str, expected: str) -> None:
    # messages.py and markdown.py both build links with bot.slacktext.slack_link.
    assert slacktext.slack_link(url, label) == expected


# -- 4. rendering is linear and bounded ----------------------------------------------------------


def test_a_200_kb_pathological_comment_is_cut_to_the_budget_with_a_link(
    harness: Harness, github, slack, monkeypatch
) -> None:
    req = start_evaluation(harness, slack)
    converted: list[int] = []
    real = md.to_mrkdwn

    def counting(text: str) -> str:
        converted.append(len(text))
        return real(text)

    monkeypatch.setattr(md, "to_mrkdwn", counting)
    body = metrics_body("0.2", extra="\n" + "<summary " * 22_000)
    assert len(body) > 195_000
    assert harness.webhook("issue_comment", comment_payload(body)).status_code == 202
    harness.settle(timeout=30)
    posts = thread_posts(slack, req)
    assert posts, "the comment is relayed, cut"
    last = json.dumps(posts[-1].params["blocks"])
    print("last block of the cut comment:", json.dumps(posts[-1].params["blocks"][-1]))
    assert f"Only the first {md.MAX_COMMENT_CHARS:,} of {len(body):,} characters" in last
    assert f"<https://github.com/{REPO}/pull/42#issuecomment-1001|read the whole comment" in last
    assert sum(converted) <= md.MAX_COMMENT_CHARS  # the work done, whatever the size


class _Counting:
    """A compiled pattern that adds the length of every string it is given to `work`."""

    work = 0

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._p = pattern

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._p, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            for arg in args:
                if isinstance(arg, str):
                    _Counting.work += len(arg)
            return method(*args, **kwargs)

        return call


ADVERSARIAL = [
    "<summary ",
    "<summary>a ",
    "**a ",
    "[x](a ",
    "`a``",
    "<a ",
    "# " + " " * 50,
    "|a|\n",
]


@pytest.mark.parametrize("unit", ADVERSARIAL)
def test_work_grows_linearly_when_the_input_doubles(unit: str, monkeypatch) -> None:
    """Counts the characters every regex of bot.mrkdwn is handed (no clocks): a driver loop
    that re-scans the text per match or per line would make the count grow quadratically."""
    for name, value in vars(mk).items():
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(mk, name, _Counting(value))

    def work(n: int) -> int:
        _Counting.work = 0
        mk.to_mrkdwn((unit * (n // len(unit) + 1))[:n])
        return _Counting.work

    small, large = work(4_000), work(8_000)
    assert large <= 2.2 * small + 1_000, (small, large)
    # And a URL with a long tail of ")" keeps its tail as text (the trimming is linear).
    assert mk._trim_url("https://x.example/" + ")" * 10) == ("https://x.example/", ")" * 10)


_OLD_SUMMARY = re.compile(r"&lt;summary(?:\s[^\n]*?)?&gt;(.*?)&lt;/summary&gt;", re.I | re.S)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<summary>", "<SUMMARY x>", "</summary>", "a", " ", "\n", ">"])))
def test_the_summary_scan_matches_the_old_regex(parts: list[str]) -> None:
    text = slacktext.escape_mrkdwn("".join(parts))
    old = _OLD_SUMMARY.sub(lambda m: f"\n**{t}**\n" if (t := m.group(1).strip()) else "", text)
    assert mk._summaries(text) == old


# -- 5. Slack hygiene ------------------------------------------------------------------------------


def test_user_text_is_verbatim_and_invisible_characters_are_dropped(
    harness: Harness, github, slack
) -> None:
    github.add_pull(REPO, 42, head_sha=HEAD_SHA, title=f"Ship @here now{INVISIBLE} exe.txt")
    req = start_evaluation(harness, slack)
    body = metrics_body(f"0.2{INVISIBLE}", extra=f"\nnote{INVISIBLE} @channel\n")
    assert harness.webhook("issue_comment", comment_payload(body)).status_code == 202
    harness.settle()
    assert thread_posts(slack, req)
    sent = [c for c in slack.calls if c.method in ("chat.postMessage", "chat.update")]
    texts: list[dict[str, Any]] = []
    for call in sent:
        for block in call.params.get("blocks") or []:
            texts += [block["text"]] if isinstance(block.get("text"), dict) else []
            texts += [e for e in block.get("elements") or [] if e.get("type") == "mrkdwn"]
    mrkdwn = [t for t in texts if t.get("type") == "mrkdwn"]
    assert mrkdwn and all(t.get("verbatim") is True for t in mrkdwn), [
        t for t in mrkdwn if not t.get("verbatim")
    ]
    assert any("Ship @here now exe.txt" in t["text"] for t in mrkdwn)
    everything = json.dumps([c.params for c in sent], ensure_ascii=False)
    assert not any(ch in everything for ch in INVISIBLE)
    assert slacktext.escape_mrkdwn(f"a{INVISIBLE}b<!here>") == "ab&lt;!here&gt;"
