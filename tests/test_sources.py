"""Input discovery, file hashing and password lookup (pipeline.ingest.sources)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from pipeline.config import RenderConfig
from pipeline.errors import ConfigError
from pipeline.ingest import sources
from pipeline.ingest.sources import PasswordBook, discover, hash_file


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    _touch(root / "b.pdf", b"%PDF-1.4 b")
    _touch(root / "a.PDF", b"%PDF-1.4 a")  # extensions compare case-insensitively
    _touch(root / "notes.txt", b"not taken from a folder")
    _touch(root / "sub" / "scan.png", b"png")
    _touch(root / "sub" / "deeper" / "photo.jpeg", b"jpeg")
    _touch(root / "sub" / "deeper" / "fax.TIF", b"tiff")
    (root / "empty").mkdir()
    return root


def _names(discovery: sources.Discovery, root: Path) -> list[str]:
    return [f.path.relative_to(root.resolve()).as_posix() for f in discovery.files]


def test_folder_walk_is_recursive_sorted_and_filtered(tree: Path) -> None:
    found = discover([tree])
    assert _names(found, tree) == [
        "a.PDF",
        "b.pdf",
        "sub/deeper/fax.TIF",
        "sub/deeper/photo.jpeg",
        "sub/scan.png",
    ]
    assert found.missing == ()
    assert all(f.path.is_absolute() for f in found.files)
    assert [f.size for f in found.files] == [f.path.stat().st_size for f in found.files]
    assert found.total_bytes == sum(f.size for f in found.files)
    assert discover([tree]) == found  # deterministic


def test_explicit_file_is_taken_whatever_its_extension(tree: Path) -> None:
    found = discover([tree / "notes.txt"])
    assert _names(found, tree) == ["notes.txt"]
    assert found.missing == ()


def test_custom_extensions_with_or_without_dot(tree: Path) -> None:
    assert _names(discover([tree], ["PNG", ".jpeg"]), tree) == [
        "sub/deeper/photo.jpeg",
        "sub/scan.png",
    ]


def test_globs_including_double_star(tree: Path) -> None:
    found = discover([str(tree / "**" / "*.p*")])  # case-sensitive, as in the shell
    assert _names(found, tree) == ["b.pdf", "sub/scan.png"]
    # A glob over folders walks them; unsupported files matched by a glob are skipped.
    found = discover([str(tree / "s*"), str(tree / "*.txt")])
    assert _names(found, tree) == ["sub/deeper/fax.TIF", "sub/deeper/photo.jpeg", "sub/scan.png"]
    assert [(p.input, p.kind) for p in found.missing] == [
        (str(tree / "*.txt"), "no_supported_files")
    ]


def test_relative_inputs_and_tilde(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    monkeypatch.setenv("HOME", str(tree))
    found = discover(["b.pdf", "./sub/*.png", "~/a.PDF"])
    assert _names(found, tree) == ["b.pdf", "sub/scan.png", "a.PDF"]


def test_missing_inputs_are_reported_not_raised(tree: Path) -> None:
    found = discover(
        [tree / "nope.pdf", str(tree / "*.docx"), tree / "b.pdf", tree / "empty", "/dev/null"]
    )
    assert _names(found, tree) == ["b.pdf"]
    kinds = {p.input: p.kind for p in found.missing}
    assert kinds == {
        str(tree / "nope.pdf"): "not_found",
        str(tree / "*.docx"): "no_match",
        str(tree / "empty"): "no_supported_files",
        "/dev/null": "not_a_file",
    }
    problem = found.missing[0]
    assert str(problem) == str(tree / "nope.pdf")  # str() is the input as typed
    assert problem.message.endswith("no such file or folder")


def test_same_file_is_returned_once_at_first_position(tree: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.pdf"
    link.symlink_to(tree / "b.pdf")
    inputs: list[str | Path] = [tree / "b.pdf", f"{tree}/./b.pdf", link, tree, str(tree / "*.pdf")]
    found = discover(inputs)
    assert _names(found, tree)[:2] == ["b.pdf", "a.PDF"]
    assert len(found.files) == len({f.path for f in found.files}) == 5


def test_symlink_loops_do_not_hang(tree: Path) -> None:
    (tree / "sub" / "loop").symlink_to(tree)
    found = discover([tree])
    assert len(found.files) == 5


def test_file_that_is_a_literal_bracket_name_is_not_a_glob(tmp_path: Path) -> None:
    odd = _touch(tmp_path / "report[1].pdf")
    assert [f.path for f in discover([odd]).files] == [odd.resolve()]


def test_corpus_folder_finds_mixed_case_extensions(corpus: Path) -> None:
    folder = corpus / "robust" / "qpdf" / "qpdf" / "qtest" / "qpdf"
    found = discover([folder])
    names = {f.path.name for f in found.files}
    # The manifest lists these ".Pdf" files; a case-sensitive walk would miss them.
    assert "split-exp-01.Pdf" in names
    assert "shared-unnamed-field.pdf" in names
    assert found.missing == ()


# --------------------------------------------------------------------------- hashing


def test_hash_is_sha256_of_the_bytes_and_stable(tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 5)  # crosses several 1 MiB blocks
    one = _touch(tmp_path / "one.bin", data)
    two = _touch(tmp_path / "elsewhere" / "two.pdf", data)
    expected = hashlib.sha256(data).hexdigest()
    assert hash_file(one) == hash_file(str(two)) == expected
    _touch(one, data[:-1] + bytes([data[-1] ^ 1]))
    assert hash_file(one) != expected


def test_hash_is_streamed_in_1_mib_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _touch(tmp_path / "big.bin", b"\x01" * ((5 << 20) + 3))
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, handle: object) -> None:
            self.handle = handle

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()  # type: ignore[attr-defined]

        def readinto(self, buffer: bytearray) -> int:
            reads.append(len(buffer))
            return self.handle.readinto(buffer)  # type: ignore[attr-defined]

        def read(self, *args: object) -> bytes:
            raise AssertionError("hash_file must not read the whole file")

    monkeypatch.setattr(sources, "open", lambda *a, **k: Spy(real_open(*a, **k)), raising=False)
    assert hash_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert max(reads, default=0) == 1 << 20
    assert len(reads) == 7  # 5 full blocks, 1 partial, 1 empty read at EOF


# --------------------------------------------------------------------------- passwords


def test_password_book_order_and_matching(tmp_path: Path) -> None:
    pw_file = tmp_path / "passwords.txt"
    pw_file.write_text(
        "# invoices from accounting\n"
        "\n"
        "invoice-*.pdf\tpass word with spaces\n"
        "  report *.pdf\tglob with a space\n"
        "*.pdf   from-the-file\n",
        encoding="utf-8",
    )
    config = RenderConfig(
        passwords={
            "/secure/**": SecretStr("by-path"),
            "*-2024.pdf": SecretStr("by-name"),
            "*.pdf": SecretStr("config-wins"),
        },
        password_file=pw_file,
    )
    book = PasswordBook(config, default="cli")
    assert book.password_for("/secure/deep/folder/x.pdf") == "by-path"
    assert book.password_for("/data/q3-2024.pdf") == "by-name"  # first match wins
    assert book.password_for("/data/any.pdf") == "config-wins"  # config before the file
    assert book.password_for("/data/scan.png") == "cli"  # default last

    only_file = PasswordBook(RenderConfig(password_file=pw_file))
    assert only_file.password_for("/x/invoice-7.pdf") == "pass word with spaces"
    assert only_file.password_for("/x/report q3.pdf") == "glob with a space"
    assert only_file.password_for("/x/other.pdf") == "from-the-file"
    assert only_file.password_for("/x/other.png") is None
    assert PasswordBook().password_for("/x/a.pdf") is None
    assert PasswordBook(default="").password_for("/x/a.pdf") is None


def test_password_book_relative_glob_and_secrets_stay_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    book = PasswordBook(entries=[("vault/*.pdf", "s3cret")], default=SecretStr("dflt"))
    assert book.password_for(tmp_path / "vault" / "a.pdf") == "s3cret"
    assert book.password_for(tmp_path / "other" / "a.pdf") == "dflt"
    assert "s3cret" not in repr(book)
    assert "dflt" not in repr(book)
    assert len(book) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("*.pdf\n", "line 2"),
        ("# ok\n*.pdf \t \n", "line 3"),
    ],
)
def test_malformed_password_file_names_the_line_not_the_secret(
    tmp_path: Path, content: str, expected: str
) -> None:
    pw_file = tmp_path / "pw.txt"
    pw_file.write_text("good.pdf hunter2\n" + content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        PasswordBook(RenderConfig(password_file=pw_file))
    message = str(info.value)
    assert "render.password_file" in message
    assert expected in message
    assert "hunter2" not in message


def test_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"render\.password_file .* does not exist"):
        PasswordBook(RenderConfig(password_file=tmp_path / "absent.txt"))
