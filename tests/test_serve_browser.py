"""The web page in a real browser: Playwright driving Debian's Chromium.

Upload a PDF, watch the ingest finish, ask, see the answer stream in and the
cited page framed, open it with its heatmap and colour legend, then delete the
document — with no error in the browser console. The service is a real uvicorn
on loopback serving the stand-in model, answering with a fake VLM. A
screenshot of the open heatmap is kept under pytest's tmp dir (path printed).

Playwright's own browser download cannot work here: ``scripts/setup.sh --dev``
installs Debian's ``chromium`` and the ``playwright`` package, and the test
launches ``/usr/bin/chromium``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("fastembed")
pytest.importorskip("playwright")

from playwright import sync_api as playwright_api

from pipeline import PageRAG
from pipeline.serve.app import create_app
from pipeline.testing.fake_vlm import FakeVLM
from tests.serve_support import THREE_PAGES, serve_config, uvicorn_server

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at /usr/bin/chromium "
        "(scripts/setup.sh --dev runs apt-get install chromium)",
    ),
    pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils is not installed"),
]


@pytest.fixture
def site(tiny_model_dir: Path, tmp_path: Path) -> Iterator[str]:
    with FakeVLM(delay_s=0.02) as vlm:
        rag = PageRAG(serve_config(tmp_path, model_dir=tiny_model_dir, vlm_url=vlm.base_url))
        try:
            with uvicorn_server(create_app(rag)) as url:
                yield url
        finally:
            rag.close()


def test_upload_ask_and_see_the_cited_page_with_its_heatmap(
    site: str, corpus: Path, tmp_path: Path
) -> None:
    problems: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: d.accept())
            page.set_default_timeout(60_000)
            _run(page, site, corpus, tmp_path)
        finally:
            browser.close()
    assert problems == []


def _run(page: Any, site: str, corpus: Path, tmp_path: Path) -> None:
    expect = playwright_api.expect
    expect.set_options(timeout=60_000)  # a loaded 2-core machine: minutes, not seconds, of slack
    page.goto(site + "/")
    expect(page.locator("#collection")).to_contain_text("0 documents")
    expect(page.locator("#stand-in")).to_be_visible()
    expect(page.locator("#no-docs")).to_be_visible()

    # Upload and watch the job.
    page.set_input_files("#files", str(corpus / THREE_PAGES))
    page.click("#upload-form button")
    expect(page.locator("#job-status")).to_contain_text("done: 3 pages ingested")
    assert page.eval_on_selector("#progress", "p => p.value === p.max && !p.hidden")
    expect(page.locator("#doc-rows tr")).to_have_count(1)
    expect(page.locator("#doc-rows")).to_contain_text("three_pages_with_number.pdf")
    expect(page.locator("#collection")).to_contain_text("1 documents, 3 pages")

    # Ask: the answer streams in, the pages shown to the model appear, the cited one framed.
    page.fill("#question", "Which number is on the page?")
    page.fill("#k", "2")
    page.click("#ask-form button")
    expect(page.locator("#answer")).to_contain_text(
        "The pages say so [three_pages_with_number.pdf p."
    )
    expect(page.locator("#sources .thumb")).to_have_count(2)
    cited = page.locator("#sources .thumb.cited")
    expect(cited).to_have_count(1)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#sources img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    answer = page.inner_text("#answer")
    label = cited.locator("span").inner_text()
    assert f"[{label}]" in answer
    overview = tmp_path / "pagerag-serve-answer.png"
    page.screenshot(path=str(overview), full_page=True)
    print(f"\nscreenshot of the answer and its pages: {overview}")

    # The cited page, full size, with its MaxSim heatmap and the legend.
    cited.click()
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-label")).to_have_text(label)
    expect(page.locator("#legend")).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.getElementById('viewer-img');"
        " return i.src.startsWith('blob:') && i.complete && i.naturalWidth > 100; }"
    )
    expect(page.locator("#viewer-score")).to_contain_text("from page patches")
    assert page.eval_on_selector("#legend img", "i => i.complete && i.naturalWidth === 256")
    heat_src = page.get_attribute("#viewer-img", "src")
    shot = tmp_path / "pagerag-serve-heatmap.png"
    page.screenshot(path=str(shot), full_page=False)
    print(f"\nscreenshot of the page with its heatmap: {shot}")
    assert shot.stat().st_size > 10_000

    # Heatmap off shows the plain page; close the viewer.
    page.click("#heat")
    page.wait_for_function(f"() => document.getElementById('viewer-img').src !== {heat_src!r}")
    expect(page.locator("#legend")).to_be_hidden()
    page.click("#viewer-close")
    expect(page.locator("#viewer")).to_be_hidden()

    # Delete the document from the list (the confirm dialog is accepted).
    page.click("#doc-rows button")
    expect(page.locator("#doc-rows tr")).to_have_count(0)
    expect(page.locator("#collection")).to_contain_text("0 documents")
