"""Finding the input files of a job, hashing them, and finding their passwords.

``discover()`` turns what a user typed (files, folders, globs) into a
deterministic list of absolute files. Inputs that lead nowhere (a path that
does not exist, a glob that matches nothing, a folder with no supported file)
are *returned* as problems rather than raised: one typo must not abort a job
over thousands of other files, but it must not vanish silently either.

Which files a walk takes:

* a file named explicitly is always taken, whatever its extension: the
  renderer sniffs its real type and reports it as unsupported if need be
  (a PDF saved as ``.dat`` still ingests);
* folders (recursively, following symlinked folders once) and globs take only
  files with a supported extension, compared case-insensitively (``.PDF``
  and ``.Pdf`` exist in the wild).

The same resolved file named twice (``a.pdf`` and ``./a.pdf``, a symlink, a
folder and a glob over it) is returned once, at its first position.

``hash_file()`` is the document identity (sha256 of the bytes), streamed in
1 MiB blocks so a 2 GB scan never sits in memory.

``PasswordBook`` answers "which password should this file be opened with?"
from ``render.passwords`` (glob → password), ``render.password_file`` and a
CLI-wide ``--password``. The renderer only uses it for files that do not open
without a password, so a default password never breaks unencrypted or
owner-password-only files.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from pipeline.config import RenderConfig
from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_EXTENSIONS",
    "Discovery",
    "InputProblem",
    "PasswordBook",
    "SourceFile",
    "discover",
    "hash_file",
    "read_password_file",
]

DEFAULT_EXTENSIONS: tuple[str, ...] = (".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff")

_HASH_BLOCK = 1 << 20  # 1 MiB
_GLOB_CHARS = frozenset("*?[")

ProblemKind = Literal["not_found", "no_match", "no_supported_files", "not_a_file", "unreadable"]


@dataclass(frozen=True, order=True)
class SourceFile:
    """One input file: absolute resolved path and its size in bytes at discovery.

    ``given`` is the absolute path as the user named it (or as the folder walk
    reached it) when that differs from the resolved one — a symlink — so the
    store can answer to both.
    """

    path: Path
    size: int
    given: str | None = None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class InputProblem:
    """An input that yielded no file; ``kind`` is a stable code for job reports.

    ``str()`` is the input as typed; ``message`` adds what was wrong with it.
    """

    input: str
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return self.input

    @property
    def message(self) -> str:
        return f"{self.input}: {self.detail}"


@dataclass(frozen=True)
class Discovery:
    """What ``discover()`` found: files in input order, and inputs that led nowhere."""

    files: tuple[SourceFile, ...]
    missing: tuple[InputProblem, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _normalise_extensions(extensions: Iterable[str] | None) -> frozenset[str]:
    exts = DEFAULT_EXTENSIONS if extensions is None else tuple(extensions)
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)


def _has_extension(path: Path, extensions: frozenset[str]) -> bool:
    return path.suffix.lower() in extensions


def _is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


class _Collector:
    """Accumulates files in first-seen order, de-duplicated by resolved path."""

    def __init__(self, extensions: frozenset[str]) -> None:
        self.extensions = extensions
        self.files: list[SourceFile] = []
        self.problems: list[InputProblem] = []
        self._seen: set[Path] = set()

    def add_file(self, path: Path) -> bool:
        """Add one file; False when it was already there."""
        resolved = path.resolve()
        if resolved in self._seen:
            return False
        self._seen.add(resolved)
        given = os.path.abspath(path)
        alias = given if given != str(resolved) else None
        self.files.append(SourceFile(resolved, resolved.stat().st_size, alias))
        return True

    def walk(self, root: Path, label: str) -> int:
        """Add the supported files under ``root``; returns how many were found.

        The whole walk is sorted by path (``a/b.pdf`` before ``a/c/d.pdf``
        before ``a/e.pdf``) so two runs over the same tree list the same
        order. Symlinked folders are followed, each real folder at most once
        (a link back to a parent would otherwise recurse forever).
        """
        visited: set[tuple[int, int]] = set()
        paths: list[Path] = []

        def on_error(exc: OSError) -> None:
            self.problems.append(
                InputProblem(
                    label, "unreadable", f"cannot read {exc.filename}: {exc.strerror or exc}"
                )
            )

        for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
            try:
                st = os.stat(dirpath)
            except OSError as exc:
                on_error(exc)
                dirnames[:] = []
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:
                dirnames[:] = []
                continue
            visited.add(key)
            paths.extend(
                Path(dirpath, name)
                for name in filenames
                if Path(name).suffix.lower() in self.extensions
            )
        found = 0
        for path in sorted(paths):
            try:
                if not path.is_file():
                    continue
                self.add_file(path)
            except OSError as exc:
                on_error(exc)
                continue
            found += 1
        return found


def discover(
    inputs: Sequence[str | os.PathLike[str]], extensions: Iterable[str] | None = None
) -> Discovery:
    """Expand files, folders and globs into a de-duplicated, ordered file list.

    ``extensions`` (e.g. ``IngestConfig.extensions``; default
    ``DEFAULT_EXTENSIONS``) filters folder walks and glob matches only.
    Relative inputs are relative to the current directory; ``~`` is expanded.
    Globs support ``**`` for any depth and, like the shell, are case-sensitive
    and skip dot-files. Never raises for a bad input: see ``Discovery.missing``.
    """
    collector = _Collector(_normalise_extensions(extensions))
    for raw in inputs:
        label = os.fspath(raw)
        text = os.path.expanduser(label)
        if _is_glob(text) and not os.path.lexists(text):
            _discover_glob(collector, text, label)
            continue
        _discover_path(collector, Path(text), label)
    return Discovery(tuple(collector.files), tuple(collector.problems))


def _discover_path(collector: _Collector, path: Path, label: str) -> None:
    try:
        if path.is_dir():
            if collector.walk(path, label) == 0:
                collector.problems.append(_empty(label, collector.extensions, "folder"))
            return
        if path.is_file():
            collector.add_file(path)
            return
    except OSError as exc:
        collector.problems.append(InputProblem(label, "unreadable", exc.strerror or str(exc)))
        return
    if path.exists():
        collector.problems.append(
            InputProblem(label, "not_a_file", "not a regular file or folder (device, socket, fifo)")
        )
    else:
        collector.problems.append(InputProblem(label, "not_found", "no such file or folder"))


def _discover_glob(collector: _Collector, pattern: str, label: str) -> None:
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        collector.problems.append(InputProblem(label, "no_match", "the pattern matched nothing"))
        return
    found = 0
    for match in matches:
        path = Path(match)
        try:
            if path.is_dir():
                found += collector.walk(path, label)
            elif path.is_file() and _has_extension(path, collector.extensions):
                collector.add_file(path)
                found += 1
        except OSError as exc:
            collector.problems.append(
                InputProblem(label, "unreadable", f"{match}: {exc.strerror or exc}")
            )
    if found == 0:
        collector.problems.append(_empty(label, collector.extensions, "pattern"))


def _empty(label: str, extensions: frozenset[str], what: str) -> InputProblem:
    exts = ", ".join(sorted(extensions))
    return InputProblem(
        label,
        "no_supported_files",
        f"the {what} has no file with a supported extension ({exts}); "
        "name a file explicitly to ingest it whatever its extension",
    )


def hash_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of the file's bytes, read in 1 MiB blocks.

    Used as the document id, so it depends on the content only (not the
    name, path or mtime).
    """
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def _match_pattern(pattern: str) -> str:
    """Patterns with a slash are paths: make relative ones absolute (cwd)."""
    pattern = os.path.expanduser(pattern)
    if "/" in pattern and not os.path.isabs(pattern):
        return os.path.abspath(pattern)
    return pattern


class PasswordBook:
    """Resolves the password to try for a file; never logs or prints one.

    Lookup order, first match wins:

    1. ``render.passwords`` in config order (glob → password);
    2. ``render.password_file`` lines in file order;
    3. ``default`` (the CLI's ``--password``), if any.

    A glob matches when it matches the file's absolute path or its file name
    (``fnmatch`` rules, case-sensitive; ``*`` also crosses ``/``, so
    ``/data/secret/*`` covers subfolders). Relative globs containing ``/`` are
    taken relative to the current directory.

    Password file format, one entry per line::

        # comment
        *.pdf<TAB>pass word with spaces
        invoice-*.pdf   s3cret

    A tab separates glob and password when present (so a glob may contain
    spaces); otherwise the first run of spaces does. The rest of the line,
    spaces included, is the password. The file is read once, here; a missing
    or malformed file is a ``ConfigError`` naming the line, never its content.
    """

    def __init__(
        self,
        config: RenderConfig | None = None,
        *,
        default: SecretStr | str | None = None,
        entries: Iterable[tuple[str, SecretStr | str]] = (),
    ) -> None:
        pairs: list[tuple[str, SecretStr | str]] = list(entries)
        if config is not None:
            pairs.extend(config.passwords.items())
            if config.password_file is not None:
                pairs.extend(read_password_file(config.password_file))
        self._entries: list[tuple[str, SecretStr]] = [
            (_match_pattern(pattern), _secret(secret)) for pattern, secret in pairs
        ]
        if isinstance(default, str) and default == "":
            default = None
        self._default = None if default is None else _secret(default)

    def __len__(self) -> int:
        return len(self._entries) + (self._default is not None)

    def __repr__(self) -> str:
        default = ", default=**********" if self._default is not None else ""
        return f"PasswordBook({len(self._entries)} patterns{default})"

    def password_for(self, path: str | os.PathLike[str]) -> str | None:
        """The password for ``path``, or None when nothing applies."""
        absolute = os.path.abspath(os.fspath(path))
        name = os.path.basename(absolute)
        for pattern, secret in self._entries:
            if fnmatch.fnmatchcase(absolute, pattern) or fnmatch.fnmatchcase(name, pattern):
                return secret.get_secret_value()
        return None if self._default is None else self._default.get_secret_value()


def _secret(value: SecretStr | str) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


def read_password_file(path: str | os.PathLike[str]) -> list[tuple[str, SecretStr]]:
    """Parse a ``render.password_file`` (see ``PasswordBook``)."""
    where = f"render.password_file ({os.fspath(path)})"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from None
    entries: list[tuple[str, SecretStr]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        line = line.lstrip()
        pattern, sep, secret = line.partition("\t") if "\t" in line else line.partition(" ")
        secret = secret.lstrip(" \t")
        if not sep or not secret:
            raise ConfigError(f"{where}, line {number}: expected 'glob<TAB or spaces>password'")
        entries.append((pattern.rstrip(), SecretStr(secret)))
    return entries
