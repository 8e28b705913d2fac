"""GitHub comment markdown to Slack mrkdwn text: pure functions, no I/O.

Also table cells as plain text. The Block Kit side (tables, sections, the message) is bot.markdown.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_left

from bot.gfm import closes, fence_open, fenced_flags
from bot.slacktext import INVISIBLE, escape_mrkdwn, is_http_url, misleading_host

__all__ = ["cell_text", "to_mrkdwn"]

# Not a documented limit: a defensive cap so one runaway cell cannot bloat the message.
MAX_CELL_CHARS = 1000

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
