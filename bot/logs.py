"""Structured logs: one JSON object per line, secrets scrubbed from every field."""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


# Credentials the settings do not know (installation tokens minted at run time, App JWTs, a
# header someone logs) are recognised by their shape. GitHub: docs "About authentication"
# (token prefixes); Slack: docs "Token types".
_SHAPES = [
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9_-]{16,}|github_pat_[A-Za-z0-9_-]{20,})"), ""),
    (re.compile(r"\b(?:xox[abposre]|xapp)-[A-Za-z0-9-]{6,}"), ""),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}"), ""),
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            re.DOTALL,
        ),
        "",
    ),
    # "Authorization: Bearer x", {'Authorization': 'token x'}: keep the name, drop the value.
    (
        re.compile(
            r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|token|basic)\s+)[^\s'\",}]+"
        ),
        r"\1",
    ),
    (re.compile(r"(?i)(://[^:/@\s]+:)[^@/\s]+@"), r"\1"),  # passwords in URLs (DATABASE_URL)
    # response_url is a capability: redact it however it is encoded: plain, JSON-escaped
    # (https:\/\/), URL-encoded once (https%3A%2F%2F, as in a form body) or twice. A form
    # body's next parameter starts at "&", so the match stops there.
    (
        re.compile(r"(?i)https?(?::|%3A|%253A)(?:/|\\/|%2F|%252F){2}hooks\.slack\.com[^\s'\"&]*"),
        "",
    ),
]

# What must occur in a text for each of _SHAPES (same order) to match it: any one of these
# literals, and whether they are looked for in the lower-cased text (the (?i) expressions).
_NEEDS: list[tuple[tuple[str, ...], bool]] = [
    (("gh", "github_pat_"), False),
    (("xox", "xapp"), False),
    (("eyJ",), False),
    (("PRIVATE KEY",), False),
    (("authorization",), True),
    (("://",), False),
    (("hooks.slack.com",), True),
]
# Any of those literals, in one search: ASCII text with none of them (most values logged: ids,
# names, statuses) needs no shape's expression at all.
_ANY_NEEDLE = re.compile(
    "|".join(
        f"(?i:{re.escape(n)})" if caseless else re.escape(n)
        for needles, caseless in _NEEDS
        for n in needles
    )
)
# Values up to this long are scrubbed once and remembered (Redactor._scrub_short).
_CACHED_LEN = 256

# Longest a logged message or field may be: a huge request body or a library's dump of one
# must not turn each line into megabytes of log.
MAX_FIELD = 2000
# Fields that only carry ANSI colour codes (uvicorn's color_message): never useful in a log.
_DROPPED = frozenset({"color_message"})


def bound(value: str, limit: int = MAX_FIELD) -> str:
    """value cut to `limit` characters, saying how much was cut. Pure."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...[{len(value) - limit} more characters]"


class Redactor(logging.Filter):
    """Replaces every known secret value, and anything shaped like a credential, in a record's
    message, arguments, extras and traceback."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        values = {s for s in secrets if s and len(s) >= 6}
        # A PEM key may surface a line at a time (a parser error quoting one line).
        values |= {
            ln.strip() for v in list(values) for ln in v.splitlines() if len(ln.strip()) >= 16
        }
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted(values, key=len, reverse=True)
        # Their lengths negated (ascending), to skip at once every secret longer than a value:
        # most values logged are ids, shorter than any token or PEM line.
        self._negated_lengths = [-len(s) for s in self.secrets]
        # Short values (messages, ids, event names) repeat from line to line: each is
        # scrubbed once and its result remembered (bounded: at most 4,096 values of
        # _CACHED_LEN characters).
        self._scrub_short = functools.lru_cache(maxsize=4096)(self._scrub)

    def scrub(self, value: str) -> str:
        if len(value) <= _CACHED_LEN:
            return self._scrub_short(value)
        return self._scrub(value)

    def _scrub(self, value: str) -> str:
        # Only secrets no longer than the value can occur in it. (A longer one could appear
        # after a replacement only if it contained the "[redacted]" put in: none does.)
        for s in self.secrets[bisect.bisect_left(self._negated_lengths, -len(value)) :]:
            if s in value:
                value = value.replace(s, "[redacted]")
        # A shape's expression runs only where its literal part occurs (found by `in`, far
        # cheaper than a regex search); for text with non-ASCII letters, where case-folding
        # could make a case-insensitive expression match what lower() does not show, all run.
        ascii_only = value.isascii()
        if ascii_only and _ANY_NEEDLE.search(value) is None:
            return value
        folded = value.lower() if ascii_only else None
        for (pattern, keep), (needles, caseless) in zip(_SHAPES, _NEEDS, strict=True):
            if folded is not None:
                hay = folded if caseless else value
                if not any(n in hay for n in needles):
                    continue
            value = pattern.sub((keep + "[redacted]") if keep else "[redacted]", value)
            if folded is not None:
                folded = value.lower()
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        # Cut to 4x the bound before scrubbing (a flood of huge bodies costs bounded work) and
        # to the bound after: nothing near the first cut is ever printed, so a secret the cut
        # splits cannot leak half of itself.
        record.msg = bound(self.scrub(bound(record.getMessage(), 4 * MAX_FIELD)))
        record.args = None
        for key in _DROPPED & record.__dict__.keys():
            del record.__dict__[key]
        fields = record.__dict__
        for key in fields.keys() - _STANDARD:  # the extras and the scope's ids
            val = fields[key]
            if isinstance(val, str):
                fields[key] = bound(self.scrub(bound(val, 4 * MAX_FIELD)))
            elif not isinstance(val, int | float | bool | type(None)):
                # the formatters print str(val)
                fields[key] = bound(self.scrub(bound(str(val), 4 * MAX_FIELD)))
        if record.exc_info:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


# The ids of the unit of work running in this thread or task (request_id, delivery_id, ...).
# A fresh dict per scope: bind() only ever changes the innermost scope's own dict.
_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("chatops_log_context", default=None)
T = TypeVar("T")


@contextlib.contextmanager
def context(**ids: str | None) -> Iterator[None]:
    """Every log line inside carries these ids (plus the enclosing scope's)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**ids: str | None) -> None:
    """Add ids to the current scope once they are known (e.g. the request a delivery is for).

    Outside any scope this does nothing: it must never leak into a pooled thread's later work.
    """
    current = _CONTEXT.get()
    if current is not None:
        current.update({k: v for k, v in ids.items() if v})


def scoped(fn: Callable[..., T]) -> Callable[..., T]:
    """Run fn in a fresh logging scope (for entry points such as Bolt's dispatch)."""

    def run(*args: Any, **kwargs: Any) -> T:
        with context():
            return fn(*args, **kwargs)

    return run


class ContextFilter(logging.Filter):
    """Copies the current scope's ids onto each record (explicit extras win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if key not in record.__dict__:
                record.__dict__[key] = value
        return True


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    """ISO 8601 of a whole UTC second: the lines of one second share it. Pure."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, val in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = (
                    val if isinstance(val, str | int | float | bool | type(None)) else str(val)
                )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        base = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        text = f"{base} {extras}".rstrip()
        if record.exc_text:
            text += "\n" + record.exc_text
        elif record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(*, fmt: str, secrets: Iterable[str], level: int | str = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # On the handler, so records from every library's logger pass through them; ids first, so
    # the redactor sees them too.
    handler.addFilter(ContextFilter())
    handler.addFilter(Redactor(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither formatter prints where a line was logged from, nor its thread or process: the
    # records skip finding them (the logging HOWTO's "Optimization"; ~15 % of a line's CPU,
    # and a line is ~10 % of an `/evaluate help` ack and of a relayed event).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for noisy in ("apscheduler.executors", "apscheduler.scheduler", "urllib3", "github.Requester"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn's own loggers carry their own handlers only with its log_config; the bridge
    # passes none, so make sure their lines reach this handler in the same shape.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
