"""Slack text helpers, one of each: escaping, links, section/context blocks, dates and times.

Pure functions; everything the bridge writes in mrkdwn goes through these, so escaping, the
link host check and `verbatim` are the same on every card, reply and comment.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any
from urllib.parse import urlsplit

# Slack's section text limit (slack_sdk SectionBlock.text_max_length); context elements too.
MAX_TEXT_CHARS = 3000

# Characters that change how text is shown without being seen: bidi embeddings/overrides
# (U+202A-U+202E), bidi isolates (U+2066-U+2069) and zero-width characters (U+200B-U+200D,
# U+2060, U+FEFF). In user text they can reverse a file name or hide a difference between two
# look-alike words on a card, so they are dropped from everything the bridge relays.
INVISIBLE = "\u200b-\u200d\u2060\ufeff\u202a-\u202e\u2066-\u2069"
_INVISIBLE_RE = re.compile(f"[{INVISIBLE}]")


def escape_mrkdwn(text: str) -> str:
    """The one escaping function for user text in mrkdwn: drop bidi controls and zero-width
    characters, and escape &, <, > so text can never form a mention, channel link or
    <url|label> in Slack."""
    text = _INVISIBLE_RE.sub("", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_url(url: str) -> str:
    # A "|" inside <url|label> would end the URL and let the rest pose as the label.
    return escape_mrkdwn(url).replace("|", "%7C")


def is_http_url(url: str) -> bool:
    # No whitespace or control characters anywhere: Slack would end the link there.
    return re.match(r"https?://[^\s\x00-\x1f\x7f]+$", url, re.IGNORECASE) is not None


# Dots that IDNA treats as dots (ideographic, fullwidth, halfwidth ideographic full stop).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_LABEL_TOKENS = re.compile(r"[^\s<>()\[\]{}\"'`,;!|*_~]+")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A host name: labels of letters, digits and hyphens, and a top-level label of letters. No
# nested quantifier can backtrack here ([\w-]* cannot cross a dot), so it is linear.
_HOST_NAME = re.compile(r"(?:[^\W_][\w-]*\.)+[^\W\d_]{2,63}")


def _hostname(host: str) -> str:
    host = host.lower().rstrip(".")
    # A host that is not IDNA-encodable is compared as it is.
    with contextlib.suppress(UnicodeError, ValueError):
        host = host.encode("idna").decode("ascii")
    return host.removeprefix("www.")


def _target_host(url: str) -> str:
    try:
        return _hostname(urlsplit(url.strip()).hostname or "")
    except ValueError:
        return ""


def misleading_host(label: str, url: str) -> str | None:
    """The host a link really goes to, when its visible label names another place.

    A label "looks like a place" when one of its words is a URL or a host name
    (`https://github.com/a/b`, `github.com`, `g\\u0456thub.com` with a Cyrillic i); each such word
    must name the target's own host (www. and IDNA spelling aside). Labels that name no place
    ("logs", "view on GitHub") may go anywhere: the reader was not told where.
    """
    target = _target_host(url)
    for m in _LABEL_TOKENS.finditer(label.translate(_DOTS)):
        word = _SCHEME.sub("", m.group(0))
        # user@host, host:port and host/path all name "host".
        word = word.rpartition("@")[2]
        for stop in "/?#":
            word = word.partition(stop)[0]
        word = word.partition(":")[0].strip(".")
        if _HOST_NAME.fullmatch(word) and _hostname(word) != target:
            return target or "?"
    return None


def slack_link(url: str | None, label: str) -> str:
    """The one builder of mrkdwn links to user-supplied URLs: <url|label> for an http(s) URL
    whose label does not name another place; `label (<url|host>)` when it does (the text a
    reader sees is then the place the link goes); the escaped label alone otherwise."""
    if not url or not is_http_url(url):
        return escape_mrkdwn(label)
    host = misleading_host(label, url)
    if host is not None:
        return f"{escape_mrkdwn(label)} (<{_slack_url(url)}|{escape_mrkdwn(host)}>)"
    return f"<{_slack_url(url)}|{escape_mrkdwn(label)}>"


# verbatim: Slack then links only what the bridge wrote as <…> (escaped user text cannot), so
# a plain "@here", "#general" or URL in a PR title, run name or comment stays text.
def section(text: str) -> dict[str, Any]:
    """A mrkdwn section block (text cut at Slack's 3000 characters)."""
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": text[:MAX_TEXT_CHARS], "verbatim": True},
    }


def context(text: str) -> dict[str, Any]:
    """A context block of one mrkdwn element (verbatim, like section)."""
    element = {"type": "mrkdwn", "text": text[:MAX_TEXT_CHARS], "verbatim": True}
    return {"type": "context", "elements": [element]}


# -- dates and times (UNIX seconds in, text out) ----------------------------------------------


def iso_utc(ts: float) -> str:
    """ISO 8601 in UTC, as GitHub writes and filters timestamps: 2026-01-31T16:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def hhmm(ts: float) -> str:
    """The time of day in UTC, e.g. "16:00 UTC" (the fallback of slack_date)."""
    return time.strftime("%H:%M UTC", time.gmtime(ts))


def slack_date(ts: float, fmt: str = "{date_short_pretty} {time}") -> str:
    """A time Slack shows in each reader's own time zone; readers without it see hhmm(ts)."""
    return f"<!date^{int(ts)}^{fmt}|{hhmm(ts)}>"
