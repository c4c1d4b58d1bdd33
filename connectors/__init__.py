"""Adapters between pagerag's stage protocols and outside systems.

Each module wraps one outside library (fastembed, Qdrant, an OpenAI-compatible
VLM endpoint …) behind a protocol from ``pipeline``; the library is imported
lazily inside the adapter, so a missing optional extra surfaces as
``pipeline.errors.OptionalDependencyError`` only when that adapter is used.
"""
