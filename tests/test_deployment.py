"""The deployment files agree with each other and with the code, without Docker.

docker-compose.yml, .env.example, configs/server.yaml and the Dockerfile are
read as text/YAML; ``docker-compose config -q`` (Debian's docker-compose v1,
which needs no engine) validates the compose file when it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline.config import API_KEY_ENV, load_config
from tests.conftest import QDRANT_IMAGE

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVER_YAML = ROOT / "configs" / "server.yaml"
DOCKERFILE = ROOT / "Dockerfile"
REST_PORT, GRPC_PORT = 6333, 6334


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host ip, host port), from "ip:host:container" short syntax."""
    ports: dict[int, tuple[str, int]] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        assert len(parts) == 3, f"port {entry!r} must name the host IP (ip:host:container)"
        ip, host, container = parts
        ports[int(container)] = (ip, int(host))
    return ports


def test_compose_parses_with_the_expected_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"qdrant", "pagerag", "pagerag-gpu", "pagerag-api", "vlm"} <= set(services)
    assert services["pagerag-gpu"]["profiles"] == ["gpu"]
    assert services["vlm"]["profiles"] == ["vlm"]
    assert "qdrant_storage" in compose["volumes"]
    assert any(v.startswith("qdrant_storage:") for v in services["qdrant"]["volumes"])


@pytest.mark.parametrize("profiles", [[], ["gpu", "vlm", "ray"]], ids=["default", "gpu+vlm+ray"])
def test_docker_compose_config_validates(profiles: list[str]) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip(
            "docker-compose is not on PATH (apt-get install docker-compose validates offline)"
        )
    command = [exe, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE)]
    for profile in profiles:
        command += ["--profile", profile]
    result = subprocess.run(
        [*command, "config", "-q"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_an_api_key(tmp_path: Path) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert "QDRANT__SERVICE__API_KEY: ${QDRANT_API_KEY:?" in text
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not on PATH")
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    result = subprocess.run(
        [exe, "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "QDRANT_API_KEY" in result.stderr


def test_qdrant_ports_agree_with_server_yaml(compose: dict[str, Any]) -> None:
    store = load_config(SERVER_YAML, environ={}).store
    assert store.url is not None
    url = urlsplit(store.url)
    ports = _published(compose["services"]["qdrant"])
    assert set(ports) == {REST_PORT, GRPC_PORT}
    assert ports[REST_PORT][1] == url.port
    assert ports[GRPC_PORT][1] == store.grpc_port
    assert url.hostname in ("localhost", "127.0.0.1")


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for container, (ip, _) in _published(service).items():
            assert ip == "127.0.0.1", f"{name} publishes {container} on {ip}"


def test_images_are_pinned_and_match_the_tests(compose: dict[str, Any]) -> None:
    from importlib.metadata import version

    from qdrant_client.common.version_check import is_compatible

    services = compose["services"]
    qdrant_image = services["qdrant"]["image"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qdrant_image)
    assert qdrant_image == QDRANT_IMAGE  # testcontainers runs the deployed version
    assert is_compatible(version("qdrant-client"), qdrant_image.rsplit(":v", 1)[1])
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", services["vlm"]["image"])


def test_ingest_services_run_against_the_server(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, extra in (("pagerag", "cpu"), ("pagerag-gpu", "gpu")):
        service = services[name]
        assert service["build"]["args"]["EXTRA"] == extra
        assert service["command"] == ["ingest", "/data"]
        assert service["depends_on"]["qdrant"]["condition"] == "service_healthy"
        assert any(str(v).endswith(":/models") for v in service["volumes"])
        env = {k: str(v) for k, v in service["environment"].items()}
        assert env["PAGERAG_STORE__URL"] == f"http://qdrant:{REST_PORT}"
        assert "QDRANT_API_KEY" in env
        # Every PAGERAG_* variable must name a real setting (unknown ones are errors).
        config = load_config(SERVER_YAML, environ={**env, "QDRANT_API_KEY": "k"})
        assert config.store.url == f"http://qdrant:{REST_PORT}"
        assert config.store.api_key is not None
    devices = services["pagerag-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]


def test_the_ray_service_is_a_head_writing_to_the_server(compose: dict[str, Any]) -> None:
    """docker compose --profile ray: a Ray head (the image with the ray extra) that jobs
    exec into; its writer actors reach the qdrant service by name."""
    ray_head = compose["services"]["ray"]
    assert ray_head["profiles"] == ["ray"]
    assert ray_head["build"]["args"] == {"EXTRA": "cpu", "RAY": "true"}
    assert ray_head["entrypoint"] == ["ray"]
    assert ray_head["command"][:3] == ["start", "--head", "--block"]
    assert ray_head["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert ray_head["environment"]["PAGERAG_STORE__URL"] == f"http://qdrant:{REST_PORT}"
    assert "ports" not in ray_head  # nothing published: jobs run inside it
    assert ray_head["shm_size"]  # the object store is in /dev/shm
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert "ARG RAY=false" in dockerfile and 'pip install ".[ray]"' in dockerfile


def test_the_api_service_serves_the_server_store_behind_a_key(compose: dict[str, Any]) -> None:
    api = compose["services"]["pagerag-api"]
    assert api["command"] == ["serve"]
    assert api["depends_on"]["qdrant"]["condition"] == "service_healthy"
    env = {k: str(v) for k, v in api["environment"].items()}
    assert env["PAGERAG_API_KEY"].startswith("${PAGERAG_API_KEY:?")
    config = load_config(SERVER_YAML, environ={**env, "QDRANT_API_KEY": "k", API_KEY_ENV: "s"})
    assert config.store.url == f"http://qdrant:{REST_PORT}"
    assert config.serve.host == "0.0.0.0" and config.serve.api_key is not None
    ports = _published(api)
    assert ports[config.serve.port][0] == "127.0.0.1"
    health = " ".join(api["healthcheck"]["test"])
    assert "/v1/status" in health and API_KEY_ENV in health
    assert f":{config.serve.port}/" in health
    assert [str(r) for r in config.serve.roots] == ["/data"]
    assert any(str(v).endswith(":/data:ro") for v in api["volumes"])


def test_env_example_defines_every_required_variable() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert required == {"QDRANT_API_KEY", API_KEY_ENV}
    assert required <= set(example)
    # Compose-only variables must not look like pagerag settings (PAGERAG_* are parsed);
    # PAGERAG_API_KEY is the one PAGERAG_ name pagerag reads as a key, not a setting path.
    assert not [name for name in example if name.startswith("PAGERAG_") and name != API_KEY_ENV]
    load_config(environ={name: value for name, value in example.items() if value})


def test_server_yaml_loads_and_keeps_secrets_out() -> None:
    config = load_config(SERVER_YAML, environ={})
    store = config.store
    assert store.prefer_grpc is True
    assert store.on_disk is True
    assert store.api_key is None  # never in the file
    assert store.write_consistency_factor is not None
    assert not re.search(r"^\s*api_key\s*:", SERVER_YAML.read_text(encoding="utf-8"), re.M)
    with_key = load_config(SERVER_YAML, environ={"QDRANT_API_KEY": "from-env"})
    assert with_key.store.api_key is not None
    assert with_key.store.api_key.get_secret_value() == "from-env"


def test_dockerfile_builds_one_embedder_extra_as_non_root() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "poppler-utils" in text
    assert 'ENTRYPOINT ["pagerag"]' in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    installs = re.findall(r'pip install "?\.\[(\w+),serve\]', text)
    assert sorted(installs) == ["cpu", "gpu"]  # one per case branch, never both, + serve
    assert "ARG EXTRA=cpu" in text


def test_dockerignore_keeps_the_input_folder_out_of_the_build_context() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    input_dir = example["INPUT_DIR"].removeprefix("./").rstrip("/")
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert f"{input_dir}/" in ignored or input_dir in ignored


def test_the_quick_start_replaces_every_placeholder_key(tmp_path: Path) -> None:
    """The `sed` of docs/deployment.md's quick start, run for real on a copy of .env.example."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (the quick start uses it for random keys)")
    docs = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    quick_start = docs.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = quick_start.replace("\\\n", " ").splitlines()
    commands = [line for line in lines if line.startswith(("cp ", "sed "))]
    assert commands, "the quick start no longer copies .env.example and fills in keys"
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env.example")
    subprocess.run(["bash", "-c", "\n".join(commands)], cwd=tmp_path, check=True, timeout=30)
    env = (tmp_path / ".env").read_text(encoding="utf-8")
    assert "replace-with" not in env
    keys = dict(line.split("=", 1) for line in env.splitlines() if re.match(r"\w+_API_KEY=", line))
    assert set(keys) == {"QDRANT_API_KEY", "VLLM_API_KEY", "PAGERAG_API_KEY"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in keys.values())
    assert len(set(keys.values())) == len(keys)


def test_dockerfile_has_a_torch_variant_pinned_to_pypis_builds() -> None:
    """EXTRA=torch: the CPU image plus pagerag[torch], torch/torchvision pinned with ===
    (a local '+cpu' torch can never be picked) and colpali-engine checked to import."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r'torch\) pip install "\.\[cpu,serve,torch\]" \$TORCH_PINS', text)
    assert 'ARG TORCH_PINS="torch===2.13.0 torchvision===0.28.0"' in text
    assert "import colpali_engine.models" in text
