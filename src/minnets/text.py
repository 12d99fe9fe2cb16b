"""Wording of the messages and reports people read."""

from __future__ import annotations


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """``plural(1, "run")`` -> "1 run", ``plural(2, "run")`` -> "2 runs" (thousands separated)."""
    word = noun if count == 1 else plural_noun or f"{noun}s"
    return f"{count:,} {word}"
