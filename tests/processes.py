"""Helpers of the tests that run real processes: free ports, `tutor serve` in a subprocess,
waiting on a condition, and a voice socket expected to be refused."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.realtime_client import Conversation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`tutor serve` in a subprocess, its output in a log file."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "wb")
        tutor = os.path.join(os.path.dirname(sys.executable), "tutor")
        # cwd is the test's own directory, so no developer's .env is read.
        self.proc = subprocess.Popen([tutor, "serve", "--port", str(self.port),
                                      "--log-level", "info"],
                                     cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def ready(self, deadline: float) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
                try:
                    r = await client.get(f"http://{self.address}/healthz", timeout=1)
                    assert r.json() == {"status": "ok", "transcription": True, "chat": True}
                    return
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"{self.name} did not start:\n{self.log()}"
                    await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 5)
        self._log.close()


async def wait_for(condition, what: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """Polls an async condition until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def refused(url: str, headers: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Opens a voice socket expected to be refused: its one event and its close code."""
    async with websockets.connect(url, additional_headers=headers) as ws:
        conv = Conversation(ws)
        event = await conv.next()
        with pytest.raises(websockets.ConnectionClosed) as info:
            await conv.next()
    assert info.value.rcvd is not None
    return event, info.value.rcvd.code
