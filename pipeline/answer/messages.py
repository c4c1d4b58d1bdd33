"""The chat messages a VLM is sent: pages and a question in the chat-completions layout.

OpenAI, vLLM, Ollama and LangChain's multimodal chat models all take the
same message list: a system message, then a user message whose content is a
list of ``{"type": "text"}`` and ``{"type": "image_url"}`` parts, images as
``data:image/jpeg;base64,…`` URLs. :func:`chat_messages` builds it from the
provider-neutral layout of :mod:`pipeline.answer.answerer` (each page's
``[file p.N]`` label right before its image, optionally its extracted text
after it, then the question); an adapter
adds its own request fields (model, token limit, streaming) and does the I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from pipeline.answer.answerer import (
    SYSTEM_PROMPT,
    PagePart,
    check_answer_inputs,
    prepare_page_jpeg,
    user_message_layout,
)
from pipeline.types import PageHit

__all__ = ["chat_messages", "jpeg_data_url"]


def chat_messages(
    question: str,
    hits: Sequence[PageHit],
    *,
    max_image_side: int,
    jpeg_quality: int,
    page_text_chars: int = 0,
) -> list[dict[str, Any]]:
    """The system prompt, then the pages (shrunk to ``max_image_side``) and the question.

    ``page_text_chars`` > 0 (``text.answer_with_text``) adds each page's extracted
    text after its image, labelled, cut at that many characters.
    Refuses an empty question or no pages before any image is loaded.
    """
    check_answer_inputs(question, hits)
    content: list[dict[str, Any]] = []
    for part in user_message_layout(question, hits, page_text_chars=page_text_chars):
        if isinstance(part, PagePart):
            jpeg = prepare_page_jpeg(part.hit, max_side=max_image_side, quality=jpeg_quality)
            content.append({"type": "image_url", "image_url": {"url": jpeg_data_url(jpeg)}})
        else:
            content.append({"type": "text", "text": part.text})
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": content},
    ]


def jpeg_data_url(jpeg: bytes) -> str:
    """``data:image/jpeg;base64,…``: how chat APIs take an image inline."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
