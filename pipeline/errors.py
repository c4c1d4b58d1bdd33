"""Every error pagerag raises on purpose, in one tree.

Each message says what went wrong *and what to do about it*; callers can catch
a whole branch (``except InputError``) or one leaf. Secrets never appear in a
message: adapters build messages from config *names*, never values.

::

    PageRAGError
    ├── ConfigError                  bad YAML, unknown key, bad env override
    │   └── EvidencePageError        a QA set's gold page is 0 or past its document's end
    ├── OptionalDependencyError      (also ImportError) an extra is not installed
    ├── PopplerNotInstalledError     pdfinfo/pdftoppm missing: stops the job (every PDF would fail)
    ├── RenderCancelledError         the job is stopping: poppler was killed mid-run
    ├── InputError                   one input file or page cannot be ingested
    │   ├── UnsupportedFileError     not a PDF or a supported image
    │   ├── DamagedFileError         poppler/pillow cannot read it
    │   ├── PasswordRequiredError    encrypted with a user password, none given
    │   ├── WrongPasswordError       a password was given and did not open it
    │   ├── RenderTimeoutError       rendering exceeded render.timeout_s
    │   ├── TextExtractionError      pdftotext failed or timed out (the text lane only)
    │   ├── FileTooLargeError        bigger than render.max_file_mb
    │   └── TooManyPagesError        more pages than render.max_pages (refuse mode)
    ├── ModelError
    │   └── ModelNotAvailableError   weights neither cached nor downloadable
    ├── StoreError
    │   ├── StoreUnavailableError    Qdrant unreachable / refused the request
    │   ├── StoreInUseError          embedded data directory locked by another process
    │   ├── CollectionMismatchError  existing collection built differently
    │   └── CollectionNotFoundError  nothing ingested yet
    ├── QueryError                   empty query, bad k, bad filter
    ├── VLMError
    │   ├── VLMNotConfiguredError    no vlm.base_url / api key
    │   ├── VLMAuthError             401/403 from the endpoint
    │   └── VLMUnavailableError      unreachable, timeouts, 5xx after retries
    └── ServiceError                 `pagerag serve` refused a request (pipeline.client)
        ├── ServiceAuthError         401: no or a wrong API key
        └── ServiceUnavailableError  the service cannot be reached, or timed out
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "ConfigError",
    "DamagedFileError",
    "EvidencePageError",
    "FileTooLargeError",
    "InputError",
    "ModelError",
    "ModelNotAvailableError",
    "OptionalDependencyError",
    "PageRAGError",
    "PasswordRequiredError",
    "PopplerNotInstalledError",
    "QueryError",
    "RenderCancelledError",
    "RenderTimeoutError",
    "ServiceAuthError",
    "ServiceError",
    "ServiceUnavailableError",
    "StoreError",
    "StoreInUseError",
    "StoreUnavailableError",
    "TextExtractionError",
    "TooManyPagesError",
    "UnsupportedFileError",
    "VLMAuthError",
    "VLMError",
    "VLMNotConfiguredError",
    "VLMUnavailableError",
    "WrongPasswordError",
    "install_command",
]


class PageRAGError(Exception):
    """Base of every error pagerag raises deliberately."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable whatever a subclass's __init__ takes: errors cross process
        # boundaries (Ray tasks and actors carry a file's error to the driver).
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[PageRAGError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(PageRAGError):
    """The configuration cannot be loaded or validated; the message names the key."""


class EvidencePageError(ConfigError):
    """A QA set (``pagerag eval``) names an evidence page that cannot be right.

    Page 0 (pages are numbered from 1), or a page past the end of the
    document (``page_count`` is then how many pages it has). Raised before
    any question is searched: such a page would only ever score a miss. The
    message names the questions file and line; the fields say the same for
    code. ``questions_file`` is ``None`` for questions handed in as objects.
    """

    def __init__(
        self,
        message: str,
        *,
        questions_file: str | None,
        line: int,
        doc: str,
        page: int,
        page_count: int | None = None,
    ) -> None:
        super().__init__(message)
        self.questions_file = questions_file
        self.line = line
        self.doc = doc
        self.page = page
        self.page_count = page_count


class OptionalDependencyError(PageRAGError, ImportError):
    """An optional extra is needed for this feature; the message names the extra."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the optional package {module!r}, which is not installed. "
            f"Install it with: {install_command(extra)}"
        )
        self.extra = extra


def install_command(extra: str) -> str:
    """The command that adds ``extra`` to this installation of pagerag.

    pagerag is not on a package index, so ``pip install 'pagerag[extra]'`` finds
    nothing: it is installed from its checkout (``scripts/setup.sh`` runs
    ``pip install -e '.[…]'``). When this code runs from a checkout, the
    command names it and this interpreter's pip; otherwise it names the
    checkout generically.
    """
    import sys

    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return f"{sys.executable} -m pip install -e '{checkout}[{extra}]'"
    return (
        f"pip install '/path/to/pagerag[{extra}]' from a pagerag checkout (pagerag is not on "
        "a package index)"
    )


class PopplerNotInstalledError(PageRAGError):
    """``pdfinfo``/``pdftoppm`` are missing. Not an InputError: every PDF would fail alike,
    so the job stops instead of recording the same failure for each file."""

    def __init__(self, tool: str, where: str | None = None) -> None:
        place = f"in {where}" if where else "on PATH"
        super().__init__(
            f"{tool} (poppler-utils) was not found {place}, so PDFs cannot be rendered. "
            "Install poppler: apt-get install poppler-utils (Debian/Ubuntu), "
            "dnf install poppler-utils (Fedora), brew install poppler (macOS)."
        )


class RenderCancelledError(PageRAGError):
    """Rendering was stopped because the job is stopping (SIGINT/SIGTERM); rerun to resume."""


class InputError(PageRAGError):
    """One input file (or one page of it) cannot be ingested.

    ``reason`` is a stable machine-readable code used in job reports
    (``unsupported``, ``damaged``, ``needs_password`` …).
    """

    reason = "input_error"

    def __init__(self, path: str | Path, detail: str, *, page: int | None = None) -> None:
        self.path = str(path)
        self.page = page
        self.detail = detail
        where = f"{self.path}" + (f" (page {page})" if page is not None else "")
        super().__init__(f"{where}: {detail}")


class UnsupportedFileError(InputError):
    reason = "unsupported"


class DamagedFileError(InputError):
    reason = "damaged"


class PasswordRequiredError(InputError):
    reason = "needs_password"


class WrongPasswordError(InputError):
    reason = "wrong_password"


class RenderTimeoutError(InputError):
    reason = "timeout"


class TextExtractionError(InputError):
    """A page's text layer could not be read (pdftotext failed or ran out of time).

    Only the text lane is affected: the pages' images are still stored.
    """

    reason = "text_failed"


class FileTooLargeError(InputError):
    reason = "too_large"


class TooManyPagesError(InputError):
    reason = "too_many_pages"


class ModelError(PageRAGError):
    """The embedding model cannot be loaded or run."""


class ModelNotAvailableError(ModelError):
    """The model weights are neither in the cache nor downloadable."""


class StoreError(PageRAGError):
    """The page store (Qdrant) failed."""


class StoreUnavailableError(StoreError):
    """Qdrant cannot be reached, or refused the request."""


class StoreInUseError(StoreError):
    """Another process holds the embedded data directory."""


class CollectionMismatchError(StoreError):
    """The existing collection was built with other settings or another model."""


class CollectionNotFoundError(StoreError):
    """The collection does not exist yet: nothing has been ingested."""


class QueryError(PageRAGError):
    """A search or ask call got an unusable argument."""


class VLMError(PageRAGError):
    """The vision-language model endpoint failed."""


class VLMNotConfiguredError(VLMError):
    """No endpoint or API key is configured for answering."""


class VLMAuthError(VLMError):
    """The endpoint refused the credentials (401/403)."""


class VLMUnavailableError(VLMError):
    """The endpoint is unreachable or kept failing after retries."""


class ServiceError(PageRAGError):
    """A ``pagerag serve`` service refused or failed a request (:mod:`pipeline.client`).

    Errors the service reports with a type of this tree (``QueryError`` …)
    are raised as that type instead; this one carries the rest. ``status`` is
    the HTTP status and ``problem`` the service's problem-details body.
    """

    def __init__(
        self, message: str, *, status: int | None = None, problem: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem = dict(problem or {})


class ServiceAuthError(ServiceError):
    """The service wants an API key (``PAGERAG_API_KEY``) and got none or another one."""


class ServiceUnavailableError(ServiceError):
    """The service cannot be reached (not running, wrong URL) or did not answer in time."""
