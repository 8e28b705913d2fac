"""GitHub comment markdown to Slack Block Kit messages: pure functions, no I/O.

Tables, sections and budgets here; the text conversion (and cell_text) is bot.mrkdwn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.gfm import Table, split_markdown
from bot.mrkdwn import _CONTROL, cell_text, to_mrkdwn
from bot.slacktext import (
    context,
    escape_mrkdwn,
    section,
    slack_link,
)

__all__ = [
    "METRICS_MARKER",
    "cell_text",
    "has_metrics",
    "render_comment",
]

METRICS_MARKER = "<!-- chatops:metrics -->"

# Slack limits. Table: ≤ 100 rows (header included) by ≤ 20 cells, one table per message
# (docs.slack.dev/reference/block-kit/blocks/table-block, PLATFORM.md). Section text ≤ 3000
# characters (slack_sdk SectionBlock.text_max_length). ≤ 50 blocks per message.
MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_TABLE_ROWS = 100
MAX_TABLE_COLUMNS = 20
MAX_FALLBACK_CHARS = 3000
# slack_sdk's RawTextObject refuses empty text (min 1 character); Slack may also trim a lone
# space away, so an empty cell is shown as an em dash, the usual "no value" mark.
EMPTY_CELL = "—"
MAX_AUTHOR_CHARS = 100
# The rendering budget: a comment is converted up to this many characters and the rest is left
# on GitHub behind a link. Everything below is linear in the input, so this bounds the time one
# comment can hold the GIL (bench/markdown_adversarial.py prints the figures); 20,000 characters
# is several screens of Slack and far more than a metrics comment needs.
MAX_COMMENT_CHARS = 20_000


# --------------------------------------------------------------------------------------------
# Block Kit rendering
# --------------------------------------------------------------------------------------------

# Numbers as metric tables write them: 0.231, -0.014, 1,234, 91.2%, +0.8 pp, 3.1x, 12 ms,
# 1.2e-3, $4, 0.91 ± 0.02.
_NUMBER = "[-+\u2212±~≈]?"  # \u2212: the minus sign
_NUMBER += r"\s?[$€£]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?"
_NUMERIC = re.compile(
    rf"^(?=[^\d]{{0,4}}\d){_NUMBER}(?:\s?(?:%|pp|p\.p\.|[x\u00d7]|[A-Za-zµ]{{1,3}}(?:/s)?))?"
    rf"(?:\s?±\s?{_NUMBER}%?)?$"
)
_NO_VALUE = {"", "-", "—", "\u2013", "n/a", "N/A", "NA", "na", "none", "None", "null", "?", "…"}


def _looks_numeric(column: Sequence[str]) -> bool:
    values = [v for v in column if v not in _NO_VALUE]
    return bool(values) and all(_NUMERIC.match(v) for v in values)


def _header_cell(text: str) -> dict[str, Any]:
    # raw_text has no styling; a rich_text cell (allowed in table rows) carries the bold.
    return {
        "type": "rich_text",
        "elements": [
            {
                "type": "rich_text_section",
                "elements": [{"type": "text", "text": text, "style": {"bold": True}}],
            }
        ],
    }


def _raw_cell(text: str) -> dict[str, Any]:
    return {"type": "raw_text", "text": text}


def _table_blocks(table: Table, link: str) -> list[dict[str, Any]]:
    """The table block, plus a context line when rows or columns had to be cut."""
    width = min(len(table.header), MAX_TABLE_COLUMNS)
    header = [cell_text(c) for c in table.header[:width]]
    body = [[cell_text(c) for c in row[:width]] for row in table.rows]
    shown = body[: MAX_TABLE_ROWS - 1]
    settings: list[dict[str, Any]] = []
    for col in range(width):
        align = table.align[col]
        numeric = _looks_numeric([row[col] for row in body])
        # An explicit :-- / :-: from the author wins; unmarked numeric columns go right.
        setting: dict[str, Any] = {"align": align or ("right" if numeric else "left")}
        if not numeric:
            setting["is_wrapped"] = True
        settings.append(setting)
    rows = [[_header_cell(c or EMPTY_CELL) for c in header]]
    rows += [[_raw_cell(c or EMPTY_CELL) for c in row] for row in shown]
    blocks: list[dict[str, Any]] = [{"type": "table", "rows": rows, "column_settings": settings}]
    cut: list[str] = []
    if len(body) > len(shown):
        n = len(body) - len(shown)
        cut.append(f"{n} more row{'s' if n != 1 else ''}")
    if len(table.header) > width:
        n = len(table.header) - width
        cut.append(f"{n} more column{'s' if n != 1 else ''}")
    if cut:
        blocks.append(context(f"… {' and '.join(cut)}: {slack_link(link, 'see the full comment')}"))
    return blocks


def _cut(text: str, limit: int) -> int:
    """Where to cut text at most `limit` long without splitting an &entity; or a <link>."""
    end = limit
    amp, semi = text.rfind("&", 0, end), text.rfind(";", 0, end)
    if amp > semi and end - amp < 6:
        end = amp
    lt, gt = text.rfind("<", 0, end), text.rfind(">", 0, end)
    if lt > gt and lt > 0:
        end = lt
    return max(end, 1)


def _split_section_text(text: str, limit: int = MAX_SECTION_CHARS) -> list[str]:
    """Pack mrkdwn into chunks ≤ limit on paragraph, then line boundaries; ``` stays balanced."""
    fence = "```"
    budget = limit - 2 * (len(fence) + 1)  # room to close and reopen a code block
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    in_code = False  # inside a ``` block at the end of `current`
    opened_in_code = False  # `current` started inside a ``` block

    def flush() -> None:
        nonlocal current, size, opened_in_code
        body = "\n".join(current).strip("\n")
        if body.strip():
            if opened_in_code:
                body = f"{fence}\n{body}"
            if in_code:
                body = f"{body}\n{fence}"
            chunks.append(body)
        current, size, opened_in_code = [], 0, in_code

    for line in text.split("\n"):
        pieces = [line]
        if len(line) > budget:
            pieces = []
            rest = line
            while len(rest) > budget:
                at = _cut(rest, budget)
                pieces.append(rest[:at])
                rest = rest[at:]
            pieces.append(rest)
        for piece in pieces:
            if current and size + 1 + len(piece) > budget:
                flush()
            current.append(piece)
            size += len(piece) + (1 if size else 0)
            if piece.strip() == fence or (piece.startswith(fence) and piece.count(fence) % 2):
                in_code = not in_code
    flush()
    return chunks


def _summary_of_table(table: Table) -> str:
    header = "/".join(cell_text(c) for c in table.header[:MAX_TABLE_COLUMNS])
    # Enough rows for a notification preview; _fallback caps the length anyway.
    cells = ([cell_text(c) for c in row[:MAX_TABLE_COLUMNS]] for row in table.rows[:20])
    rows = ", ".join(" ".join(c for c in row if c) for row in cells)
    return f"{header} — {rows}" if rows else header


def _fallback(prefix: str, summary: str) -> str:
    """Escaped fallback text ≤ MAX_FALLBACK_CHARS, never empty."""
    text = escape_mrkdwn(f"{prefix}: {summary}" if summary else prefix)
    if len(text) > MAX_FALLBACK_CHARS:
        text = text[: _cut(text, MAX_FALLBACK_CHARS - 1)] + "…"
    return text


@dataclass
class _Message:
    blocks: list[dict[str, Any]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # markdown sources, for the fallback


def within_budget(body: str, limit: int = MAX_COMMENT_CHARS) -> tuple[str, bool]:
    """The part of a comment that is rendered, and whether it was cut: at most `limit`
    characters, ending at a line break when there is one in the second half."""
    if len(body) <= limit:
        return body, False
    at = body.rfind("\n", limit // 2, limit)
    return body[: at if at > 0 else limit], True


def render_comment(
    body: str,
    *,
    link: str,
    author: str,
    label: str = "Comment",
    budget: int = MAX_COMMENT_CHARS,
) -> list[dict[str, Any]]:
    """Render a GitHub comment as Slack messages ({"text", "blocks"}) for chat.postMessage.

    Work is bounded: past MAX_COMMENT_CHARS the comment is cut and the last message says so,
    with the link to the whole comment on GitHub.
    """
    full = len(body)
    body, cut = within_budget(body, budget)
    who = _CONTROL.sub("", author).strip()[:MAX_AUTHOR_CHARS] or "unknown"
    footer_text = f"{label} by {escape_mrkdwn(who)} · {slack_link(link, 'view on GitHub')}"
    if cut:
        footer_text = (
            f":scissors: Only the first {len(body):,} of {full:,} characters are shown: "
            f"{slack_link(link, 'read the whole comment on GitHub')}\n{footer_text}"
        )
    footer = context(footer_text)
    # One block per message stays free for the closing context line.
    capacity = MAX_BLOCKS - 1

    messages: list[_Message] = [_Message()]

    def add(block: dict[str, Any]) -> None:
        if len(messages[-1].blocks) >= capacity:
            messages.append(_Message())
        messages[-1].blocks.append(block)

    pending: list[tuple[str, list[dict[str, Any]]]] = []  # text waiting for the next table

    def add_pending() -> None:
        for source, blocks in pending:
            if blocks:
                messages[-1].texts.append(source)
            for block in blocks:
                add(block)
        pending.clear()

    for segment in split_markdown(body):
        if isinstance(segment, str):
            sections = [section(t) for t in _split_section_text(to_mrkdwn(segment))]
            pending.append((segment, sections))
            continue
        table_blocks = _table_blocks(segment, link)
        # Slack allows one table per message; the text before a table travels with it.
        needed = sum(len(b) for _, b in pending) + len(table_blocks)
        current = messages[-1]
        if current.blocks and (current.tables or len(current.blocks) + needed > capacity):
            messages.append(_Message())
        add_pending()
        if len(messages[-1].blocks) + len(table_blocks) > capacity:
            messages.append(_Message())
        messages[-1].tables.append(segment)
        messages[-1].blocks.extend(table_blocks)
    add_pending()

    messages = [m for m in messages if m.blocks]
    if not messages:
        blocks = [section("_The comment was empty._"), footer]
        return [{"text": _fallback(f"Empty comment from {who}", ""), "blocks": blocks}]
    messages[-1].blocks.append(footer)

    out: list[dict[str, Any]] = []
    for n, message in enumerate(messages, start=1):
        part = f" (part {n}/{len(messages)})" if len(messages) > 1 else ""
        if message.tables:
            text = _fallback(f"Metrics from {who}{part}", _summary_of_table(message.tables[0]))
        else:
            # The fallback keeps ≤ MAX_FALLBACK_CHARS: only that much source needs plain-texting.
            source = " ".join(message.texts)[: 2 * MAX_FALLBACK_CHARS]
            text = _fallback(f"Comment from {who}{part}", cell_text(source))
        out.append({"text": text, "blocks": message.blocks})
    return out


def has_metrics(body: str, *, author_is_bot: bool) -> bool:
    """Whether a comment carries metrics: it has the marker, or a bot posted a table.

    Who may supply metrics is decided elsewhere (bot/provenance.py); this only reads the body,
    within the rendering budget.
    """
    if METRICS_MARKER in body:
        return True
    body = within_budget(body)[0]
    return author_is_bot and any(isinstance(s, Table) for s in split_markdown(body))
