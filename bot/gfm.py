"""GFM parsing of GitHub comments: tables (markdown-it-py's GFM table rule) and code fences.

Pure. Rendering to Slack stays in bot/mrkdwn.py and bot/markdown.py: the libraries that
convert markdown to mrkdwn let <!channel> through, while the tokens here are only split, never
rendered. markdown-it-py follows GitHub where a hand parser did not: an unescaped "|" inside
a `code span` still separates cells, and a table cannot start inside a lazy continuation.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

__all__ = ["Segment", "Table", "closes", "fence_open", "fenced_flags", "split_markdown"]


@functools.cache
def _parser() -> MarkdownIt:
    """commonmark + the GFM table rule, block level only: inline tokens keep their raw content
    and are never parsed (the core "inline" rule is off: it halved the time of a 24 KB table of
    1,000 columns, bench/markdown_adversarial.py). maxNesting bounds how deep quotes and lists
    nest. Built at the first comment: most processes start without needing it."""
    from markdown_it import MarkdownIt

    return (
        MarkdownIt("commonmark", {"maxNesting": 20})
        .enable("table")
        .disable(["inline", "text_join"])
    )


_ALIGN = re.compile(r"text-align:(left|right|center)")


@dataclass(frozen=True)
class Table:
    """A GFM table; cells hold their raw markdown (use cell_text() for display)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: tuple[str | None, ...]


Segment: TypeAlias = str | Table


def split_markdown(body: str) -> list[Segment]:
    """Split markdown into raw text and top-level GFM tables; text segments are exact slices
    of body (tables inside quotes or lists stay text, as before)."""
    # Split on "\n" only (str.splitlines also splits on \x0b, \x1c, U+2028...): the text
    # segments must be exact slices so that no text is ever lost. markdown-it also ends a line
    # at a lone "\r"; it is read as a space, so its line numbers are the ones here.
    pieces = body.split("\n")
    lines = [p + "\n" for p in pieces[:-1]] + [pieces[-1]]
    source = "\n".join(p.rstrip("\r").replace("\r", " ").replace("\x00", "") for p in pieces)
    if "|" not in source:  # no table without a pipe: skip the parse
        return [body] if body else []
    tokens = _parser().parse(source)
    segments: list[Segment] = []
    text_start = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type != "table_open" or tok.level != 0 or tok.map is None:
            i += 1
            continue
        start, end = tok.map
        header: list[str] = []
        align: list[str | None] = []
        rows: list[tuple[str, ...]] = []
        row: list[str] | None = None
        i += 1
        while tokens[i].type != "table_close":
            t = tokens[i]
            if t.type == "tr_open":
                row = []
            elif t.type == "th_open":
                m = _ALIGN.search(str(t.attrs.get("style") or ""))
                align.append(m.group(1) if m else None)
            elif t.type == "inline" and row is not None:
                row.append(t.content)
            elif t.type == "tr_close" and row is not None:
                if header or not align:
                    rows.append(tuple(row))
                else:
                    header = row
                row = None
            i += 1
        if start > text_start:
            segments.append("".join(lines[text_start:start]))
        segments.append(Table(header=tuple(header), rows=tuple(rows), align=tuple(align)))
        text_start = end
        i += 1
    rest = "".join(lines[text_start:])
    if rest:
        segments.append(rest)
    return segments


# --------------------------------------------------------------------------------------------
# Fenced code blocks (line by line, for bot.mrkdwn.to_mrkdwn)
# --------------------------------------------------------------------------------------------


_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")


def fence_open(line: str) -> str | None:
    m = _FENCE_OPEN.match(line)
    if m is None:
        return None
    fence, info = m.group(1), m.group(2)
    if fence[0] == "`" and "`" in info:  # GFM: a backtick fence's info string has no backticks
        return None
    return fence


def closes(line: str, fence: str) -> bool:
    m = _FENCE_CLOSE.match(line)
    return m is not None and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)


def fenced_flags(lines: Sequence[str]) -> list[bool]:
    """For each line, whether it belongs to a fenced code block (fence lines included)."""
    flags: list[bool] = []
    fence: str | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if fence is None:
            fence = fence_open(line)
            flags.append(fence is not None)
        else:
            flags.append(True)
            if closes(line, fence):
                fence = None
    return flags
