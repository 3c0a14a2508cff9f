"""The report's unit: a `Block` of text, preformatted text, a table or a figure."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Block"]


@dataclass(frozen=True)
class Block:
    """One piece of a section: text, preformatted text, a table or a figure."""

    kind: str          # "text" | "pre" | "table" | "figure"
    content: object
    caption: str = ""
    name: str = ""     # figure file stem
