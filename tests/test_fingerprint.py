"""Vectors are tied to the exact weights that made them.

A collection records a fingerprint of the model files that filled it (plus the
model name, where the files came from, and whether they are the random-weight
stand-in). Opening it for ingest or search with other weights is refused with
the fix; the same weights from another directory are accepted; ``status``,
search hits and eval runs name the real identity.

The two weight sets are stand-in models built with different seeds, both
registered as ``Qdrant/colpali-v1.3-fp16`` through ``embedding.model_path``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from pipeline import PageRAG
from pipeline.config import EmbeddingConfig, PageRAGConfig, StoreConfig, load_config
from pipeline.embed.fingerprint import CHUNK, SAMPLES, fingerprint_files, is_stand_in
from pipeline.errors import CollectionMismatchError, ModelNotAvailableError
from pipeline.models import MODELS
from pipeline.retrieve.store import manifest_payload, spec_from_manifest
from pipeline.testing.fakes import FAKE_SPEC, FakeEmbedder
from pipeline.types import CollectionSpec, ModelIdentity

pytest.importorskip("fastembed")

from connectors.fastembed import FastEmbedColPali
from pipeline.testing.tiny_colpali import build

MODEL = "Qdrant/colpali-v1.3-fp16"

RagFactory = Callable[[Path], PageRAG]


@pytest.fixture(scope="module")
def seed1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other weights under the same registered name: the stand-in with seed 1."""
    return build(tmp_path_factory.mktemp("tiny-colpali-seed1"), seed=1)


@pytest.fixture(scope="module")
def seed0_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as ``tiny_model_dir`` (seed 0), built into another directory."""
    return build(tmp_path_factory.mktemp("tiny-colpali-copy"), seed=0)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = Image.new("RGB", (300, 400), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([20, 20, 280, 60], fill=(30, 60, 200))
    draw.rectangle([40, 120, 200, 300], fill=(200, 40, 40))
    draw.text((30, 350), "quarterly revenue", fill="black")
    path = tmp_path_factory.mktemp("pages") / "page.png"
    image.save(path)
    return path


def _config(store_path: Path, model_dir: Path) -> PageRAGConfig:
    return load_config(
        environ={},
        overrides={
            "store": {"path": str(store_path)},
            "render": {"dpi": 40},
            "embedding": {
                "model_path": str(model_dir),
                "cache_dir": str(store_path.parent / "fastembed-cache"),
                "device": "cpu",
                "threads": 1,
            },
        },
    )


@pytest.fixture(params=["edge", "memory"])
def make_rag(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RagFactory]:
    """PageRAGs on one collection (embedded engine, or one shared in-memory client)."""
    client: Any = None
    if request.param == "memory":
        from qdrant_client import QdrantClient

        client = QdrantClient(location=":memory:")

    def make(model_dir: Path) -> PageRAG:
        config = _config(tmp_path / "data", model_dir)
        if client is None:
            return PageRAG(config)
        from connectors.qdrant_client import ClientPageStore

        return PageRAG(config, store=ClientPageStore(StoreConfig(url=":memory:"), client=client))

    yield make
    if client is not None:
        client.close()


def _identity(model_dir: Path, tmp_path: Path) -> ModelIdentity:
    config = EmbeddingConfig(model_path=model_dir, cache_dir=tmp_path / "cache", device="cpu")
    return FastEmbedColPali(config).identity()


# -- the check the issue asks for -------------------------------------------------


def test_a_collection_filled_with_other_weights_is_refused(
    make_rag: RagFactory, tiny_model_dir: Path, seed1_dir: Path, page: Path
) -> None:
    with make_rag(tiny_model_dir) as first:
        assert first.ingest([page]).exit_code == 0
        assert first.store.count_pages() == 1
        made_by = first.embedder.identity()

    with make_rag(seed1_dir) as other:
        other_weights = other.embedder.identity()
        assert other_weights.name == made_by.name == MODEL
        assert other_weights.fingerprint != made_by.fingerprint
        with pytest.raises(CollectionMismatchError) as ingest_refused:
            other.ingest([page])
        with pytest.raises(CollectionMismatchError) as search_refused:
            other.search("quarterly revenue", k=1)

    for info in (ingest_refused, search_refused):
        message = str(info.value)
        assert made_by.fingerprint in message and other_weights.fingerprint in message
        assert str(seed1_dir) in message  # where the configured weights come from
        assert "store.collection" in message  # fix 1: another collection
        assert "re-ingest" in message and "re-embed" in message  # fix 2: re-embed
        assert "reindex" not in message or "does not re-embed" in message

    # Nothing was mixed in: the collection still holds the first weights' page only.
    with make_rag(tiny_model_dir) as again:
        hits = again.search("quarterly revenue", k=5)
        assert len(hits) == 1
        spec = again.store.spec()
        assert spec is not None and spec.identity == made_by


def test_the_same_weights_from_another_directory_are_accepted(
    make_rag: RagFactory, tiny_model_dir: Path, seed0_copy: Path, page: Path
) -> None:
    with make_rag(tiny_model_dir) as first:
        first.ingest([page])
    with make_rag(seed0_copy) as copy:
        assert copy.embedder.identity().source == str(seed0_copy.resolve())
        report = copy.ingest([page])
        assert [o.status for o in report.outcomes] == ["skipped"]
        assert len(copy.search("quarterly revenue", k=3)) == 1


# -- the identity is shown, and the stand-in says it is one ------------------------


def test_status_hits_and_records_name_the_stand_in(
    make_rag: RagFactory, tiny_model_dir: Path, page: Path
) -> None:
    with make_rag(tiny_model_dir) as rag:
        assert rag.status().to_dict()["model_fingerprint"] is None  # nothing ingested yet
        rag.ingest([page])
        identity = rag.embedder.identity()
        status = rag.status().to_dict()
        hit = rag.search("revenue", k=1)[0]
        (record,) = rag.documents()

    assert identity.stand_in and "stand-in" in identity.label
    assert status["model"] == identity.label != MODEL
    assert status["configured_model"] == MODEL
    assert status["model_fingerprint"] == identity.fingerprint
    assert status["model_source"] == str(tiny_model_dir.resolve())
    assert status["model_stand_in"] is True
    assert hit.payload["model"] == identity.label
    assert hit.payload["model_fingerprint"] == identity.fingerprint
    assert record.model == identity.label


def test_a_collection_from_before_fingerprints_adopts_the_weights_with_a_warning(
    tmp_path: Path, tiny_model_dir: Path, seed1_dir: Path, page: Path, caplog: Any
) -> None:
    from connectors.qdrant_edge import EdgePageStore
    from pipeline.embed.pooling import POOLED_VECTORS

    legacy = CollectionSpec(name="pagerag", model=MODEL, dim=128, pooled=POOLED_VECTORS)
    with EdgePageStore(tmp_path / "data", "pagerag") as store:
        store.open(legacy)  # no identity: the manifest an older pagerag wrote
    manifest = manifest_payload(legacy, engine="qdrant-edge")
    assert "model_fingerprint" not in manifest

    with PageRAG(_config(tmp_path / "data", tiny_model_dir)) as rag:
        status = rag.status().to_dict()  # reading does not adopt anything
        assert status["model"] == MODEL and status["model_fingerprint"] is None
        with caplog.at_level(logging.WARNING):
            rag.ingest([page])
        spec = rag.store.spec()
        assert spec is not None and spec.identity == rag.embedder.identity()
    assert "no fingerprint" in caplog.text and "new collection" in caplog.text

    with (
        PageRAG(_config(tmp_path / "data", seed1_dir)) as other,
        pytest.raises(CollectionMismatchError),
    ):
        other.search("revenue", k=1)


def test_reading_commands_do_not_need_matching_weights(
    tmp_path: Path, tiny_model_dir: Path, seed1_dir: Path, page: Path
) -> None:
    with PageRAG(_config(tmp_path / "data", tiny_model_dir)) as rag:
        rag.ingest([page])
        made_by = rag.embedder.identity()
    with PageRAG(_config(tmp_path / "data", seed1_dir)) as other:
        status = other.status().to_dict()
        assert status["model_fingerprint"] == made_by.fingerprint  # the recorded weights
        assert [d.file_name for d in other.documents()] == ["page.png"]
        # opened without weights for reading; searching still checks them
        with pytest.raises(CollectionMismatchError, match=made_by.fingerprint):
            other.search("revenue", k=1)


# -- the embedder's identity -------------------------------------------------------


def test_identity_reads_the_files_not_the_session(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = EmbeddingConfig(model_path=tiny_model_dir, cache_dir=tmp_path / "c", device="cpu")
    embedder = FastEmbedColPali(config)
    identity = embedder.identity()
    assert not embedder.loaded
    assert embedder.identity() is identity  # cached per instance
    assert identity.name == MODEL
    assert identity.source == str(tiny_model_dir.resolve())
    assert identity.stand_in
    assert len(identity.fingerprint) == 16 and int(identity.fingerprint, 16) >= 0


def test_identity_of_a_model_directory_does_not_import_fastembed(tiny_model_dir: Path) -> None:
    # Reading commands and reruns of unchanged files never load onnxruntime (which
    # writes to TMPDIR on import) or create fastembed's cache just to check weights.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from connectors.fastembed import FastEmbedColPali\n"
        "from pipeline.config import EmbeddingConfig\n"
        f"config = EmbeddingConfig(model_path=Path({str(tiny_model_dir)!r}), device='cpu')\n"
        "print(FastEmbedColPali(config).identity().fingerprint)\n"
        "print(sorted(m for m in ('fastembed', 'onnxruntime') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    fingerprint, imported = done.stdout.split()
    assert imported == "[]"
    assert len(fingerprint) == 16


def test_a_model_directory_without_the_weights_says_which_files_lack(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    config = EmbeddingConfig(model_path=tmp_path / "model", cache_dir=tmp_path / "c")
    with pytest.raises(ModelNotAvailableError, match=r"lacks model\.onnx.*embedding\.model_path"):
        FastEmbedColPali(config).identity()


def test_fingerprint_follows_the_weights_not_the_directory(
    tmp_path: Path, tiny_model_dir: Path, seed0_copy: Path, seed1_dir: Path
) -> None:
    same = _identity(seed0_copy, tmp_path)
    base = _identity(tiny_model_dir, tmp_path)
    assert same.fingerprint == base.fingerprint and same.source != base.source
    assert _identity(seed1_dir, tmp_path).fingerprint != base.fingerprint


def test_a_hub_cache_snapshot_is_named_by_its_hub_source(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--Qdrant--colpali-v1.3-fp16"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    config = EmbeddingConfig(model_path=None, cache_dir=tmp_path / "cache", device="cpu")
    identity = FastEmbedColPali(config).identity()
    assert identity.source == f"hub:{MODEL}@{revision}"
    assert identity.fingerprint == _identity(tiny_model_dir, tmp_path).fingerprint


def test_the_stand_in_marks_itself(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert is_stand_in(tiny_model_dir)
    real_looking = tmp_path / "real"
    shutil.copytree(tiny_model_dir, real_looking)
    (real_looking / "config.json").write_text('{"model_type": "paligemma"}\n')
    assert not is_stand_in(real_looking)
    identity = _identity(real_looking, tmp_path)
    assert not identity.stand_in and identity.label == MODEL


def test_fake_embedder_has_an_identity() -> None:
    fake = FakeEmbedder().identity()
    assert fake.name == FAKE_SPEC.name and fake.label == FAKE_SPEC.name and not fake.stand_in
    assert fake == FakeEmbedder(seconds_per_page=0.5).identity()
    pretending = FakeEmbedder(MODELS[MODEL]).identity()
    assert pretending.stand_in and "stand-in" in pretending.label
    assert pretending.fingerprint != fake.fingerprint


# -- the fingerprint itself ---------------------------------------------------------


def test_fingerprint_covers_only_the_named_files(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "tokenizer.json").write_text("{}")
    names = ["model.onnx", "tokenizer.json", "config.json"]
    before = fingerprint_files(tmp_path, names)
    (tmp_path / "README.md").write_text("unrelated")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "download.metadata").write_text("timestamps")
    assert fingerprint_files(tmp_path, names) == before
    (tmp_path / "config.json").write_text("{}")  # an optional file appearing counts
    assert fingerprint_files(tmp_path, names) != before


def test_large_files_are_sampled_cheaply_and_still_told_apart(tmp_path: Path) -> None:
    import time

    big = tmp_path / "model.onnx_data"
    size = 6_500 * 2**20  # as large as the real ColPali weights; sparse on disk
    with big.open("wb") as handle:
        handle.truncate(size)
    started = time.perf_counter()
    first = fingerprint_files(tmp_path, ["model.onnx_data"])
    assert time.perf_counter() - started < 5.0
    with big.open("r+b") as handle:
        handle.seek(10)
        handle.write(b"\x01")  # the header differs
    second = fingerprint_files(tmp_path, ["model.onnx_data"])
    assert second != first
    with big.open("r+b") as handle:
        handle.seek((size - CHUNK) // (SAMPLES + 1) + 100)
        handle.write(b"\x01")  # a sampled chunk inside the file differs
    third = fingerprint_files(tmp_path, ["model.onnx_data"])
    assert third != second
    with big.open("r+b") as handle:
        handle.truncate(size + 1)  # another size
    assert fingerprint_files(tmp_path, ["model.onnx_data"]) != third


def test_small_files_are_hashed_whole(tmp_path: Path) -> None:
    data = tmp_path / "model.onnx"
    data.write_bytes(bytes(3 * 2**20))
    first = fingerprint_files(tmp_path, ["model.onnx"])
    with data.open("r+b") as handle:
        handle.seek(2 * 2**20 + 12345)
        handle.write(b"\x07")
    assert fingerprint_files(tmp_path, ["model.onnx"]) != first


def test_the_manifest_records_the_identity() -> None:
    identity = ModelIdentity(name=MODEL, source="/models/colpali", fingerprint="0" * 16)
    spec = CollectionSpec(name="c", model=MODEL, dim=128, identity=identity)
    manifest = manifest_payload(spec, engine="qdrant-edge")
    assert manifest["model_fingerprint"] == "0" * 16
    assert manifest["model_source"] == "/models/colpali"
    assert manifest["model_stand_in"] is False
    assert spec_from_manifest("c", manifest) == spec
    legacy = {k: v for k, v in manifest.items() if not k.startswith("model_")}
    assert spec_from_manifest("c", legacy).identity is None


def test_weights_identity_names_the_directory_it_cannot_read(tmp_path: Path) -> None:
    """Both backends build their identity here: an unreadable file is a ModelError that
    says which model and directory, not a bare OSError."""
    from pipeline.embed.fingerprint import weights_identity
    from pipeline.errors import ModelError

    def unreadable() -> str:
        raise PermissionError(13, "Permission denied", str(tmp_path / "model.onnx"))

    with pytest.raises(ModelError, match=re.escape(f"cannot read the files of m/x in {tmp_path}")):
        weights_identity("m/x", tmp_path, "local", unreadable)
    (tmp_path / "config.json").write_text('{"pagerag_stand_in": true}', encoding="utf-8")
    identity = weights_identity("m/x", tmp_path, "local", lambda: "abc")
    assert (identity.name, identity.source, identity.fingerprint) == ("m/x", "local", "abc")
    assert identity.stand_in
