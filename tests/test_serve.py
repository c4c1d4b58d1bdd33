"""``pagerag serve``: every endpoint through the ASGI test client, auth, limits, jobs.

The main service runs the real path — corpus PDFs uploaded and rendered by
poppler, the fastembed embedder with the offline stand-in ColPali model, the
embedded engine — and answers with a fake OpenAI-compatible VLM on loopback
(``pipeline.testing.fake_vlm``), so asks and SSE streams cross a real HTTP
boundary. Tests of limits, auth and job scheduling use the deterministic
``FakeEmbedder`` (slowed down where a job must still be running). The stand-in
model has random weights: nothing here checks ranking quality.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("fastembed")

from fastapi.testclient import TestClient
from pydantic import SecretStr

from pipeline import PageRAG
from pipeline.config import load_config
from pipeline.errors import ConfigError, QueryError
from pipeline.serve.app import create_app
from pipeline.serve.security import check_bind, is_loopback
from pipeline.testing.fake_vlm import FakeVLM
from pipeline.testing.fakes import FakeEmbedder
from tests.serve_support import EIGHT_PAGES, THREE_PAGES, serve_config

REPO = Path(__file__).resolve().parents[1]
KEY = "serve-test-key-0123456789abcdef"

pytestmark = pytest.mark.skipif(
    shutil.which("pdftoppm") is None, reason="poppler-utils is not installed"
)


def _events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of an SSE response, data parsed as JSON."""
    found: list[tuple[str, dict[str, Any]]] = []
    event = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            found.append((event, json.loads(line[5:])))
    return found


def _wait(client: TestClient, job: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = client.get(f"/v1/jobs/{job['id']}").json()
        if current["state"] in ("done", "failed", "cancelled"):
            return dict(current)
        time.sleep(0.05)
    raise AssertionError(f"job {job['id']} did not finish in {timeout} s")


def _upload(client: TestClient, *paths: Path, **form: str) -> Any:
    files = [("files", (p.name, p.read_bytes(), "application/pdf")) for p in paths]
    return client.post("/v1/ingest", files=files, data=form or None)


# --------------------------------------------------------------------------- the real path


@pytest.fixture(scope="module")
def served(
    tiny_model_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    """The stand-in model behind the service, one 3-page PDF uploaded and ingested."""
    tmp = tmp_path_factory.mktemp("serve")
    roots = tmp / "roots"
    (roots / "docs").mkdir(parents=True)
    with FakeVLM() as vlm:
        config = serve_config(tmp, model_dir=tiny_model_dir, vlm_url=vlm.base_url, roots=[roots])
        rag = PageRAG(config)
        with TestClient(create_app(rag)) as client:
            job = _upload(client, corpus / THREE_PAGES).json()
            done = _wait(client, job)
            assert done["state"] == "done", done
            yield SimpleNamespace(
                client=client, rag=rag, vlm=vlm, roots=roots, uploads=tmp / "uploads", job=done
            )
        rag.close()


def test_status_names_the_collection_the_stand_in_and_the_service(served: Any) -> None:
    data = served.client.get("/v1/status").json()
    assert data["collection"] == "pagerag"
    assert data["documents"] == 1 and data["pages"] == 3
    assert data["model_stand_in"] is True
    assert "(stand-in, random weights)" in data["model"]
    assert data["service"]["auth"] is False
    assert data["service"]["ingest_by_path"] is True
    assert ".pdf" in data["service"]["extensions"]


def test_upload_job_reports_progress_and_its_report(served: Any) -> None:
    job = served.job
    assert job["kind"] == "upload" and job["inputs"] == ["three_pages_with_number.pdf"]
    assert job["progress"]["pages_done"] == 3
    assert job["report"]["files"]["ingested"] == 1
    assert job["report"]["pages_ingested"] == 3
    # The uploaded file was kept under the upload folder: it is the recorded source.
    stored = served.uploads / "pagerag" / "three_pages_with_number.pdf"
    assert stored.is_file()
    doc = served.client.get("/v1/documents").json()["documents"][0]
    assert doc["source"] == str(stored)
    assert not (served.uploads / "pagerag" / ".incoming" / job["id"]).exists()


def test_search_returns_hits_like_the_in_process_call(served: Any) -> None:
    response = served.client.post("/v1/search", json={"query": "the number three", "k": 2})
    assert response.status_code == 200
    hits = response.json()["hits"]
    local = served.rag.search("the number three", 2)
    assert [h["point_id"] for h in hits] == [h.point_id for h in local]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in local])
    first = hits[0]
    assert first["label"] == f"three_pages_with_number.pdf p.{first['page']}"
    assert first["image_url"] == f"/v1/pages/{first['point_id']}/image"
    assert first["page_count"] == 3
    assert "image_jpeg_b64" not in first["payload"]
    timing = response.headers["server-timing"]
    assert timing.startswith("search;dur=") and float(timing.split("=")[1]) > 0


@pytest.mark.parametrize(
    ("body", "call"),
    [
        ({"query": "  "}, lambda rag: rag.search("  ")),
        ({"query": "x", "k": 0}, lambda rag: rag.search("x", 0)),
        ({"query": "x", "k": 5000}, lambda rag: rag.search("x", 5000)),
    ],
    ids=["empty", "k0", "k-too-big"],
)
def test_errors_are_problem_details_with_the_cli_message(
    served: Any, body: dict[str, Any], call: Any
) -> None:
    with pytest.raises(QueryError) as raised:
        call(served.rag)
    response = served.client.post("/v1/search", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"] == str(raised.value)
    assert problem["error"] == "QueryError"
    assert problem["status"] == 400
    assert problem["type"] == "urn:pagerag:error:QueryError"


def test_bad_bodies_and_routes_are_problems_too(served: Any) -> None:
    unknown = served.client.post("/v1/search", json={"query": "x", "colour": "red"})
    assert unknown.status_code == 422
    assert "colour" in unknown.json()["detail"]
    bad_mode = served.client.post("/v1/search", json={"query": "x", "mode": "fast"})
    assert bad_mode.status_code == 422
    missing = served.client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_page_image_and_thumbnail(served: Any) -> None:
    hit = served.rag.search("page", 1)[0]
    full = served.client.get(f"/v1/pages/{hit.point_id}/image")
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert full.content == hit.load_jpeg()
    small = served.client.get(f"/v1/pages/{hit.point_id}/image", params={"width": 64})
    assert Image.open(io.BytesIO(small.content)).width == 64
    unknown = served.client.get("/v1/pages/00000000-0000-4000-8000-000000000000/image")
    assert unknown.status_code == 404
    assert "no image stored for page" in unknown.json()["detail"]
    assert served.client.get("/v1/pages/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)


def test_explain_returns_the_heatmap_png(served: Any) -> None:
    hit = served.rag.search("the number three", 1)[0]
    response = served.client.get(
        f"/v1/pages/{hit.point_id}/explain", params={"q": "the number three"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    heat = Image.open(io.BytesIO(response.content)).convert("RGB")
    page = hit.load_image().convert("RGB")
    assert heat.size == page.size
    assert heat.tobytes() != page.tobytes()  # something is drawn over the page
    expected = served.rag.explain("the number three", hit.point_id)
    assert float(response.headers["x-pagerag-score"]) == pytest.approx(
        expected.maps.score, abs=1e-3
    )
    missing_q = served.client.get(f"/v1/pages/{hit.point_id}/explain")
    assert missing_q.status_code == 422


def test_ask_shows_the_pages_to_the_vlm_and_cites_them(served: Any) -> None:
    before = len(served.vlm.requests)
    response = served.client.post("/v1/ask", json={"question": "Which number?", "k": 2})
    assert response.status_code == 200
    data = response.json()
    assert data["answered"] is True
    assert len(data["sources"]) == 2
    first = data["sources"][0]
    assert data["answer"] == f"The pages say so [{first['label']}]."
    assert data["cited"] == [first["point_id"]]
    assert data["usage"]["total_tokens"] == 1012
    sent = served.vlm.requests[before]
    images = [
        part
        for message in sent["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]
    assert len(images) == 2
    assert images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_ask_streams_sources_deltas_then_the_answer(served: Any) -> None:
    body = {"question": "Which number?", "k": 2, "stream": True}
    with served.client.stream("POST", "/v1/ask", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "answer"
    assert set(names[1:-1]) == {"delta"} and len(names) > 3
    text = "".join(data["text"] for name, data in events if name == "delta")
    final = events[-1][1]
    assert text == final["answer"]
    sources = events[0][1]["sources"]
    assert [s["point_id"] for s in final["sources"]] == [s["point_id"] for s in sources]
    assert final["cited"] == [sources[0]["point_id"]]
    assert served.vlm.requests[-1]["stream"] is True


def test_curl_d_without_a_content_type_works(served: Any) -> None:
    """The issue's own example: ``curl -N … /v1/ask -d '{"question": …, "stream": true}'``."""
    body = json.dumps({"question": "Which number?", "k": 1, "stream": True})
    form = {"content-type": "application/x-www-form-urlencoded"}
    with served.client.stream("POST", "/v1/ask", content=body, headers=form) as response:
        assert response.status_code == 200
        assert [name for name, _ in _events(response)][-1] == "answer"
    search = served.client.post("/v1/search", content=json.dumps({"query": "x"}), headers=form)
    assert search.status_code == 200


def test_ask_stream_errors_before_streaming_are_plain_problems(served: Any) -> None:
    body = {"question": "", "stream": True}
    response = served.client.post("/v1/ask", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "QueryError"


def test_documents_get_and_delete_with_the_uploaded_file(served: Any, corpus: Path) -> None:
    client = served.client
    job = _wait(client, _upload(client, corpus / EIGHT_PAGES).json())
    assert job["state"] == "done"
    docs = {d["file_name"]: d for d in client.get("/v1/documents").json()["documents"]}
    doc = docs["boxes.pdf"]
    assert doc["page_count"] == 8 and doc["complete"] is True
    short = doc["document_id"][:10]
    assert client.get(f"/v1/documents/{short}").json()["document_id"] == doc["document_id"]
    assert client.get("/v1/documents/../etc").status_code in (400, 404)
    assert client.get("/v1/documents/not-an-id").status_code == 400
    deleted = client.delete(f"/v1/documents/{short}")
    assert deleted.status_code == 200
    assert [d["document_id"] for d in deleted.json()["deleted"]] == [doc["document_id"]]
    assert not Path(doc["source"]).exists()  # the uploaded copy went with it
    assert client.get(f"/v1/documents/{short}").status_code == 404
    again = client.delete(f"/v1/documents/{short}")
    assert again.status_code == 404 and "no document with id" in again.json()["detail"]


def test_jobs_list_events_and_unknown_job(served: Any) -> None:
    client = served.client
    listed = client.get("/v1/jobs").json()["jobs"]
    assert served.job["id"] in [j["id"] for j in listed]
    with client.stream("GET", f"/v1/jobs/{served.job['id']}/events") as response:
        events = _events(response)
    assert [name for name, _ in events] == ["done"]
    assert events[0][1]["report"]["pages_ingested"] == 3
    assert client.get("/v1/jobs/nope").status_code == 404


def test_ingest_by_path_only_under_the_roots(served: Any, corpus: Path, tmp_path: Path) -> None:
    client, roots = served.client, served.roots
    inside = roots / "docs" / "three.pdf"
    shutil.copy(corpus / THREE_PAGES, inside)
    outside = tmp_path / "secret.pdf"
    shutil.copy(corpus / THREE_PAGES, outside)
    (roots / "docs" / "escape.pdf").symlink_to(outside)

    def ingest(*paths: str) -> Any:
        return client.post("/v1/ingest", json={"paths": list(paths)})

    for refused in (str(outside), str(roots / ".." / outside.name), "../secret.pdf"):
        response = ingest(refused)
        assert response.status_code == 403, refused
        assert "outside serve.roots" in response.json()["detail"]
    escape = ingest("docs")  # the folder holds a symlink that leads out
    assert escape.status_code == 403 and "through a symlink" in escape.json()["detail"]
    assert ingest("docs/*.pdf").status_code == 400
    (roots / "docs" / "escape.pdf").unlink()
    job = ingest("docs/three.pdf")
    assert job.status_code == 202 and job.headers["location"] == f"/v1/jobs/{job.json()['id']}"
    done = _wait(client, job.json())
    assert done["state"] == "done"
    assert done["report"]["outcomes"][0]["path"] == str(inside)
    missing = _wait(client, ingest("docs/missing.pdf").json())
    assert missing["report"]["outcomes"][0]["reason"] == "not_found"
    unsupported = client.post("/v1/ingest", content=b"x", headers={"content-type": "text/plain"})
    assert unsupported.status_code == 415


# --------------------------------------------------------------------------- fake embedder


def _fake_service(tmp: Path, *, delay: float = 0.0, **serve: Any) -> tuple[PageRAG, TestClient]:
    rag = PageRAG(serve_config(tmp, **serve), embedder=FakeEmbedder(seconds_per_page=delay))
    return rag, TestClient(create_app(rag))


def test_ingest_by_path_is_off_without_roots(tmp_path: Path) -> None:
    rag, client = _fake_service(tmp_path)
    with rag, client:
        response = client.post("/v1/ingest", json={"paths": ["/etc"]})
    assert response.status_code == 403
    assert "ingest by path is off" in response.json()["detail"]


def test_upload_limits(tmp_path: Path, corpus: Path) -> None:
    rag, client = _fake_service(tmp_path, max_upload_files=2, max_upload_mb=0.2)
    pdf = (corpus / THREE_PAGES).read_bytes()
    uploads = tmp_path / "uploads" / "pagerag"
    with rag, client:

        def send(*names: str, data: bytes = pdf) -> Any:
            return client.post(
                "/v1/ingest", files=[("files", (n, data, "application/pdf")) for n in names]
            )

        many = send("a.pdf", "b.pdf", "c.pdf")
        assert many.status_code == 413 and "serve.max_upload_files" in many.json()["detail"]
        big = send("big.pdf", data=b"%PDF" + b"0" * 300_000)
        assert big.status_code == 413 and "serve.max_upload_mb" in big.json()["detail"]
        assert send("notes.exe").status_code == 415
        assert send(".pdf").status_code == 400
        assert send("a.pdf", "a.pdf").status_code == 400
        chunked = client.post(
            "/v1/ingest",
            content=iter([b"--x\r\n"]),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert chunked.status_code == 411
        huge_json = client.post(
            "/v1/search", content=b" " * (2 << 20), headers={"content-type": "application/json"}
        )
        assert huge_json.status_code == 413
        assert not list(uploads.glob("*.pdf"))  # nothing refused was kept
        # A name with folders in it keeps only its base name, inside the upload folder.
        sneaky = send("../../../etc/cron.d/x.pdf")
        assert sneaky.status_code == 202
        assert sneaky.json()["inputs"] == ["x.pdf"]
        _wait(client, sneaky.json())
        assert (uploads / "x.pdf").is_file()


def test_searches_run_while_an_ingest_job_runs(tmp_path: Path, corpus: Path) -> None:
    rag, client = _fake_service(tmp_path, delay=0.25)
    with rag, client:
        assert _wait(client, _upload(client, corpus / THREE_PAGES).json())["state"] == "done"
        job = _upload(client, corpus / EIGHT_PAGES).json()
        during, statuses = 0, []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = client.get(f"/v1/jobs/{job['id']}").json()["state"]
            if state in ("done", "failed", "cancelled"):
                break
            response = client.post("/v1/search", json={"query": "page", "k": 3})
            statuses.append(response.status_code)
            during += state == "running"
        final = _wait(client, job)
    assert final["state"] == "done" and final["report"]["pages_ingested"] == 8
    assert during >= 3, f"only {during} searches overlapped the job"
    assert set(statuses) == {200}


def test_one_job_at_a_time_a_bounded_queue_and_cancel(tmp_path: Path, corpus: Path) -> None:
    rag, client = _fake_service(tmp_path, delay=0.3, max_queued_jobs=1)
    with rag, client:
        first = _upload(client, corpus / EIGHT_PAGES).json()
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{first['id']}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second = _upload(client, corpus / THREE_PAGES).json()
        assert second["state"] == "queued" and second["position"] == 0
        third = _upload(client, corpus / THREE_PAGES)
        assert third.status_code == 429
        assert f"job {first['id']} is running" in third.json()["detail"]
        assert "serve.max_queued_jobs" in third.json()["detail"]
        assert third.headers["retry-after"]
        cancelled = client.delete(f"/v1/jobs/{second['id']}").json()
        assert cancelled["state"] == "cancelled"
        client.delete(f"/v1/jobs/{first['id']}")
        stopped = _wait(client, first)
    assert stopped["state"] == "cancelled"
    assert stopped["report"]["interrupted"] is True
    assert stopped["report"]["pages_ingested"] < 8


def test_vlm_unreachable_is_a_502_problem(tmp_path: Path, corpus: Path) -> None:
    rag = PageRAG(serve_config(tmp_path, vlm_url="http://127.0.0.1:1/v1"), embedder=FakeEmbedder())
    with rag, TestClient(create_app(rag)) as client:
        _wait(client, _upload(client, corpus / THREE_PAGES).json())
        for stream in (False, True):
            response = client.post("/v1/ask", json={"question": "x", "stream": stream})
            assert response.status_code == 502
            assert response.json()["error"] == "VLMUnavailableError"
            assert "sk-fake-vlm-key" not in response.text


# --------------------------------------------------------------------------- auth


def test_api_key_guards_every_v1_endpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rag = PageRAG(serve_config(tmp_path, api_key=KEY), embedder=FakeEmbedder())
    app = create_app(rag)
    with rag, TestClient(app) as client:
        for method, path in [
            ("GET", "/v1/status"),
            ("POST", "/v1/search"),
            ("GET", "/v1/documents"),
            ("GET", "/v1/jobs"),
            ("GET", "/v1/pages/00000000-0000-4000-8000-000000000000/image"),
        ]:
            response = client.request(method, path, json={"query": "x"})
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in response.json()["detail"]
        wrong = client.get("/v1/status", headers={"Authorization": "Bearer not-the-key"})
        assert wrong.status_code == 401 and "not accepted" in wrong.json()["detail"]
        good = client.get("/v1/status", headers={"Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200 and good.json()["service"]["auth"] is True
        for open_path in ("/", "/docs", "/openapi.json", "/legend.png", "/static/app.js"):
            assert client.get(open_path).status_code == 200, open_path
        schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(s.get("scheme") == "bearer" for s in schemes.values())
        seen = [good.text, wrong.text, client.get("/openapi.json").text]
    assert KEY not in "".join(seen)
    assert KEY not in caplog.text
    assert "not-the-key" not in caplog.text


def test_page_has_a_strict_content_security_policy(tmp_path: Path) -> None:
    rag, client = _fake_service(tmp_path)
    with rag, client:
        page = client.get("/")
    assert page.status_code == 200 and "<title>pagerag</title>" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
    ],
)
def test_only_loopback_binds_go_without_a_key(host: str, ok: bool) -> None:
    assert is_loopback(host) is ok
    if ok:
        check_bind(host, None)
    else:
        with pytest.raises(ConfigError, match="PAGERAG_API_KEY"):
            check_bind(host, None)
    check_bind(host, SecretStr(KEY))  # any address with a key


def test_pagerag_api_key_is_the_serve_key_not_a_setting_path() -> None:
    config = load_config(environ={"PAGERAG_API_KEY": KEY, "PAGERAG_SERVE__PORT": "9001"})
    assert config.serve.api_key is not None
    assert config.serve.api_key.get_secret_value() == KEY
    assert config.serve.port == 9001
    assert KEY not in repr(config)
    explicit = load_config(environ={"PAGERAG_API_KEY": "a", "PAGERAG_SERVE__API_KEY": "b"})
    assert explicit.serve.api_key is not None and explicit.serve.api_key.get_secret_value() == "b"
    with pytest.raises(ConfigError, match="PAGERAG_API_KEYS"):
        load_config(environ={"PAGERAG_API_KEYS": "x"})


# --------------------------------------------------------------------------- the command


def _cli_env(tmp: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGERAG_")}
    env.update(
        PYTHONPATH=str(REPO),
        PAGERAG_STORE__PATH=str(tmp / "store"),
        PAGERAG_EMBEDDING__MODEL_PATH=str(model_dir),
        PAGERAG_EMBEDDING__DEVICE="cpu",
        PAGERAG_SERVE__UPLOAD_DIR=str(tmp / "uploads"),
        OPENAI_API_KEY="",
        **extra,
    )
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_serve_refuses_a_public_bind_without_a_key(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = _cli("serve", "--host", "0.0.0.0", env=_cli_env(tmp_path, tiny_model_dir))
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0" in result.stderr
    assert "PAGERAG_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_holds_the_store_and_answers_over_http(
    tmp_path: Path, tiny_model_dir: Path, corpus: Path
) -> None:
    """A real `pagerag serve` process: the API answers; other commands are told "in use"."""
    import socket

    from pipeline.client import PageRAGClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = _cli_env(tmp_path, tiny_model_dir, PAGERAG_API_KEY=KEY)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        with PageRAGClient(f"http://127.0.0.1:{port}", api_key=KEY, timeout=30) as client:
            deadline = time.monotonic() + 90
            while True:
                try:
                    status = client.status()
                    break
                except Exception:
                    assert server.poll() is None, server.communicate()[1]
                    assert time.monotonic() < deadline, "pagerag serve did not come up"
                    time.sleep(0.2)
            assert status["service"]["auth"] is True
            done = client.wait(client.ingest([corpus / THREE_PAGES])["id"])
            assert done["state"] == "done", done
            assert len(client.search("three", k=2)) == 2
            # docker-compose's healthcheck for pagerag-api, against this service.
            compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
            probe_code = compose["services"]["pagerag-api"]["healthcheck"]["test"][3]
            probe = subprocess.run(
                [sys.executable, "-c", probe_code.replace(":8000/", f":{port}/")],
                env={**env, "PAGERAG_API_KEY": KEY},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert probe.returncode == 0, probe.stderr
            busy = _cli("status", env=env)
            assert busy.returncode == 1
            assert "in use" in busy.stderr
            assert "Traceback" not in busy.stderr
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    # uvicorn stops gracefully, then ends the process with the signal it got.
    assert server.returncode in (0, -15), stderr
    assert "Traceback" not in stderr
    assert KEY not in stderr
    assert f"http://127.0.0.1:{port}/" in stderr
    after = _cli("status", "--json", env=env)  # the store was released, whole
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["pages"] == 3
