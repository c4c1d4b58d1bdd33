"""What the service tests share: corpus files, configs, a real uvicorn on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import PageRAGConfig, load_config
from pipeline.testing.serving import uvicorn_server

__all__ = ["EIGHT_PAGES", "THREE_PAGES", "serve_config", "uvicorn_server"]

THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
EIGHT_PAGES = "robust/qpdf/qpdf/qtest/qpdf/boxes.pdf"


def serve_config(
    tmp: Path,
    *,
    model_dir: Path | None = None,
    vlm_url: str | None = None,
    **serve: Any,
) -> PageRAGConfig:
    """A config for a served store under ``tmp``: the stand-in model when ``model_dir``."""
    overrides: dict[str, dict[str, Any]] = {
        "store": {"path": str(tmp / "store")},
        "render": {"dpi": 40},
        "serve": {"upload_dir": str(tmp / "uploads"), **serve},
    }
    if model_dir is not None:
        overrides["embedding"] = {"model_path": str(model_dir), "device": "cpu", "threads": 1}
    if vlm_url is not None:
        overrides["vlm"] = {"base_url": vlm_url, "api_key": "sk-fake-vlm-key", "max_retries": 0}
    return load_config(environ={}, overrides=overrides)
