"""Facts the contract tests collect for the end-of-run summary (printed by conftest.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

# "corpus <pass>": Counter of "<status> <body kind>" for every webhook payload sent.
corpus: dict[str, Counter[str]] = {}
# Anything else worth a line in the summary: name -> value.
facts: dict[str, Any] = {}


def lines() -> list[str]:
    out = []
    for name, counts in corpus.items():
        total = sum(counts.values())
        detail = ", ".join(f"{n} x {k}" for k, n in sorted(counts.items()))
        out.append(f"{name}: {total} payloads sent: {detail}")
    for name, value in facts.items():
        out.append(f"{name}: {value}")
    return out
