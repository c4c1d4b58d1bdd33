"""Answering: the top pages and a question → a cited answer from a VLM.

* :mod:`~pipeline.answer.answerer` — the ``Answerer`` protocol
  (``connectors.openai_vlm`` implements it), the prompt's parts, citation
  parsing, and the stand-in used when no VLM is configured.
* :mod:`~pipeline.answer.messages` — those parts as the chat-completions
  messages (system prompt, labelled page images, the question) that every
  OpenAI-compatible endpoint takes.
"""

from pipeline.answer.answerer import Answerer, NoVLMAnswerer, StreamingAnswer

__all__ = ["Answerer", "NoVLMAnswerer", "StreamingAnswer"]
