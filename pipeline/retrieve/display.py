"""How a hit's lanes and text are shown to people: the CLI, the service, LangChain.

Why this exists: a hybrid search fuses two rankings, and a reader judging a
result wants to see which lane found the page and where ("visual #3 · text
#1"), and a glimpse of the page's text; every entry point shows them alike.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.types import LANES

__all__ = ["SNIPPET_CHARS", "describe_lanes", "text_snippet"]

# Characters of a page's text shown beside a hit (a line or two in a terminal).
SNIPPET_CHARS = 160


def describe_lanes(lanes: Mapping[str, int]) -> str:
    """``{"visual": 3, "text": 1}`` as ``"visual #3 · text #1"`` (visual first); "" for none."""
    known = [lane for lane in LANES if lane in lanes]
    others = sorted(set(lanes) - set(known))
    return " · ".join(f"{lane} #{lanes[lane]}" for lane in [*known, *others])


def text_snippet(text: str, chars: int = SNIPPET_CHARS) -> str:
    """The start of ``text`` on one line (whitespace collapsed), cut at a word with "…"."""
    flat = " ".join(text.split())
    if len(flat) <= chars:
        return flat
    head = flat[:chars]
    cut = head.rsplit(" ", 1)[0] if " " in head else head
    return cut.rstrip(" ,;:.") + "…"
