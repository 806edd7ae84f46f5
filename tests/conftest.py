"""Test-wide guards: no test may open a connection to any host but the loopback interface."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

# DVC and dvclive would otherwise try to reach their servers from the subprocesses tests start.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DVC_NO_UPDATER", "1")
os.environ.setdefault("DVCLIVE_OPEN", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")

_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


def _check_loopback(address: object) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            if host == "localhost":
                return
        raise ConnectionRefusedError(f"tests may only connect to loopback addresses, not {host!r}")


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check_loopback(address)
    return _original_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check_loopback(address)
    return _original_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
