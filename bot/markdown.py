"""GitHub comment markdown to Slack mrkdwn and Block Kit messages: pure functions, no I/O."""

from __future__ import annotations

import html
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.gfm import Table, closes, fence_open, fenced_flags, split_markdown
from bot.slacktext import (
    INVISIBLE,
    context,
    escape_mrkdwn,
    is_http_url,
    misleading_host,
    section,
    slack_link,
)

__all__ = [
    "METRICS_MARKER",
    "cell_text",
    "has_metrics",
    "render_comment",
    "to_mrkdwn",
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
# Not a documented limit: a defensive cap so one runaway cell cannot bloat the message.
MAX_CELL_CHARS = 1000
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
# Markdown → mrkdwn
# --------------------------------------------------------------------------------------------

# C0 controls except \t and \n. \x00-\x03 are used below as placeholder and sentinel marks, so
# they must never come from the input (Slack shows no control characters anyway).
# The invisible characters (see INVISIBLE) are dropped with them.
_CONTROL = re.compile(f"[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f{INVISIBLE}]")
_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
_BOLD, _ITALIC, _STRIKE = "\x01", "\x02", "\x03"
_SENTINELS = str.maketrans({_BOLD: "*", _ITALIC: "_", _STRIKE: "~"})

# Backslash escapes and code spans, scanned together left to right (an escaped backtick does
# not open a code span; backslashes inside a code span are literal). Runs on escaped text.
_ESCAPE_OR_CODE = re.compile(
    r"\\(&lt;|&gt;|&amp;|[!-/:-@\[-`{-~])|(?<!`)(`+)(?!`)([^\n]+?)(?<!`)\2(?!`)"
)
# No "|" in autolinks: <https://evil|click> is Slack link syntax posing as a URL; it stays text.
_AUTOLINK = re.compile(r"&lt;(https?://(?:(?!&lt;|&gt;)[^\s\x00|])+)&gt;", re.IGNORECASE)
_MD_LINK = re.compile(
    r"(!?)\[((?:[^\[\]\n\x00]|\[[^\[\]\n\x00]*\])*)\]"
    r"\([ \t]*([^\s()\x00]+(?:\([^\s()\x00]*\)[^\s()\x00]*)*)"
    r"(?:[ \t]+(?:\"[^\"\n]*\"|'[^'\n]*'))?[ \t]*\)"
)
# <summary …>title</summary> is rewritten by _summaries (a scan with bisect, not one regex:
# the regex `&lt;summary(?:\s[^\n]*?)?&gt;(.*?)&lt;/summary&gt;` rescanned the rest of the
# text from every unclosed "<summary ", which took 3.5 s for 8,000 of them).
_SUMMARY_OPEN = re.compile(r"&lt;summary(?=\s|&gt;)", re.IGNORECASE)
_SUMMARY_CLOSE = re.compile(r"&lt;/summary&gt;", re.IGNORECASE)
_GT = "&gt;"
_BR = re.compile(r"&lt;br\s*/?&gt;", re.IGNORECASE)
_TAG = re.compile(r"&lt;/?[A-Za-z][A-Za-z0-9-]*(?:\s(?:(?!&gt;|&lt;)[^\x00])*?)?/?&gt;")
_BARE_URL = re.compile(r"(?<![\w/@.;])https?://(?:(?!&lt;|&gt;)[^\s\x00])+", re.IGNORECASE)
# Only the opening of a heading is a regex; its closing #s are cut off by _heading_title (the
# one-regex form backtracked quadratically over a heading with a long run of spaces).
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?=[ \t]|$)")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+(.*)$")
_TASK = re.compile(r"^\[([ xX])\][ \t]+")
_QUOTE = re.compile(r"^ {0,3}&gt;[ \t]?(.*)$")
# Emphasis content is bounded so that a hostile line full of unmatched markers stays linear:
# each opener scans at most 200 characters for its closer (1,000 made 20,000 characters of
# "**a " take 3 s; bench/markdown_adversarial.py).
_EMPHASIS = re.compile(
    r"\*\*(?=[^\s*])([^\n]{1,200}?)(?<=[^\s])\*\*"
    r"|(?<![\w])__(?=[^\s_])([^\n]{1,200}?)(?<=[^\s])__(?![\w])"
    r"|~~(?=[^\s~])([^\n]{1,200}?)(?<=[^\s])~~"
    r"|\*(?=[^\s*])([^\n]{1,200}?)(?<=[^\s*])\*"
    r"|(?<![\w])_(?=[^\s_])([^\n]{1,200}?)(?<=[^\s_])_(?![\w])"
)
_MAX_EMPHASIS_DEPTH = 16


def _remove_comments(text: str, start: str, end: str) -> str:
    """Drop HTML comments; an unclosed one is kept as text (str.find keeps this linear)."""
    out: list[str] = []
    pos = 0
    while (i := text.find(start, pos)) >= 0:
        j = text.find(end, i + len(start))
        if j < 0:
            break
        out.append(text[pos:i])
        pos = j + len(end)
    out.append(text[pos:])
    return "".join(out)


class _Store:
    """Finished mrkdwn fragments, kept out of later rewriting behind \\x00<n>\\x00 marks."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def put(self, text: str) -> str:
        self.items.append(text)
        return f"\x00{len(self.items) - 1}\x00"

    def restore(self, text: str) -> str:
        # Fragments may hold marks made earlier (a link label with code in it): repeat, bounded.
        for _ in range(len(self.items) + 1):
            if "\x00" not in text:
                break
            text = _PLACEHOLDER.sub(lambda m: self.items[int(m.group(1))], text)
        return text.replace("\x00", "")


def _emphasis(text: str) -> str:
    """**b**/__b__ → bold, *i*/_i_ → italic, ~~s~~ → strike, as sentinels (outermost first)."""

    def repl(m: re.Match[str]) -> str:
        bold, bold2, strike, it, it2 = m.groups()
        if bold is not None or bold2 is not None:
            return f"{_BOLD}{bold if bold is not None else bold2}{_BOLD}"
        if strike is not None:
            return f"{_STRIKE}{strike}{_STRIKE}"
        return f"{_ITALIC}{it if it is not None else it2}{_ITALIC}"

    for _ in range(_MAX_EMPHASIS_DEPTH):
        new = _EMPHASIS.sub(repl, text)
        if new == text:
            break
        text = new
    return text


def _trim_url(url: str) -> tuple[str, str]:
    """Split trailing punctuation off a bare URL, as GitHub's autolinker does.

    Linear: one index walks back and the parentheses are counted once (the old loop sliced
    and recounted the URL for every trailing character).
    """
    end = len(url)
    opens, closes = url.count("("), url.count(")")
    while end:
        last = url[end - 1]
        if url.endswith("&amp;", 0, end):
            end -= 5
        elif last in ".,:;!?'\"*_~":
            end -= 1
        elif last == ")" and opens < closes:
            closes -= 1
            end -= 1
        else:
            break
    return url[:end], url[end:]


def _summaries(text: str) -> str:
    """<summary …>title</summary> → the title in bold on a line of its own (escaped text).

    The tag ends at the first &gt; on its line; the title runs to the next </summary>. The
    positions of every &gt;, newline and </summary> are listed once and looked up by bisection,
    so the scan is O(n log n) however many tags never close.
    """
    closes = [m.start() for m in _SUMMARY_CLOSE.finditer(text)]
    if not closes:
        return text
    gts = [m.start() for m in re.finditer(_GT, text)]
    newlines = [m.start() for m in re.finditer("\n", text)]
    out: list[str] = []
    pos = 0
    for m in _SUMMARY_OPEN.finditer(text):
        if m.start() < pos:
            continue  # inside a summary already rewritten
        k = bisect_left(gts, m.end())
        if k == len(gts):
            break
        gt = gts[k]
        if gt > m.end():  # attributes: the first character is whitespace, then one line
            n = bisect_left(newlines, m.end() + 1)
            if n < len(newlines) and newlines[n] < gt:
                continue
        c = bisect_left(closes, gt + len(_GT))
        if c == len(closes):
            break  # no later tag can close either
        title = text[gt + len(_GT) : closes[c]].strip()
        out.append(text[pos : m.start()])
        out.append(f"\n**{title}**\n" if title else "")
        pos = closes[c] + len("&lt;/summary&gt;")
    out.append(text[pos:])
    return "".join(out)


def _inline_protect(esc: str, store: _Store) -> str:
    """Replace code, escapes, comments, links and tags in escaped text by store marks."""

    def escape_or_code(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return store.put(m.group(1))
        code = m.group(3)
        if len(code) > 2 and code.startswith(" ") and code.endswith(" ") and code.strip():
            code = code[1:-1]  # GFM strips one space on each side
        return store.put(f"`{code}`")

    def md_link(m: re.Match[str]) -> str:
        bang, label, url = m.group(1), m.group(2), m.group(3)
        if not is_http_url(url):
            return m.group(0)  # left as (escaped) text
        label = _emphasis(label.strip()) or ("image" if bang else "")
        url = url.replace("|", "%7C")
        if not label:
            return store.put(f"<{url}>")
        # What the reader will see of the label (marks restored, entities decoded) must not
        # name another place than the link goes to (see slack_link).
        shown = html.unescape(store.restore(label).translate(_SENTINELS))
        host = misleading_host(shown, html.unescape(url))
        if host is not None:
            # The label stays plain text (kept from the bare-URL pass): only "(host)" links.
            return store.put(f"{label} (<{url}|{escape_mrkdwn(host)}>)")
        return store.put(f"<{url}|{label}>")

    def bare_url(m: re.Match[str]) -> str:
        url, tail = _trim_url(m.group(0))
        return store.put(f"<{url.replace('|', '%7C')}>") + tail

    text = _ESCAPE_OR_CODE.sub(escape_or_code, esc)
    text = _remove_comments(text, "&lt;!--", "--&gt;")
    text = _AUTOLINK.sub(lambda m: store.put(f"<{m.group(1)}>"), text)
    text = _MD_LINK.sub(md_link, text)
    text = _summaries(text)
    text = _BR.sub("\n", text)
    text = _TAG.sub("", text)
    return _BARE_URL.sub(bare_url, text)


def _convert_line(line: str, depth: int = 0) -> str:
    if not line.strip():
        return ""
    m = _HEADING.match(line)
    if m is not None:
        title = _heading_title(line[m.end() :])
        title = title.replace("**", "").replace("__", "")
        return f"{_BOLD}{_emphasis(title)}{_BOLD}" if title else ""
    if _RULE.match(line):
        return "───"
    m = _BULLET.match(line)
    if m is not None:
        indent = "    " * (len(m.group(1).expandtabs(4)) // 2)
        item = m.group(2)
        task = _TASK.match(item)
        if task is not None:
            item = ("☐ " if task.group(1) == " " else "☑ ") + item[task.end() :]
        return f"{indent}• {_emphasis(item)}"
    m = _QUOTE.match(line)
    if m is not None and depth < 8:
        return "> " + _convert_line(m.group(1), depth + 1).lstrip("> ")
    return _emphasis(line.rstrip())


def _heading_title(rest: str) -> str:
    """A heading's text without its optional closing sequence of #s (CommonMark)."""
    title = rest.strip(" \t")
    bare = title.rstrip("#")
    if bare != title and (not bare or bare[-1] in " \t"):
        title = bare.rstrip(" \t")
    return title


def _text_to_mrkdwn(text: str, store: _Store) -> str:
    protected = _inline_protect(escape_mrkdwn(text), store)
    return "\n".join(_convert_line(line) for line in protected.split("\n"))


def _normalize(text: str) -> str:
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def to_mrkdwn(markdown: str) -> str:
    """Convert GitHub markdown to Slack mrkdwn; all user text is escaped before conversion."""
    lines = _normalize(markdown).split("\n")
    fenced = fenced_flags(lines)
    store = _Store()
    out: list[str] = []
    i = 0
    while i < len(lines):
        j = i
        if fenced[i]:
            fence = fence_open(lines[i]) or "```"
            j = i + 1
            while j < len(lines) and fenced[j] and not closes(lines[j], fence):
                j += 1
            code = "\n".join(lines[i + 1 : j]).strip("\n")
            if code.strip():
                # Slack has no language tags and no ~~~ fences: a plain ``` block.
                out.append(store.put(f"```\n{escape_mrkdwn(code)}\n```"))
            i = j + 1  # skip the closing fence (or run past the end if it never closed)
            continue
        while j < len(lines) and not fenced[j]:
            j += 1
        out.append(_text_to_mrkdwn("\n".join(lines[i:j]), store))
        i = j
    # rstrip per line, not re.sub(r"[ \t]+\n"): that regex rescans a long run of spaces from
    # each of its positions (quadratic).
    text = "\n".join(line.rstrip(" \t") for line in "\n".join(out).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return store.restore(text).translate(_SENTINELS)


# --------------------------------------------------------------------------------------------
# Table cells
# --------------------------------------------------------------------------------------------

_RAW_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_RAW_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_RAW_LINK = re.compile(
    r"!?\[((?:[^\[\]\n]|\[[^\[\]\n]*\])*)\]\([ \t]*[^\s()]*(?:\([^\s()]*\)[^\s()]*)*"
    r"(?:[ \t]+(?:\"[^\"\n]*\"|'[^'\n]*'))?[ \t]*\)"
)
_RAW_AUTOLINK = re.compile(r"<(https?://[^\s<>]+)>", re.IGNORECASE)
_RAW_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_WHITESPACE = re.compile(r"\s+")


def _strip_emphasis(text: str) -> str:
    return _emphasis(text).translate(str.maketrans("", "", _BOLD + _ITALIC + _STRIKE))


def _plain(text: str) -> str:
    text = _remove_comments(text, "<!--", "-->")
    text = _RAW_BR.sub(" ", text)
    text = _RAW_AUTOLINK.sub(r"\1", text)
    text = _RAW_TAG.sub("", text)
    text = _RAW_LINK.sub(lambda m: m.group(1), text)
    # Escaped characters must survive emphasis stripping: hide them behind \x00 marks.
    escaped: list[str] = []

    def hide(m: re.Match[str]) -> str:
        escaped.append(m.group(1))
        return f"\x00{len(escaped) - 1}\x00"

    text = _strip_emphasis(_RAW_ESCAPE.sub(hide, text))
    text = _PLACEHOLDER.sub(lambda m: escaped[int(m.group(1))], text)
    return html.unescape(text)


def cell_text(cell: str) -> str:
    """A table cell as plain display text: no markup, links reduced to labels, \\| unescaped."""
    # GFM applies \| inside code spans too: the escape belongs to the table, not to the cell.
    text = _CONTROL.sub("", cell).replace("\\|", "|")
    parts: list[str] = []
    pos = 0
    for m in _CODE_SPAN.finditer(text):
        parts.append(_plain(text[pos : m.start()]))
        parts.append(m.group(2).strip() or m.group(2))
        pos = m.end()
    parts.append(_plain(text[pos:]))
    out = _WHITESPACE.sub(" ", "".join(parts)).strip()
    if len(out) > MAX_CELL_CHARS:
        out = out[: MAX_CELL_CHARS - 1] + "…"
    return out


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
