"""The test-suite guards themselves: a broken guard would let tests pass by luck."""

from __future__ import annotations

import os
import socket

import pytest

from tests.conftest import NetworkBlockedError


def test_network_outside_loopback_is_refused() -> None:
    with pytest.raises(NetworkBlockedError):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


def test_loopback_stays_open_for_local_test_servers() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(server.getsockname(), timeout=1)
        client.close()
    finally:
        server.close()


def test_model_hub_is_offline() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert not any(name.startswith("PAGERAG_") for name in os.environ)
