"""Every bash and python block of README.md runs as written, so the README cannot drift.

The blocks run in README order, each in its own process (``bash -eo pipefail``
or ``python``), in one sandbox standing in for a user's machine:

* ``HOME`` and the working directory are a temporary folder holding the files
  the README names (:data:`WORKSPACE`: ``~/reports/``, ``some.pdf``,
  ``scan.png``, ``scans/**/*.tif``, ``report.pdf``, ``questions.jsonl`` and
  its ``DIR``), made here from generated page images;
* ``pagerag`` and ``python`` are this virtualenv's; the embedding model is the
  random-weight stand-in (``embedding.model_path``), the store the embedded
  engine under ``$XDG_DATA_HOME``, and the VLM a loopback fake
  (:class:`pipeline.testing.fake_vlm.FakeVLM`) — outputs are meaningless,
  only that every command works is checked;
* nothing leaves the machine: the hub is offline, pip has no index, and HTTP(S)
  proxies point at a closed loopback port.

**What is skipped, and how it is decided.** A block that cannot run here
(it needs the network, the real 6.5 GB model, a GPU, Docker, a Qdrant
server, or runs the whole set-up) is marked in README.md by the comment line
right above its fence::

    <!-- readme-test: skip (the reason) -->

and is reported as skipped with that reason. Every other ``bash``, ``sh``,
``shell``, ``python`` or ``py`` block runs; blocks in other languages (YAML,
diagrams) are not code to run. So a new block is tested unless its author
says why it cannot be.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from pipeline.testing.fake_vlm import FakeVLM
from tests.clirun import REPO

README = REPO / "README.md"
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->\s*$")
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    kind: str  # "bash" or "python"
    code: str
    skip: str | None  # the marker's reason

    @property
    def name(self) -> str:
        return f"README.md:{self.line}-{self.kind}"


def readme_blocks(text: str) -> list[Block]:
    """The runnable blocks of a Markdown text, with the skip marker above each, if any."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 1}: a code fence is never closed")
        kind = RUNNABLE.get(fence.group(1).lower())
        if kind is not None:
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = _SKIP.match(above.strip())
            code = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(i + 1, kind, code, marker.group("reason") if marker else None))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_blocks_that_run() -> None:
    assert sum(1 for b in BLOCKS if b.skip is None) >= 3
    assert any(b.kind == "python" and b.skip is None for b in BLOCKS)


def test_block_parsing_and_markers() -> None:
    text = (
        "intro\n```bash\necho 1\n```\n"
        "<!-- readme-test: skip (needs a GPU) -->\n\n```python\nimport torch\n```\n"
        "```yaml\na: 1\n```\n```\nplain\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.line, b.kind, b.code, b.skip) for b in blocks] == [
        (2, "bash", "echo 1\n", None),
        (7, "python", "import torch\n", "needs a GPU"),
    ]


# --------------------------------------------------------------------- the sandbox


def _pages(count: int, label: str) -> list[Image.Image]:
    pages = []
    for number in range(1, count + 1):
        image = Image.new("RGB", (425, 550), "white")
        draw = ImageDraw.Draw(image)
        draw.text((40, 40), f"{label}: page {number}", fill="black")
        for row in range(8):
            draw.rectangle((40, 90 + 50 * row, 40 + 30 * (row + number), 110 + 50 * row), "gray")
        pages.append(image)
    return pages


def _pdf(path: Path, count: int, label: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = _pages(count, label)
    first.save(path, "PDF", save_all=True, append_images=rest, resolution=72)


# The files the README's commands name, relative to the sandbox home (= working directory).
WORKSPACE = {
    "reports/q3.pdf": 3,
    "reports/annual.pdf": 2,
    "some.pdf": 4,  # report.pdf is a copy: `explain` finds it by content
    "DIR/q3.pdf": 3,
}


def _workspace(home: Path) -> None:
    for relative, pages in WORKSPACE.items():
        _pdf(home / relative, pages, relative)
    (home / "report.pdf").write_bytes((home / "some.pdf").read_bytes())
    _pages(1, "scan")[0].save(home / "scan.png")
    (home / "scans" / "2021").mkdir(parents=True)
    _pages(1, "scanned tif")[0].save(home / "scans" / "2021" / "letter.tif")
    (home / "questions.jsonl").write_text(
        '{"id": "a", "question": "what is on page two?", "doc": "q3.pdf",'
        ' "evidence_pages": [2]}\n'
        '{"id": "b", "question": "and on page three?", "doc": "q3.pdf",'
        ' "evidence_pages": [3]}\n',
        encoding="utf-8",
    )


class Sandbox:
    """A user's machine in a folder; runs the README's blocks in order, each at most once."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.results: dict[int, subprocess.CompletedProcess[str]] = {}

    def run_through(self, block: Block) -> subprocess.CompletedProcess[str]:
        """Run every runnable block before ``block`` (what it may depend on), then it."""
        for earlier in BLOCKS:
            if earlier.line >= block.line:
                break
            if earlier.skip is None and earlier.line not in self.results:
                done = self._run(earlier)
                if done.returncode != 0:
                    pytest.fail(
                        f"{earlier.name}, which {block.name} follows, failed:\n{_log(done)}"
                    )
        return self._run(block)

    def _run(self, block: Block) -> subprocess.CompletedProcess[str]:
        if block.line not in self.results:
            script = self.home / f".readme-{block.line}.{'sh' if block.kind == 'bash' else 'py'}"
            script.write_text(block.code, encoding="utf-8")
            command = (
                ["bash", "-eo", "pipefail", str(script)]
                if block.kind == "bash"
                else [sys.executable, str(script)]
            )
            self.results[block.line] = subprocess.run(
                command,
                cwd=self.home,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
                check=False,
            )
        return self.results[block.line]


def _log(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Sandbox]:
    home = tmp_path_factory.mktemp("readme-home")
    _workspace(home)
    closed = "http://127.0.0.1:9"  # nothing listens: any download fails at once
    with FakeVLM(answer="A stand-in answer from the README test") as vlm:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PAGERAG_")}
        env = {
            **inherited,
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "PIP_NO_INDEX": "1",
            "HTTP_PROXY": closed,
            "HTTPS_PROXY": closed,
            "NO_PROXY": "127.0.0.1,localhost",
            "PAGERAG_EMBEDDING__MODEL_PATH": str(tiny_model_dir),
            "PAGERAG_EMBEDDING__DEVICE": "cpu",
            "PAGERAG_RENDER__DPI": "50",
            "PAGERAG_VLM__BASE_URL": vlm.base_url,
            "OPENAI_API_KEY": "readme-test-key",
        }
        yield Sandbox(home, env)


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, id=b.name, marks=[pytest.mark.skip(reason=b.skip)] if b.skip else [])
        for b in BLOCKS
    ],
)
def test_readme_block_runs(block: Block, sandbox: Sandbox) -> None:
    result = sandbox.run_through(block)
    assert result.returncode == 0, f"{block.name} failed:\n{block.code}\n{_log(result)}"
    assert "Traceback" not in result.stderr, _log(result)
