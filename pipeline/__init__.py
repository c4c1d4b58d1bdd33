"""pagerag: retrieval-augmented generation over page images.

PDF pages are rendered to images, embedded with a late-interaction vision
model (ColPali via FastEmbed), stored in a Qdrant multivector collection and
searched by MaxSim; the best pages go to a vision-language model that answers
and cites them. No OCR, no chunking.

>>> from pipeline import PageRAG
>>> rag = PageRAG.from_config()  # doctest: +SKIP
"""

from pipeline.api import PageRAG, SearchOptions, Status
from pipeline.config import PageRAGConfig, load_config
from pipeline.ingest.job import FileOutcome, IngestReport
from pipeline.types import Answer, PageFilter, PageHit

__all__ = [
    "Answer",
    "FileOutcome",
    "IngestReport",
    "PageFilter",
    "PageHit",
    "PageRAG",
    "PageRAGConfig",
    "SearchOptions",
    "Status",
    "load_config",
]
