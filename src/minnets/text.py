"""Wording of the messages and reports people read."""

from __future__ import annotations

import re


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """``plural(1, "run")`` -> "1 run", ``plural(2, "run")`` -> "2 runs" (thousands separated)."""
    word = noun if count == 1 else plural_noun or f"{noun}s"
    return f"{count:,} {word}"


def slug(text: str) -> str:
    """A file-name-safe form of a title: runs of other characters than letters, digits and dots
    become one ``_`` (``"cifar10 (unit=product)"`` -> ``"cifar10_unit_product"``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")
