"""The answering stage: retrieved page images + a question → a cited answer.

Everything that does not depend on *which* vision-language model answers lives
here, so every adapter sends the same prompt and is parsed the same way:

* :data:`SYSTEM_PROMPT` and :func:`user_message_layout` — what the model is
  shown: each page image preceded by its label ``[file p.N]`` (and, with
  ``text.answer_with_text``, followed by the page's extracted text, capped at
  :data:`PAGE_TEXT_CHARS`), then the question;
* :func:`prepare_page_jpeg` — downscale and re-encode a stored page so it fits
  the model's image budget;
* :func:`parse_citations` — map the ``[file p.N]`` citations the model wrote back
  to the pages it was sent (models are sloppy: ``[p.3]``, ``[a.pdf, p. 3]``,
  ``[a.pdf p.2; b.pdf p.5]`` and other casing all resolve);
* :class:`StreamingAnswer` / :class:`AsyncStreamingAnswer` — text deltas as they
  arrive, then the same :class:`~pipeline.types.Answer` a non-streamed call gives;
* :func:`no_vlm_answer` / :class:`NoVLMAnswerer` — what ``ask`` returns when no
  model is configured: the retrieved pages and how to configure one.

Adapters (``connectors.openai_vlm.OpenAIAnswerer``) only build the wire format
from these parts and do the I/O.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from PIL import Image, UnidentifiedImageError

from pipeline.errors import QueryError, StoreError
from pipeline.types import Answer, PageHit, Usage

__all__ = [
    "NO_VLM_MESSAGE",
    "PAGE_TEXT_CHARS",
    "SYSTEM_PROMPT",
    "AnswerChunk",
    "Answerer",
    "AsyncStreamingAnswer",
    "MessagePart",
    "NoVLMAnswerer",
    "PagePart",
    "StreamingAnswer",
    "TextPart",
    "check_answer_inputs",
    "citation_label",
    "finish_answer",
    "no_vlm_answer",
    "page_text_part",
    "parse_citations",
    "prepare_page_jpeg",
    "user_message_layout",
]

SYSTEM_PROMPT = """\
You answer questions about documents using only the page images you are shown.
Each page image is preceded by its label, in the form [file p.N].

Rules:
- Use only what is visible on the pages shown. Do not use outside knowledge.
- Cite every page you use with its label exactly as given, for example \
[report.pdf p.3]. Cite several pages as [a.pdf p.2; b.pdf p.5].
- If the pages do not contain the answer, say plainly that the provided pages \
do not contain it. Do not guess.
- Be concise."""


# Characters of a page's extracted text shown beside its image (text.answer_with_text),
# after runs of spaces and blank lines are squeezed: ~1,500 tokens at ~4 characters a
# token. No page of the shared QA corpus is longer (its densest: 5,994); a longer page is
# cut, and the model told. docs/retrieval.md estimates the cost.
PAGE_TEXT_CHARS = 6000

# ---------------------------------------------------------------------------
# What the model is shown


@dataclass(frozen=True)
class TextPart:
    """A text segment of the user message."""

    text: str


@dataclass(frozen=True)
class PagePart:
    """A page image of the user message; the adapter encodes ``hit``'s image."""

    hit: PageHit


MessagePart = TextPart | PagePart


def citation_label(hit: PageHit) -> str:
    """The label a page is shown and cited with: ``[file p.N]``."""
    return f"[{hit.label}]"


def check_answer_inputs(question: str, hits: Sequence[PageHit]) -> None:
    """Refuse calls that cannot produce an answer, before any image is loaded.

    Raised here rather than by the endpoint so the message says what to do.
    """
    if not question or not question.strip():
        raise QueryError("the question is empty: ask something about the documents")
    if not hits:
        raise QueryError(
            "no pages to answer from: the search returned nothing "
            "(is the collection empty, or the filter too narrow?)"
        )


def user_message_layout(
    question: str, hits: Sequence[PageHit], *, page_text_chars: int = 0
) -> tuple[MessagePart, ...]:
    """Each page as its label followed by its image, in rank order, then the question.

    The label sits right before its image so the model can tie what it reads
    to the exact name it must cite. With ``page_text_chars`` (``text.answer_with_text``)
    each page's extracted text follows its image, labelled, at most that many
    characters (see :func:`page_text_part`); pages without text get none.
    """
    parts: list[MessagePart] = []
    for hit in hits:
        parts += [TextPart(citation_label(hit)), PagePart(hit)]
        text = page_text_part(hit, page_text_chars) if page_text_chars > 0 else None
        if text is not None:
            parts.append(text)
    parts.append(TextPart(f"Question: {question.strip()}"))
    return tuple(parts)


def page_text_part(hit: PageHit, max_chars: int = PAGE_TEXT_CHARS) -> TextPart | None:
    """The page's extracted text (its PDF text layer), labelled with the page, its runs of
    spaces (``pdftotext -layout`` columns) and blank lines squeezed, cut at ``max_chars``;
    None for a page without text."""
    lines = (" ".join(line.split()) for line in hit.text.splitlines())
    text = "\n".join(line for line in lines if line)
    if not text:
        return None
    cut = len(text) > max_chars
    body = text[:max_chars].rstrip() + (" [… text cut]" if cut else "")
    return TextPart(f"Text extracted from {citation_label(hit)} (may be incomplete):\n{body}")


def prepare_page_jpeg(hit: PageHit, *, max_side: int, quality: int) -> bytes:
    """The page's stored JPEG, shrunk so its longest side is ≤ ``max_side``.

    Always re-encoded at ``quality``: stored pages may be larger or of higher
    quality than a model's image budget allows, and every image token costs.
    """
    try:
        data = hit.load_jpeg()
    except LookupError as exc:  # no image stored: the message says how to fix it
        raise StoreError(str(exc)) from None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly: a large
            # page is never fully decoded only to be thrown away by the resize.
            opened.draft("RGB", (max_side, max_side))
            opened.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            image = opened if opened.mode in ("RGB", "L") else opened.convert("RGB")
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=quality)
    except (UnidentifiedImageError, OSError) as exc:
        raise StoreError(
            f"the stored image of {hit.label} cannot be decoded ({exc}); re-ingest the document"
        ) from None
    return out.getvalue()


# ---------------------------------------------------------------------------
# Reading citations back

_BRACKET = re.compile(r"\[([^\[\]]{1,400})\]")
# "p.3", "p 3", "pp. 3-4", "page 3", "pages 3–4", "pg. 3"
# The lookahead keeps a file name such as "p2.pdf" from reading as page 2.
_PAGE_REF = re.compile(
    r"\b(?:pages?|pp?|pg)\.?\s*(\d{1,6})(?:\s*[-–]\s*(\d{1,6}))?(?!\w|\.\w)", re.I
)
_FILE_TRIM = " \t\n,;:|\"'`*_()"
_MAX_RANGE = 50


def _file_keys(hit: PageHit) -> set[str]:
    """Names a model may use for the page's file: as labelled, its path, its stem."""
    name = hit.file_name.casefold()
    keys = {name, hit.source.casefold(), hit.source.rsplit("/", 1)[-1].casefold()}
    if "." in name:
        keys.add(name.rsplit(".", 1)[0])
    return keys


def _resolve(file: str, page: int, hits: Sequence[PageHit]) -> PageHit | None:
    same_page = [h for h in hits if h.page_number == page]
    if not file:
        # "[p.3]" is unambiguous only when a single page 3 was sent.
        return same_page[0] if len(same_page) == 1 else None
    wanted = file.casefold()
    for hit in same_page:
        if wanted in _file_keys(hit):
            return hit
    return None


def parse_citations(text: str, hits: Sequence[PageHit]) -> tuple[PageHit, ...]:
    """The pages among ``hits`` that ``text`` cites, in order of first citation.

    Accepts ``[file p.N]``, ``[p.N]`` (when only one page N was sent),
    ``[file, p. N]``, several in one bracket (``[a.pdf p.2; b.pdf p.5]``,
    ``[a.pdf p.2, p.3]`` — a file carries over within the bracket), page ranges
    (``[a.pdf pp. 2-3]``) and any casing of the file name. Citations of pages
    that were not sent are dropped: an answer can only cite what it saw.
    """
    cited: dict[str, PageHit] = {}
    for bracket in _BRACKET.finditer(text):
        inner = bracket.group(1)
        file, start = "", 0
        for ref in _PAGE_REF.finditer(inner):
            named = inner[start : ref.start()].strip(_FILE_TRIM)
            file = named or file
            start = ref.end()
            first = int(ref.group(1))
            last = int(ref.group(2) or first)
            for page in range(first, min(max(last, first), first + _MAX_RANGE) + 1):
                hit = _resolve(file, page, hits)
                if hit is not None:
                    cited.setdefault(hit.point_id, hit)
    return tuple(cited.values())


def finish_answer(
    text: str,
    hits: Sequence[PageHit],
    *,
    usage: Usage | None = None,
    model: str | None = None,
) -> Answer:
    """The :class:`Answer` for a model's full text: sources are the pages sent."""
    return Answer(
        text=text,
        sources=tuple(hits),
        cited=parse_citations(text, hits),
        usage=usage,
        model=model,
    )


# ---------------------------------------------------------------------------
# Streaming


@dataclass(frozen=True)
class AnswerChunk:
    """One piece of a streamed answer as an adapter reads it off the wire.

    Usage and the model name usually arrive in a chunk of their own (often the
    last one), so each field is optional.
    """

    text: str = ""
    usage: Usage | None = None
    model: str | None = None


class _Accumulator:
    """Collects chunks into the final Answer; shared by the sync and async streams."""

    def __init__(self, hits: Sequence[PageHit], model: str | None, *, answered: bool) -> None:
        self.hits = tuple(hits)
        self._texts: list[str] = []
        self._usage: Usage | None = None
        self._model = model
        self._answered = answered
        self.done = False

    @property
    def text(self) -> str:
        return "".join(self._texts)

    def add(self, chunk: AnswerChunk) -> str:
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.model:
            self._model = chunk.model
        if chunk.text:
            self._texts.append(chunk.text)
        return chunk.text

    def answer(self) -> Answer:
        if not self._answered:
            return Answer(text=self.text, sources=self.hits, answered=False)
        return finish_answer(self.text, self.hits, usage=self._usage, model=self._model)


class StreamingAnswer:
    """A streamed answer: iterate for text deltas, then :meth:`result` (or ``.answer``).

    ``result()`` reads whatever is left of the stream first, so calling it
    without iterating gives the whole answer too. Use as a context manager (or
    call :meth:`close`) to release the connection when stopping early.
    """

    def __init__(
        self,
        chunks: Iterable[AnswerChunk],
        hits: Sequence[PageHit],
        *,
        model: str | None = None,
        answered: bool = True,
    ) -> None:
        self._chunks = iter(chunks)
        self._acc = _Accumulator(hits, model, answered=answered)

    @classmethod
    def completed(cls, answer: Answer) -> StreamingAnswer:
        """A stream that yields an already known answer in one piece (e.g. no VLM)."""
        chunk = AnswerChunk(text=answer.text, usage=answer.usage, model=answer.model)
        return cls([chunk], answer.sources, model=answer.model, answered=answer.answered)

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._acc.text

    @property
    def sources(self) -> tuple[PageHit, ...]:
        """The pages the model is shown, known before the first delta arrives."""
        return self._acc.hits

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks:
            if delta := self._acc.add(chunk):
                yield delta
        self._acc.done = True

    def result(self) -> Answer:
        """The final Answer (usage and citations included), reading the rest first."""
        if not self._acc.done:
            for _ in self:
                pass
        return self._acc.answer()

    @property
    def answer(self) -> Answer:
        """Same as :meth:`result`."""
        return self.result()

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> StreamingAnswer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncStreamingAnswer:
    """The async form of :class:`StreamingAnswer`: ``async for``, ``await result()``."""

    def __init__(
        self,
        chunks: AsyncIterable[AnswerChunk],
        hits: Sequence[PageHit],
        *,
        model: str | None = None,
        answered: bool = True,
    ) -> None:
        self._chunks = aiter(chunks)
        self._acc = _Accumulator(hits, model, answered=answered)

    @classmethod
    def completed(cls, answer: Answer) -> AsyncStreamingAnswer:
        """A stream that yields an already known answer in one piece (e.g. no VLM)."""

        async def one() -> AsyncIterator[AnswerChunk]:
            yield AnswerChunk(text=answer.text, usage=answer.usage, model=answer.model)

        return cls(one(), answer.sources, model=answer.model, answered=answer.answered)

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._acc.text

    async def __aiter__(self) -> AsyncIterator[str]:
        async for chunk in self._chunks:
            if delta := self._acc.add(chunk):
                yield delta
        self._acc.done = True

    async def result(self) -> Answer:
        """The final Answer (usage and citations included), reading the rest first."""
        if not self._acc.done:
            async for _ in self:
                pass
        return self._acc.answer()

    @property
    def answer(self) -> Answer:
        """The final Answer once the stream is read (``await result()`` reads it first)."""
        if not self._acc.done:
            raise RuntimeError("the stream is not finished: iterate it or await result() first")
        return self._acc.answer()

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncStreamingAnswer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------
# The stage


@runtime_checkable
class Answerer(Protocol):
    """Answers a question from retrieved pages, citing them.

    ``stream``/``astream`` open the request before returning, so endpoint
    errors (bad key, unknown model) raise there, not halfway through a loop.
    """

    def answer(self, question: str, hits: Sequence[PageHit]) -> Answer:
        """The full answer; ``sources`` are ``hits``, ``cited`` the pages it cites."""
        ...

    def stream(self, question: str, hits: Sequence[PageHit]) -> StreamingAnswer:
        """Text deltas as they arrive; ``.result()`` gives the same Answer as ``answer``."""
        ...

    async def aanswer(self, question: str, hits: Sequence[PageHit]) -> Answer:
        """Async :meth:`answer`."""
        ...

    async def astream(self, question: str, hits: Sequence[PageHit]) -> AsyncStreamingAnswer:
        """Async :meth:`stream`."""
        ...


NO_VLM_MESSAGE = (
    "answering needs a vision-language model, and none is configured. Set vlm.base_url "
    "(env PAGERAG_VLM__BASE_URL) to an OpenAI-compatible endpoint (vLLM, Ollama, …), or set "
    "OPENAI_API_KEY to use OpenAI"
)


def no_vlm_answer(hits: Sequence[PageHit]) -> Answer:
    """What ``ask`` returns when no model is configured: the pages, and how to get answers."""
    lines = [f"No answer: {NO_VLM_MESSAGE}."]
    if hits:
        lines.append("The retrieved pages are:")
        lines += [
            f"  {rank}. {citation_label(hit)} (score {hit.score:.4f})"
            for rank, hit in enumerate(hits, 1)
        ]
    else:
        lines.append("No pages were retrieved.")
    return Answer(text="\n".join(lines), sources=tuple(hits), answered=False)


class NoVLMAnswerer:
    """The :class:`Answerer` used when no model is configured: always :func:`no_vlm_answer`.

    Lets the API layer treat "no VLM" like any other answerer, streaming included.
    """

    def answer(self, question: str, hits: Sequence[PageHit]) -> Answer:
        return no_vlm_answer(hits)

    def stream(self, question: str, hits: Sequence[PageHit]) -> StreamingAnswer:
        return StreamingAnswer.completed(no_vlm_answer(hits))

    async def aanswer(self, question: str, hits: Sequence[PageHit]) -> Answer:
        return no_vlm_answer(hits)

    async def astream(self, question: str, hits: Sequence[PageHit]) -> AsyncStreamingAnswer:
        return AsyncStreamingAnswer.completed(no_vlm_answer(hits))
