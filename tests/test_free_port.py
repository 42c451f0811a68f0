"""free_port: loopback ports for real-process tests (the pytest plugin's servers, and
integration/ through integration.processes), outside the range the kernel hands out as
source ports of outgoing connections."""

from __future__ import annotations

import socket

from integration import processes as integration_processes
from keyspan.services import testing as processes


def test_ports_are_bindable_distinct_and_below_the_ephemeral_range() -> None:
    ports = [processes.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(1024 <= p < processes._ephemeral_low() for p in ports)
    for port in ports[:3]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_integration_uses_the_same_ports() -> None:
    assert integration_processes.free_port is processes.free_port


def test_a_port_in_use_is_not_handed_out(monkeypatch) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        free = spare.getsockname()[1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        monkeypatch.setattr(processes.random, "sample", lambda candidates, k: [busy, free])
        monkeypatch.setattr(processes, "_handed_out", set())
        assert processes.free_port() == free
