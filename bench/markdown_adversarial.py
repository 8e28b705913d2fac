"""Time bot.markdown on adversarial comments: the figures behind MAX_COMMENT_CHARS.

For each pathological input it prints the seconds render_comment takes as relayed (cut to the
budget) and to_mrkdwn on the whole text with no budget, at two sizes: with linear code the
second time is about twice the first. Usage:

    .venv/bin/python bench/markdown_adversarial.py [size_in_chars]   # default 100000
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from bot.markdown import MAX_COMMENT_CHARS, render_comment
from bot.mrkdwn import to_mrkdwn

LINK = "https://github.com/acme/ml-models/pull/42#issuecomment-1"


def cases(n: int) -> dict[str, str]:
    def fill(unit: str) -> str:
        return (unit * (n // len(unit) + 1))[:n]

    return {
        "<summary  x8000 style": fill("<summary "),
        "<summary> never closed": fill("<summary>a "),
        "url with )))) tail": "https://x.example/" + ")" * (n - 18),
        "url with .... tail": "https://x.example/" + "." * (n - 18),
        "spaces then x": " " * (n - 1) + "x",
        "heading with spaces": "# " + " " * (n - 3) + "x",
        "[[[[ unclosed": fill("["),
        "[x](a [x](a": fill("[x](a "),
        "`` runs": fill("`a``"),
        "** unmatched": fill("**a "),
        "<a  tags": fill("<a "),
        "&lt; autolinks": fill("<https://a.example "),
        "| table | rows |": "| a | b |\n|---|---|\n" + fill("| 1 | 2 |\n"),
        "lines of #": fill("#\n"),
    }


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"budget MAX_COMMENT_CHARS = {MAX_COMMENT_CHARS:,} characters")
    print(f"{'case':28} {'relayed':>9} {'whole ' + format(n, ','):>14} {'whole x2':>10} ratio")
    small, large = cases(n), cases(2 * n)
    for name, body in small.items():
        relayed = seconds(lambda b=body: render_comment(b, link=LINK, author="x"))
        whole = seconds(lambda b=body: to_mrkdwn(b))
        double = seconds(lambda b=large[name]: to_mrkdwn(b))
        ratio = double / whole if whole > 0 else float("nan")
        print(f"{name:28} {relayed:9.3f} {whole:14.3f} {double:10.3f} {ratio:5.1f}")


if __name__ == "__main__":
    main()
