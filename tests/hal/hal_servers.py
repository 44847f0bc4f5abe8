"""Real probe servers in subprocesses for the HAL tests (imported by name: importlib mode)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_probe_server(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """``hadmc probe serve --port PORT ARGS...`` on loopback, once it answers /health."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hadmc.cli_probe", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"probe server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
