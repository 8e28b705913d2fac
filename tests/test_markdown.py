"""bot.markdown and bot.mrkdwn: GitHub comment markdown to Slack mrkdwn and Block Kit."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block
from slack_sdk.models.blocks.basic_components import RawTextObject

from bot.gfm import Table, split_markdown
from bot.markdown import EMPTY_CELL, METRICS_MARKER, has_metrics, render_comment
from bot.mrkdwn import cell_text, to_mrkdwn
from bot.slacktext import escape_mrkdwn

LINK = "https://github.com/acme/ml/pull/7#issuecomment-1"

METRICS = """<!-- chatops:metrics -->
### Evaluation of abc1234 vs main
| Source | Loss | Accuracy |
|:-------|-----:|---------:|
| Head   | 0.231 | 91.2% |
| Base   | 0.245 | 90.4% |
| Diff   | **-0.014** | +0.8 pp |

Full report: [artifact](https://github.com/acme/ml/actions/runs/1)
"""


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def check_cell(cell: dict[str, Any]) -> None:
    if cell["type"] == "raw_text":
        obj = RawTextObject(text=cell["text"])
        obj.validate_json()  # refuses empty text
        assert obj.to_dict() == cell
    else:
        assert cell["type"] == "rich_text"
        parsed = Block.parse(cell)
        assert parsed is not None
        parsed.validate_json()
        assert parsed.to_dict() == cell
        texts = [e["text"] for s in cell["elements"] for e in s["elements"]]
        assert all(t.strip() for t in texts)


def check_message(message: dict[str, Any]) -> None:
    """The message is what chat.postMessage accepts: valid blocks within Slack's limits."""
    assert set(message) == {"text", "blocks"}
    json.dumps(message)
    text = message["text"]
    assert isinstance(text, str) and text.strip() and len(text) <= 3000
    blocks = message["blocks"]
    assert 1 <= len(blocks) <= 50
    assert sum(b["type"] == "table" for b in blocks) <= 1
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None, block
        parsed.validate_json()
        assert parsed.to_dict() == block
        if block["type"] == "table":
            rows = block["rows"]
            assert 1 <= len(rows) <= 100
            width = len(rows[0])
            assert 1 <= width <= 20
            assert all(len(row) == width for row in rows)
            assert len(block["column_settings"]) == width
            for row in rows:
                for cell in row:
                    check_cell(cell)
        elif block["type"] == "section":
            assert block["text"]["text"].strip()


def check_all(messages: list[dict[str, Any]]) -> None:
    assert messages
    for message in messages:
        check_message(message)


def tables(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in message["blocks"] if b["type"] == "table"]


def texts(message: dict[str, Any]) -> str:
    out = []
    for block in message["blocks"]:
        if block["type"] == "section":
            out.append(block["text"]["text"])
        elif block["type"] == "context":
            out.extend(e["text"] for e in block["elements"])
    return "\n".join(out)


def shown(cell: dict[str, Any]) -> str:
    if cell["type"] == "raw_text":
        return str(cell["text"])
    return "".join(e["text"] for s in cell["elements"] for e in s["elements"])


def grid(table: dict[str, Any]) -> list[list[str]]:
    return [[shown(c) for c in row] for row in table["rows"]]


def md_table(header: list[str], rows: list[list[str]], delim: str = "---") -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([delim] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# the metrics comment
# ------------------------------------------------------------------------------------------


def test_metrics_comment_renders_as_one_message_with_a_native_table() -> None:
    """The evaluation workflow's comment becomes one message: heading, table, link, footer."""
    messages = render_comment(METRICS, link=LINK, author="eval-bot[bot]")
    check_all(messages)
    assert len(messages) == 1
    (message,) = messages
    assert [b["type"] for b in message["blocks"]] == ["section", "table", "section", "context"]
    assert message["blocks"][0]["text"]["text"] == "*Evaluation of abc1234 vs main*"
    (table,) = tables(message)
    assert grid(table) == [
        ["Source", "Loss", "Accuracy"],
        ["Head", "0.231", "91.2%"],
        ["Base", "0.245", "90.4%"],
        ["Diff", "-0.014", "+0.8 pp"],
    ]
    assert [s["align"] for s in table["column_settings"]] == ["left", "right", "right"]
    header = table["rows"][0]
    assert all(c["type"] == "rich_text" for c in header)
    assert all(
        e["style"] == {"bold": True} for c in header for s in c["elements"] for e in s["elements"]
    )
    assert all(c["type"] == "raw_text" for row in table["rows"][1:] for c in row)
    assert message["blocks"][2]["text"]["text"] == (
        "Full report: <https://github.com/acme/ml/actions/runs/1|artifact>"
    )
    assert message["blocks"][3]["elements"][0]["text"] == (
        f"Comment by eval-bot[bot] · <{LINK}|view on GitHub>"
    )
    assert message["text"].startswith("Metrics from eval-bot[bot]: Source/Loss/Accuracy — ")
    assert "Head 0.231 91.2%" in message["text"]
    assert "Base 0.245 90.4%" in message["text"]


def test_marker_and_table_alone_render() -> None:
    """A comment that is only the marker and a table still renders its table."""
    body = METRICS_MARKER + "\n" + md_table(["a", "b"], [["1", "2"]])
    (message,) = render_comment(body, link=LINK, author="bot")
    check_message(message)
    assert [b["type"] for b in message["blocks"]] == ["table", "context"]


def test_numeric_columns_are_right_aligned_unless_the_author_aligned_them() -> None:
    body = (
        "| name | n | pct | note | mixed | centred |\n"
        "|---|---|---|---|:--|:-:|\n"
        "| a | 1,234 | 12% | ok | 1 | 3 |\n"
        "| b | n/a | -0.5 pp | 2 | x | 4 |\n"
        "| c | 1.2e-3 | 0.91 ± 0.02 | | 2 | 5 |\n"
    )
    (message,) = render_comment(body, link=LINK, author="bot")
    (table,) = tables(message)
    aligns = [s["align"] for s in table["column_settings"]]
    assert aligns == ["left", "right", "right", "left", "left", "center"]
    assert table["column_settings"][0]["is_wrapped"] is True
    assert "is_wrapped" not in table["column_settings"][1]


def test_empty_cells_stay_valid() -> None:
    """Slack refuses empty raw_text; empty cells and header cells show a dash."""
    body = "|  | Loss |\n|---|---|\n| Head |  |\n| Base\n"
    (message,) = render_comment(body, link=LINK, author="bot")
    check_message(message)
    (table,) = tables(message)
    assert grid(table) == [[EMPTY_CELL, "Loss"], ["Head", EMPTY_CELL], ["Base", EMPTY_CELL]]


# ------------------------------------------------------------------------------------------
# escaping and mrkdwn
# ------------------------------------------------------------------------------------------


def test_escape_mrkdwn() -> None:
    assert escape_mrkdwn("a & <b> > c") == "a &amp; &lt;b&gt; &gt; c"
    assert escape_mrkdwn("&amp;") == "&amp;amp;"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("ping <!channel> now", "ping &lt;!channel&gt; now"),
        ("<!here|here>", "&lt;!here|here&gt;"),
        ("hi <@U123>", "hi &lt;@U123&gt;"),
        ("see <#C1>", "see &lt;#C1&gt;"),
        ("<https://evil|click>", "&lt;https://evil|click&gt;"),
        ("`<!channel>`", "`&lt;!channel&gt;`"),
        ("```\n<!channel>\n```", "```\n&lt;!channel&gt;\n```"),
    ],
)
def test_user_text_cannot_ping_or_forge_links(source: str, expected: str) -> None:
    assert to_mrkdwn(source) == expected


def test_author_and_cells_are_escaped_in_text_and_fallback() -> None:
    body = "| who |\n|---|\n| <!channel> |\n"
    (message,) = render_comment(body, link=LINK, author="<!channel>")
    assert "<!" not in texts(message)
    assert "<!" not in message["text"]
    assert "&lt;!channel&gt;" in message["text"]
    # raw_text is shown as typed and never parsed for mentions: the cell keeps its characters.
    assert grid(tables(message)[0])[1] == ["<!channel>"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("[artifact](https://x.io/a?b=1&c=2)", "<https://x.io/a?b=1&amp;c=2|artifact>"),
        ("[**bold** label](http://x.io)", "<http://x.io|*bold* label>"),
        ("[t](https://x.io/a|b)", "<https://x.io/a%7Cb|t>"),
        ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
        ("[x](/relative/path)", "[x](/relative/path)"),
        ("![plot](https://x.io/p.png)", "<https://x.io/p.png|plot>"),
        ("<https://x.io/run>", "<https://x.io/run>"),
        ("see https://x.io/a_b_c.", "see <https://x.io/a_b_c>."),
    ],
)
def test_links(source: str, expected: str) -> None:
    assert to_mrkdwn(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*it* and _it_", "_it_ and _it_"),
        ("**bold _it_**", "*bold _it_*"),
        ("~~gone~~", "~gone~"),
        ("snake_case_name and 2 * 3 * 4", "snake_case_name and 2 * 3 * 4"),
        ("`**not bold** _x_`", "`**not bold** _x_`"),
        ("\\*literal\\* \\_x\\_", "*literal* _x_"),
        ("# Title", "*Title*"),
        ("text\n### Sub **title** ###\nmore", "text\n*Sub title*\nmore"),
        ("- one\n* two\n+ three\n  - nested", "• one\n• two\n• three\n    • nested"),
        ("- [ ] todo\n- [x] done", "• ☐ todo\n• ☑ done"),
        ("> quoted **text**", "> quoted *text*"),
        ("a <!-- hidden\ncomment --> b", "a  b"),
        (
            "<details>\n<summary>More</summary>\n\nhidden <b>body</b>\n</details>",
            "*More*\n\nhidden body",
        ),
        ("a<br>b", "a\nb"),
        ("a\n\n\n\n\nb", "a\n\nb"),
        ("  \n\n  padded  \n\n", "padded"),
        ("---", "───"),
    ],
)
def test_formatting(source: str, expected: str) -> None:
    assert to_mrkdwn(source) == expected


def test_fenced_code_is_kept_verbatim() -> None:
    source = "before\n```python\nx = **y** | z\n\n\n\nif a < b: pass\n```\nafter"
    assert to_mrkdwn(source) == ("before\n```\nx = **y** | z\n\n\n\nif a &lt; b: pass\n```\nafter")
    assert to_mrkdwn("~~~\n# not a heading\n~~~") == "```\n# not a heading\n```"
    assert to_mrkdwn("```\nunclosed **code**") == "```\nunclosed **code**\n```"


# ------------------------------------------------------------------------------------------
# split_markdown and cell_text
# ------------------------------------------------------------------------------------------


def test_split_keeps_text_and_finds_the_table() -> None:
    segments = split_markdown(METRICS)
    assert segments == [
        "<!-- chatops:metrics -->\n### Evaluation of abc1234 vs main\n",
        Table(
            header=("Source", "Loss", "Accuracy"),
            rows=(
                ("Head", "0.231", "91.2%"),
                ("Base", "0.245", "90.4%"),
                ("Diff", "**-0.014**", "+0.8 pp"),
            ),
            align=("left", "right", "right"),
        ),
        "\nFull report: [artifact](https://github.com/acme/ml/actions/runs/1)\n",
    ]


@pytest.mark.parametrize("fence", ["```", "~~~", "````md"])
def test_tables_in_fenced_code_are_not_tables(fence: str) -> None:
    body = f"{fence}\n| a | b |\n|---|---|\n| 1 | 2 |\n{fence[:4].rstrip('md')}\n"
    assert split_markdown(body) == [body]
    (message,) = render_comment(body, link=LINK, author="x")
    assert not tables(message)
    assert "| a | b |" in texts(message)


def test_pipes_optional_escaped_and_in_code() -> None:
    body = "a | b\n:-:|--\n`x \\| y` | c \\| d\n"
    (table,) = split_markdown(body)
    assert isinstance(table, Table)
    assert table.header == ("a", "b")
    assert table.align == ("center", None)
    # GFM: an escaped pipe is part of the cell, inside a code span too (the \\ is consumed).
    assert table.rows == (("`x | y`", "c | d"),)
    assert [cell_text(c) for c in table.rows[0]] == ["x | y", "c | d"]


def test_an_unescaped_pipe_inside_a_code_span_separates_cells_as_on_github() -> None:
    """GitHub splits a row at every unescaped pipe, code spans included (GFM spec, tables:
    "include a pipe in a cell's content by escaping it, including inside other inline
    spans"); the extra cell is dropped."""
    body = "| expr | value |\n|---|---|\n| `a|b` | 1 |\n"
    (table,) = split_markdown(body)
    assert isinstance(table, Table)
    assert table.rows == (("`a", "b`"),)


def test_ragged_rows_are_padded_or_cut() -> None:
    body = "| a | b | c |\n|---|---|---|\n| 1 |\n| 1 | 2 | 3 | 4 | 5 |\n"
    (table,) = split_markdown(body)
    assert isinstance(table, Table)
    assert table.rows == (("1", "", ""), ("1", "2", "3"))


def test_not_a_table_when_header_and_delimiter_disagree() -> None:
    body = "| a | b |\n|---|\n| 1 | 2 |\n"
    assert split_markdown(body) == [body]


def test_table_ends_at_blank_line_or_new_block() -> None:
    body = "| a |\n|---|\n| 1 |\nplain row\n> quote\n"
    segments = split_markdown(body)
    assert isinstance(segments[0], Table)
    assert segments[0].rows == (("1",), ("plain row",))  # GFM: a pipe-less line is still a row
    assert segments[1:] == ["> quote\n"]
    segments = split_markdown("| a |\n|---|\n| 1 |\n\ntext | not a row\n")
    assert isinstance(segments[0], Table)
    assert segments[1:] == ["\ntext | not a row\n"]


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("**-0.014**", "-0.014"),
        ("__x__ _y_ *z* ~~w~~", "x y z w"),
        ("`a|b`", "a|b"),
        ("`a \\| b`", "a | b"),
        ("[run 12](https://x.io/r/12)", "run 12"),
        ("<!-- note -->91.2%<br>±0.1", "91.2% ±0.1"),
        ("<b>bold</b> &amp; <https://x.io>", "bold & https://x.io"),
        ("snake_case_name", "snake_case_name"),
        ("\\*star\\*", "*star*"),
    ],
)
def test_cell_text(cell: str, expected: str) -> None:
    assert cell_text(cell) == expected


# ------------------------------------------------------------------------------------------
# Slack limits
# ------------------------------------------------------------------------------------------


def test_long_table_is_cut_to_100_rows_with_a_pointer() -> None:
    body = md_table(["i", "v"], [[str(i), f"{i / 10}"] for i in range(149)])  # 150 rows
    (message,) = render_comment(body, link=LINK, author="bot")
    check_message(message)
    (table,) = tables(message)
    assert len(table["rows"]) == 100
    assert grid(table)[-1] == ["98", "9.8"]
    note = message["blocks"][1]
    assert note["type"] == "context"
    assert note["elements"][0]["text"] == f"… 50 more rows: <{LINK}|see the full comment>"


def test_wide_table_is_cut_to_20_columns() -> None:
    header = [f"c{i}" for i in range(25)]
    body = md_table(header, [[str(i) for i in range(25)]])
    (message,) = render_comment(body, link=LINK, author="bot")
    check_message(message)
    (table,) = tables(message)
    assert all(len(row) == 20 for row in table["rows"])
    assert len(table["column_settings"]) == 20
    assert grid(table)[0][-1] == "c19"
    assert "5 more columns" in texts(message)


def test_two_tables_make_two_messages_in_order() -> None:
    body = (
        "Intro\n\n"
        + md_table(["first"], [["1"]])
        + "\nBetween the tables\n\n"
        + md_table(["second"], [["2"]])
        + "\nOutro\n"
    )
    messages = render_comment(body, link=LINK, author="bot")
    check_all(messages)
    assert len(messages) == 2
    first, second = messages
    assert [b["type"] for b in first["blocks"]] == ["section", "table"]
    assert first["blocks"][0]["text"]["text"] == "Intro"
    assert grid(tables(first)[0])[0] == ["first"]
    # the text before a table travels with that table; the footer closes the last message
    assert [b["type"] for b in second["blocks"]] == ["section", "table", "section", "context"]
    assert second["blocks"][0]["text"]["text"] == "Between the tables"
    assert grid(tables(second)[0])[0] == ["second"]
    assert "(part 1/2)" in first["text"] and "(part 2/2)" in second["text"]


def test_long_text_is_split_into_sections_of_at_most_3000() -> None:
    paragraph = "word " * 500  # 2500 characters
    body = "\n\n".join([paragraph] * 5) + "\n\n```\n" + "code line\n" * 600 + "```\n"
    (message,) = render_comment(body, link=LINK, author="bot")
    check_message(message)
    sections = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]
    assert len(sections) > 5
    assert all(len(s) <= 3000 for s in sections)
    assert all(s.count("```") % 2 == 0 for s in sections)  # code blocks closed and reopened


def test_more_than_50_blocks_spill_into_more_messages() -> None:
    body = "\n\n".join(f"{i:02} " + "x" * 2900 for i in range(60))
    # Past the default budget (MAX_COMMENT_CHARS): a larger one exercises the spilling.
    messages = render_comment(body, link=LINK, author="bot", budget=200_000)
    check_all(messages)
    assert len(messages) == 2
    assert sum(len(m["blocks"]) for m in messages) == 61
    assert messages[-1]["blocks"][-1]["type"] == "context"


@pytest.mark.parametrize("body", ["", "   \n\t\n", METRICS_MARKER, "<!-- only a comment -->"])
def test_empty_comment(body: str) -> None:
    (message,) = render_comment(body, link=LINK, author="octocat")
    check_message(message)
    assert "empty" in texts(message)
    assert f"<{LINK}|view on GitHub>" in texts(message)
    assert "octocat" in message["text"]


def test_link_that_is_not_http_is_not_linked() -> None:
    (message,) = render_comment("hi", link="javascript:alert(1)", author="x")
    assert texts(message).endswith("Comment by x · view on GitHub")


def test_has_metrics() -> None:
    table = md_table(["a"], [["1"]])
    assert has_metrics(METRICS, author_is_bot=False)
    assert has_metrics(METRICS_MARKER + "\nno table", author_is_bot=False)
    assert has_metrics(table, author_is_bot=True)
    assert not has_metrics(table, author_is_bot=False)
    assert not has_metrics("just text", author_is_bot=True)
    assert not has_metrics("```\n" + table + "```\n", author_is_bot=True)


# ------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------

TOKENS = [
    "| a | b |\n",
    "|---|--:|\n",
    "| 1 | 2 |\n",
    "a | b\n",
    ":-:|---\n",
    "\n",
    "```\n",
    "~~~\n",
    "`",
    "\\|",
    "**",
    "*",
    "_",
    "~~",
    "# ",
    "- ",
    "> ",
    "<!--",
    "-->",
    "<!channel>",
    "<@U123>",
    "<https://evil|click>",
    "[x](https://x.io)",
    "https://x.io/a_b",
    "<details>",
    "&",
    "<",
    ">",
    "<br>",
    METRICS_MARKER,
]
markdownish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=12)), max_size=40).map(
    "".join
)
any_text = st.one_of(st.text(max_size=400), markdownish)
FAST = settings(max_examples=200, deadline=None)


@FAST
@given(any_text, st.text(max_size=40))
def test_any_body_renders_valid_messages(body: str, author: str) -> None:
    check_all(render_comment(body, link=LINK, author=author))


@FAST
@given(st.text())
def test_escape_mrkdwn_leaves_no_angle_brackets(text: str) -> None:
    escaped = escape_mrkdwn(text)
    assert "<" not in escaped and ">" not in escaped


@FAST
@given(any_text)
def test_to_mrkdwn_only_emits_http_links(text: str) -> None:
    out = to_mrkdwn(text)
    assert "<!" not in out and "<@" not in out and "<#" not in out
    for m in re.finditer("<", out):
        assert re.match(r"<https?://[^\s<>|]+(\|[^<>]*)?>", out[m.start() :]), out


@FAST
@given(any_text)
def test_split_markdown_loses_no_text(body: str) -> None:
    segments = split_markdown(body)
    pos = 0
    for seg in segments:
        if isinstance(seg, str):
            assert seg
            found = body.find(seg, pos)
            assert found >= pos
            pos = found + len(seg)
    if not any(isinstance(s, Table) for s in segments):
        assert "".join(s for s in segments if isinstance(s, str)) == body


# No "<": an HTML block (<!--, <script) runs past blank lines and, as on GitHub, swallows a
# table after it.
plain_chunk = st.text(
    alphabet=st.characters(exclude_characters="|`~\\\r<", exclude_categories=["Cs"]),
    max_size=40,
).map(lambda s: s + "\n" if s else s)
cell = st.text(
    alphabet=st.characters(exclude_characters="|`\\\n\r", exclude_categories=["Cs", "Cc"]),
    max_size=8,
)


@st.composite
def md_tables(draw: st.DrawFn) -> tuple[str, list[str]]:
    width = draw(st.integers(1, 4))
    header = draw(st.lists(cell, min_size=width, max_size=width))
    rows = draw(st.lists(st.lists(cell, min_size=width, max_size=width), max_size=4))
    return md_table(header, rows), [c.strip() for c in header]


@FAST
@given(st.lists(st.tuples(plain_chunk, md_tables()), max_size=3), plain_chunk)
def test_split_markdown_separates_tables_from_text(
    parts: list[tuple[str, tuple[str, list[str]]]], tail: str
) -> None:
    # A blank line before each table: right after a quote or list item line, a table's lines
    # are that paragraph's lazy continuation on GitHub, not a table.
    body = "".join(chunk + "\n" + table + "\n" for chunk, (table, _) in parts) + tail
    segments = split_markdown(body)
    found = [s for s in segments if isinstance(s, Table)]
    assert [list(t.header) for t in found] == [header for _, (_, header) in parts]
    text = "".join(s for s in segments if isinstance(s, str))
    assert text == "".join(chunk + "\n\n" for chunk, _ in parts) + tail
