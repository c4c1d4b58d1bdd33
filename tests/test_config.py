"""Typed config: YAML + PAGERAG_<SECTION>__<KEY> overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import PageRAGConfig, load_config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_equals_the_built_in_defaults() -> None:
    assert load_config(ROOT / "configs" / "default.yaml", environ={}) == PageRAGConfig()


def test_server_yaml_loads() -> None:
    config = load_config(ROOT / "configs" / "server.yaml", environ={})
    assert config.store.url


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("embedding:\n  batch_size: 4\nstore:\n  collection: a\n")
    config = load_config(
        path,
        environ={"PAGERAG_EMBEDDING__BATCH_SIZE": "16", "PAGERAG_VLM__API_KEY": "12345"},
    )
    assert config.embedding.batch_size == 16
    assert config.store.collection == "a"
    assert config.vlm.api_key is not None
    assert config.vlm.api_key.get_secret_value() == "12345"  # stays a string
    assert "12345" not in repr(config)


def test_pagerag_config_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("retrieval:\n  k: 9\n")
    assert load_config(environ={"PAGERAG_CONFIG": str(path)}).retrieval.k == 9


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("store:\n  colection: x\n", "unknown key 'store.colection'"),
        ("render:\n  dpi: lots\n", "render.dpi"),
        ("nonsense: 1\n", "unknown key 'nonsense'"),
        ("- a list\n", "mapping"),
        ("store: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        load_config(path, environ={})


def test_bad_env_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PAGERAG_NOPE"):
        load_config(environ={"PAGERAG_NOPE": "1"})
    with pytest.raises(ConfigError, match=r"store\.urll"):
        load_config(environ={"PAGERAG_STORE__URLL": "x"})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_openai_and_qdrant_keys_come_from_their_usual_variables() -> None:
    config = load_config(environ={"OPENAI_API_KEY": "sk-a", "QDRANT_API_KEY": "q-b"})
    assert config.vlm.api_key is not None and config.vlm.api_key.get_secret_value() == "sk-a"
    assert config.store.api_key is not None and config.store.api_key.get_secret_value() == "q-b"


def test_home_in_paths_is_expanded() -> None:
    config = load_config(environ={"PAGERAG_STORE__PATH": "~/pagerag-data"})
    assert "~" not in str(config.store.path)


@pytest.mark.parametrize("name", ["PAGERAG_EXTRA", "PAGERAG_TEST_CORPUS"])
def test_set_up_and_test_switches_are_not_settings(name: str) -> None:
    """scripts/setup.sh's PAGERAG_EXTRA and the tests' corpus folder may stay exported."""
    assert load_config(environ={name: "gpu"}) == load_config(environ={})
    with pytest.raises(ConfigError, match="PAGERAG_EXTRAS"):  # a near miss is still refused
        load_config(environ={"PAGERAG_EXTRAS": "gpu"})
