"""The text lane at ingest: page texts (pdftotext), their payload and BM25 vectors, lanes.

Real PDFs from ../shared/corpus (read in place), the embedded store, the fake
page embedder; a text-only ingest with no embedding model at all.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline import PageRAG
from pipeline.config import PageRAGConfig, RenderConfig, TextConfig, load_config
from pipeline.errors import QueryError, TextExtractionError
from pipeline.ingest.poppler import Poppler, PopplerRun, run_poppler
from pipeline.ingest.render import Renderer
from pipeline.ingest.text import TextExtractor
from pipeline.retrieve.store import PayloadReader
from pipeline.testing.fakes import FakeEmbedder
from pipeline.types import TEXT_FIELD, TEXT_VECTOR, PagePoint
from tests.clirun import cli_env, invoke

PAPER = "qa/docs/2305.13186v3.pdf"  # 27 pages of text
THREE_PAGES = "robust/pdfjs/test/pdfs/three_pages_with_number.pdf"
SCAN = "robust/ocrmypdf/tests/resources/cardinal.pdf"  # 4 scanned pages, no text layer
ENCRYPTED = "robust/qpdf/qpdf/qtest/qpdf/enc-R2,V1,U=view,O=master.pdf"  # user password "view"


def pdftotext(path: Path, page: int, password: str | None = None) -> str:
    """What poppler's own command line gives for one page, stripped."""
    secret = ["-upw", password] if password else []
    argv = ["pdftotext", "-layout", "-f", str(page), "-l", str(page), *secret, str(path), "-"]
    return subprocess.run(argv, capture_output=True, check=True).stdout.decode().strip()


def config_for(tmp_path: Path, **ingest: object) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={
            "store": {"path": str(tmp_path / "data")},
            "render": {"dpi": 40, "pages_per_chunk": 2},
            "ingest": dict(ingest),
        },
    )


class Recorder:
    """Keeps every point a store was asked to upsert (the sparse vectors as sent)."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, int], PagePoint] = {}

    def attach(self, rag: PageRAG) -> PageRAG:
        store = rag.store
        upsert = store.upsert_pages

        def recording(points: Sequence[PagePoint]) -> None:
            for point in points:
                self.points[(Path(point.payload["source"]).name, point.payload["page"])] = point
            upsert(points)

        store.upsert_pages = recording  # type: ignore[method-assign]
        return rag


@pytest.fixture
def make_rag(tmp_path: Path) -> Iterator[Callable[..., PageRAG]]:
    made: list[PageRAG] = []

    def make(renderer: Renderer | None = None, **ingest: object) -> PageRAG:
        for rag in made:
            rag.close()
        config = config_for(tmp_path, **ingest)
        rag = PageRAG(config, embedder=FakeEmbedder(), renderer=renderer)
        made.append(rag)
        return rag

    yield make
    for rag in made:
        rag.close()


# --------------------------------------------------------------------------- extraction


def test_each_page_is_pdftotexts_own_output(corpus: Path) -> None:
    path = corpus / PAPER
    runs: list[Any] = []

    def counting(argv: Sequence[Any], *args: Any, **kwargs: Any) -> PopplerRun:
        runs.append(argv)
        return run_poppler(argv, *args, **kwargs)

    config = RenderConfig(pages_per_chunk=4)
    extractor = TextExtractor(config, TextConfig(), Poppler(launch=counting))
    pages = [1, 2, 3, 4, 5, 9, 27]
    texts = extractor.extract(path, pages)
    assert sorted(texts) == pages
    for number in pages:
        assert texts[number].text == pdftotext(path, number), number
        assert texts[number].page_number == number and not texts[number].cut
    assert texts[1].text  # a paper: every page has text
    assert len(runs) == 4  # 1-4, 5, 9, 27: page ranges, as they are rendered


def test_long_pages_are_cut_and_say_so(corpus: Path) -> None:
    texts = TextExtractor(RenderConfig(), TextConfig(max_page_chars=1000)).extract(
        corpus / PAPER, [1]
    )
    assert texts[1].cut and texts[1].text == pdftotext(corpus / PAPER, 1)[:1000]


def test_image_files_and_scans_have_no_text(corpus: Path, tmp_path: Path) -> None:
    image = tmp_path / "page.png"
    Image.new("RGB", (50, 40), "white").save(image)
    extractor = TextExtractor(RenderConfig(), TextConfig())
    assert extractor.extract(image, [1]) == {1: extractor.extract(image, [1])[1]}
    assert extractor.extract(image, [1])[1].text == ""
    scan = extractor.extract(corpus / SCAN, [1, 2, 3, 4])
    assert [t.text for t in scan.values()] == ["", "", "", ""]


def test_a_failing_pdftotext_raises_after_the_pages(corpus: Path) -> None:
    def broken(argv: Sequence[Any], timeout: float, **kwargs: Any) -> PopplerRun:
        return PopplerRun(1, b"", b"Syntax Error: broken", 0.01, False)

    extractor = TextExtractor(RenderConfig(), TextConfig(), Poppler(launch=broken))
    pages = extractor.iter_pages(corpus / THREE_PAGES, [1, 2, 3])
    got = []
    with pytest.raises(TextExtractionError, match="no text for page"):
        got.extend(pages)
    assert [(t.page_number, t.text) for t in got] == [(1, ""), (2, ""), (3, "")]


# --------------------------------------------------------------------------- ingest


def _payloads(points: dict[tuple[str, int], PagePoint], name: str) -> list[dict[str, Any]]:
    return [dict(p.payload) for (n, _), p in sorted(points.items()) if n == name]


def test_pages_carry_their_text_and_bm25_vector(make_rag, corpus: Path, tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (80, 60), "grey").save(image)
    recorder = Recorder()
    rag = recorder.attach(make_rag())
    report = rag.ingest([corpus / THREE_PAGES, corpus / SCAN, image])
    assert report.exit_code == 0, report.to_dict()
    assert rag.store.spec().lanes == ("visual", "text")  # auto: a new collection gets both
    for page, payload in enumerate(_payloads(recorder.points, "three_pages_with_number.pdf"), 1):
        assert payload[TEXT_FIELD] == pdftotext(corpus / THREE_PAGES, page) != ""
        assert payload["has_text"] is True and "text_cut" not in payload
        point = recorder.points[("three_pages_with_number.pdf", page)]
        assert len(point.sparse[TEXT_VECTOR]) > 0 and point.vectors  # both lanes
    for name in ("cardinal.pdf", "photo.jpg"):  # a scan, an image file: images, no text
        for payload in _payloads(recorder.points, name):
            assert payload[TEXT_FIELD] == "" and payload["has_text"] is False
        assert all(p.sparse == {} for (n, _), p in recorder.points.items() if n == name)
    hits = rag.search("2", k=10, mode="text")  # the pages' text: their numbers
    assert [(h.file_name, h.page_number) for h in hits] == [("three_pages_with_number.pdf", 2)]


def test_an_encrypted_pdfs_text_is_read_with_its_password(make_rag, corpus: Path) -> None:
    recorder = Recorder()
    rag = recorder.attach(make_rag())
    report = rag.ingest([corpus / ENCRYPTED], password="view")
    assert report.exit_code == 0, report.to_dict()
    name = Path(ENCRYPTED).name
    texts = [p[TEXT_FIELD] for p in _payloads(recorder.points, name)]
    assert texts[0].startswith("Potato")
    assert texts == [pdftotext(corpus / ENCRYPTED, n + 1, "view") for n in range(len(texts))]


def _text_times_out(renderer: Renderer) -> Renderer:
    def launch(argv: Sequence[Any], timeout: float, **kwargs: Any) -> PopplerRun:
        if os.path.basename(os.fsdecode(argv[0])) == "pdftotext":
            return PopplerRun(-9, b"", b"", timeout, True)
        return run_poppler(argv, timeout, **kwargs)

    renderer.poppler.launch = launch
    return renderer


def test_a_text_timeout_keeps_the_images_and_says_so(make_rag, corpus: Path) -> None:
    path = corpus / THREE_PAGES
    rag = make_rag(renderer=_text_times_out(Renderer(config_for(Path("/")).render)))
    report = rag.ingest([path])
    (outcome,) = report.outcomes
    assert (outcome.status, outcome.reason, outcome.pages) == ("ingested", "text_failed", 3)
    assert "text lane" in (outcome.message or "") and "timeout_s" in (outcome.message or "")
    assert report.exit_code == 0  # no page failed: the images are stored
    assert rag.store.count_pages() == 3
    assert all(h.payload["has_text"] is False for h in rag.search("page", k=5, mode="visual"))
    (record,) = rag.documents()
    assert record.incomplete == "text_failed"
    rerun = make_rag().ingest([path])  # recorded incomplete: skipped, and says how to retry
    assert [(o.status, o.reason) for o in rerun.outcomes] == [("skipped", "incomplete")]
    retried = make_rag().ingest([path], retry_incomplete=True)
    assert [(o.status, o.reason) for o in retried.outcomes] == [("ingested", None)]
    assert {h.payload["has_text"] for h in make_rag().search("page", k=5, mode="visual")} == {True}


def test_lanes_text_needs_no_embedding_model(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*_args: Any) -> None:
        raise AssertionError("a text-only ingest built the page embedder")

    monkeypatch.setattr("pipeline.backends.build_embedder", no_model)
    empty = tmp_path / "no-model"
    empty.mkdir()
    env = cli_env(tmp_path / "data", empty)
    code, out, err = invoke(env, "ingest", "--lanes", "text", "--json", corpus / THREE_PAGES)
    assert code == 0, out + err
    monkeypatch.undo()  # what follows searches (the search side is not under test here)
    with PageRAG(
        load_config(environ={}, overrides={"store": {"path": str(tmp_path / "data")}})
    ) as rag:
        spec = rag.store.spec()
        assert spec is not None and spec.lanes == ("text",) and spec.identity is None
        hits = rag.search("3", k=3)  # auto on a text-only collection: the text lane
        assert hits and all(h.lanes.get("text") for h in hits)
        assert hits[0].load_image().format == "JPEG"  # the page image, for `ask`
    code, _out, err = invoke(env, "ingest", "--lanes", "pictures", corpus / THREE_PAGES)
    assert code == 2 and "visual+text" in err
    # status says what the collection holds: no visual vectors yet, and how to add them
    code, out, err = invoke(env, "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["lanes"] == ["text"] and status["vector_bytes"] == 0
    assert status["vector_bytes_per_page"] is None
    code, out, err = invoke(env, "status")
    assert code == 0 and "reindex --visual" in out and "weights that made" not in out


def test_auto_keeps_a_visual_only_collection_visual(make_rag, corpus: Path) -> None:
    recorder = Recorder()
    first = make_rag(lanes="visual").ingest([corpus / THREE_PAGES])
    assert first.exit_code == 0
    rag = recorder.attach(make_rag(lanes="auto"))
    assert rag.ingest([corpus / SCAN]).exit_code == 0
    assert rag.store.spec().lanes == ("visual",)
    assert recorder.points and all(
        TEXT_FIELD not in p.payload and not p.sparse for p in recorder.points.values()
    )


def test_stored_image_pages_keep_their_jpeg_in_a_text_only_collection(
    make_rag, corpus: Path
) -> None:
    recorder = Recorder()
    rag = recorder.attach(make_rag(lanes="text"))
    assert rag.ingest([corpus / THREE_PAGES]).exit_code == 0
    for point in recorder.points.values():
        assert point.vectors == {} and len(point.sparse[TEXT_VECTOR]) > 0
        jpeg = base64.b64decode(point.payload["image_jpeg_b64"])
        assert jpeg[:2] == b"\xff\xd8"


def test_explain_on_a_text_only_collection_says_how_to_add_the_visual_lane(
    make_rag, corpus: Path
) -> None:
    """Explain maps show which image patches matched: a text-only collection has no page
    vectors. The answer names the fix, before any model is asked for (the web page's
    explain button on a text hit)."""
    rag = make_rag(lanes="text")
    assert rag.ingest([corpus / THREE_PAGES]).exit_code == 0
    hit = rag.search("3", k=1)[0]
    for explain in (
        lambda: rag.explain("3", hit),
        lambda: rag.explain_page("3", corpus / THREE_PAGES, 1),
    ):
        with pytest.raises(QueryError, match=r"no visual lane.*reindex --visual"):
            explain()


# --------------------------------------------------------------------------- the Ray engine


def test_the_ray_engine_stores_what_the_local_one_does(corpus: Path, tmp_path: Path) -> None:
    """Text only (no page embedder in the actors); visual+text is what every other Ray
    test ingests now (a new collection's lanes), their stores compared whole."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from tests.test_crash import snapshot

    files = [corpus / THREE_PAGES, corpus / SCAN, corpus / PAPER]
    texts = {}
    try:
        for engine in ("local", "ray"):
            config = load_config(
                environ={},
                overrides={
                    "store": {"path": str(tmp_path / engine)},
                    "render": {"dpi": 36, "max_pages": 6},
                    "ingest": {"lanes": "text"},
                    "ray": {"pages_per_task": 4, "num_cpus": 2},
                },
            )
            with PageRAG(config) as rag:  # no embedder: none is built
                report = rag.ingest(files, engine=engine)  # type: ignore[arg-type]
                assert report.exit_code == 0, report.to_dict()
                store = rag.store
                assert isinstance(store, PayloadReader)
                ids = [i for batch in store.iter_page_ids() for i in batch]
                texts[engine] = store.page_payloads(ids, [TEXT_FIELD, "has_text"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    local, distributed = snapshot(tmp_path / "local"), snapshot(tmp_path / "ray")
    # the same points: ids, images, vectors (the BM25 ones only: no visual vectors), marks
    assert distributed.comparable() == local.comparable() and len(local.pages) == 13
    assert texts["ray"] == texts["local"]
    with_text = [p for p in local.pages.values() if p.vector_sha]
    assert len(with_text) == sum(1 for t in texts["ray"].values() if t["has_text"]) == 9  # 3 + 6
    assert all([name for name, _ in p.vector_sha] == [TEXT_VECTOR] for p in with_text)
