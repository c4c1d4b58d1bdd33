"""Where ingested files may come from: uploads under safe names, paths under ``serve.roots``.

* An uploaded file keeps only its base name (no folders, no ``..``, no
  hidden or control characters) and must have an extension pagerag ingests.
  It is kept under :func:`upload_folder` (``serve.upload_dir``/collection):
  that path is the document's recorded source, so uploading a changed file
  of the same name replaces the old version, as re-ingesting a path does.
* A path to ingest is resolved (``..`` and symlinks included) and must lie
  inside one of ``serve.roots``; so must every file a folder holds. Globs are
  refused. The containment check comes before any look at the file system,
  so the answer never tells whether a path outside the roots exists.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from pipeline.config import ServeConfig, default_data_dir
from pipeline.ingest.sources import discover
from pipeline.serve.problems import ServeError

__all__ = ["inside_roots", "resolve_paths", "safe_file_name", "upload_folder"]

_GLOB = frozenset("*?[")
_MAX_NAME_BYTES = 255


def upload_folder(settings: ServeConfig, collection: str) -> Path:
    """Where uploaded files of ``collection`` are kept."""
    base = settings.upload_dir or default_data_dir().with_name("pagerag-uploads")
    return base / collection


def safe_file_name(name: str | None, extensions: Iterable[str]) -> str:
    """The base name an uploaded file is stored under, or a 400/415 saying why not."""
    raw = (name or "").replace("\\", "/")
    base = PurePosixPath(raw).name
    cleaned = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    if not cleaned or cleaned in (".", "..") or cleaned.startswith("."):
        raise ServeError(400, f"upload file name {name!r} is not usable: give the file a name")
    if len(cleaned.encode()) > _MAX_NAME_BYTES:
        raise ServeError(400, f"upload file name {cleaned[:40]!r}… is longer than 255 bytes")
    allowed = sorted({e.lower() for e in extensions})
    if Path(cleaned).suffix.lower() not in allowed:
        raise ServeError(
            415,
            f"{cleaned}: not a file type pagerag ingests; send {', '.join(allowed)} "
            "(ingest.extensions)",
        )
    return cleaned


def inside_roots(path: Path, roots: Sequence[Path]) -> bool:
    """``path`` (resolved) is one of ``roots`` (resolved) or below one."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def resolve_paths(
    paths: Sequence[str], roots: Sequence[Path], extensions: Iterable[str]
) -> list[str]:
    """The inputs to ingest for ``paths``: files found under them, each inside ``roots``.

    Relative paths are relative to the first root. Paths that do not exist
    (inside the roots) are passed on, so the job reports them as not found.
    """
    if not roots:
        raise ServeError(
            403,
            "ingest by path is off: the service reads files only under serve.roots, and none "
            "is configured. Upload the files instead, or set serve.roots "
            "(PAGERAG_SERVE__ROOTS='[/srv/docs]') and restart the service",
        )
    if not paths:
        raise ServeError(400, "paths is empty: name files or folders under serve.roots")
    named = ", ".join(str(r) for r in roots)
    resolved: list[Path] = []
    for text in paths:
        if not text or any(c in _GLOB for c in text) or "\x00" in text:
            raise ServeError(
                400, f"{text!r}: globs are not accepted over HTTP; name a file or folder"
            )
        path = Path(text) if os.path.isabs(text) else Path(roots[0]) / text
        if not inside_roots(path, roots):
            raise ServeError(
                403, f"{text} is outside serve.roots ({named}): the service may not read it"
            )
        resolved.append(Path(os.path.realpath(path)))
    found = discover([str(p) for p in resolved], extensions)
    for item in found.files:
        if not inside_roots(item.path, roots):
            raise ServeError(
                403,
                f"{item.given or item.path} leads outside serve.roots ({named}) through a symlink: "
                "the service may not read it",
            )
    return [str(f.path) for f in found.files] + [p.input for p in found.missing]
