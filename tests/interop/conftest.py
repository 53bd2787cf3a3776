"""Shared harness of the interoperability tests: third-party Realtime clients, installed by
package name into their own environments on first use, run as they ship against the real app
(uvicorn, in the test's loop) in front of the loopback fake provider.

Each client is driven by a small script of ours (`drivers/`) that uses the client's public API
on its default settings (only the URL and the key are set), plays the scenario and prints one
JSON report as its last line of output:

    {"client": "...", "version": "...", "checks": {"<name>": {"ok": true, "detail": "..."}},
     "errors": [<every `error` event the client saw>], "events": ["<server event types seen>"]}

A client that cannot be installed skips, and fails under CI=true (see `missing`).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import wave
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import numpy as np
import pytest
import soxr

from tests.conftest import CORPUS, make_settings
from tests.fake_openai import Behaviour, FakeOpenAI

HERE = Path(__file__).resolve().parent
DRIVERS = HERE / "drivers"
RESULTS = HERE / "results"  # one JSON report per client, read by docs/protocol.md's table
CI = os.environ.get("CI") == "true"
INSTALL_TIMEOUT_S = 900


def missing(what: str) -> None:
    """A client or tool the test needs is not there: skip, or fail under CI=true."""
    if CI:
        pytest.fail(f"{what} (required under CI=true)")
    pytest.skip(what)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One installer at a time per environment, across pytest-xdist workers."""
    HERE.joinpath(".locks").mkdir(exist_ok=True)
    with open(HERE / ".locks" / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _provision(folder: Path, specs: list[str], install: Callable[[], None]) -> None:
    """Run `install` into `folder` (emptied first) unless it already holds exactly `specs`:
    one installer at a time, across pytest-xdist workers; a failed install skips the test
    (fails under CI=true) with the installer's last output."""
    stamp = folder / (".installed-" + hashlib.sha256("\n".join(specs).encode()).hexdigest()[:12])
    with _locked(folder.name):
        if stamp.exists():
            return
        shutil.rmtree(folder, ignore_errors=True)
        try:
            install()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            output = getattr(exc, "stderr", b"") or b""
            missing(f"could not install {specs} into {folder}: {exc}\n"
                    f"{output.decode(errors='replace')[-3000:]}")
        stamp.touch()


def python_env(name: str, requirements: list[str]) -> Path:
    """The python of `tests/interop/.venv-<name>`, a venv holding `requirements` (pip specs),
    created on first use and again when the list changes. Returns its interpreter."""
    venv = HERE / f".venv-{name}"
    python = venv / "bin" / "python"

    def install() -> None:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", *requirements], check=True,
                       capture_output=True, timeout=INSTALL_TIMEOUT_S)

    _provision(venv, requirements, install)
    return python


NODE, NPM = shutil.which("node"), shutil.which("npm")


def node_env(name: str, packages: list[str]) -> Path:
    """`tests/interop/.node-<name>`, a folder whose node_modules hold `packages` (npm specs),
    installed on first use and again when the list changes. Returns the folder (run scripts
    with it as their working directory; `NODE` is the interpreter)."""
    if NODE is None or NPM is None:
        missing("node and npm are needed for the JavaScript clients")
    folder = HERE / f".node-{name}"

    def install() -> None:
        folder.mkdir()
        (folder / "package.json").write_text(json.dumps(
            {"name": f"interop-{name}", "private": True, "type": "module"}))
        subprocess.run([str(NPM), "install", "--no-audit", "--no-fund", "--loglevel=error",
                        *packages], cwd=folder, check=True, capture_output=True,
                       timeout=INSTALL_TIMEOUT_S)

    _provision(folder, packages, install)
    return folder


def speech_pcm(name: str, rate: int, tmp: Path) -> Path:
    """A corpus WAV as raw PCM16 mono at `rate` (what Realtime clients send), with 1.5 s of
    silence after it so the server's VAD ends the turn. Written under `tmp`."""
    with wave.open(str(CORPUS / name)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        source_rate = w.getframerate()
    if rate != source_rate:
        pcm = soxr.resample(pcm.astype(np.float32), source_rate, rate).clip(-32768, 32767)
        pcm = pcm.astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(int(rate * 1.5), dtype=np.int16)])
    path = tmp / f"{Path(name).stem}-{rate}.pcm"
    path.write_bytes(pcm.tobytes())
    return path


@dataclass
class Stack:
    """A live server and its fake provider, for one client's run."""

    fake: FakeOpenAI
    address: str  # 127.0.0.1:port
    app: Any  # the server's Starlette app (app.state.services.metrics counts the events it sent)
    cert: Path | None = None  # served over TLS with this certificate (clients must trust it)

    def errors_sent(self) -> dict[str, float]:
        """`error` events the server sent in this run, by code (from its own metrics)."""
        counts: dict[str, float] = {}
        for metric in self.app.state.services.metrics.errors.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    code = sample.labels.get("code", "?")
                    counts[code] = counts.get(code, 0) + sample.value
        return counts

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.cert else 'ws'}://{self.address}/v1/realtime"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.cert else 'http'}://{self.address}/v1"

    async def run(self, argv: list[str], *, env: dict[str, str] | None = None,
                  cwd: Path | None = None, timeout: float = 180.0) -> dict[str, Any]:
        """Run a driver; return its report (the last line of its output, JSON). The whole
        output is in the assertion message when it fails or prints no report."""
        full_env = {**os.environ, "TUTOR_URL": self.ws_url, "TUTOR_HTTP_URL": self.http_url,
                    "OPENAI_API_KEY": "sk-interop-any-key", **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=full_env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
            raise AssertionError(f"{argv[-1]} timed out after {timeout} s:\n"
                                 f"{out.decode(errors='replace')[-6000:]}")
        text = out.decode(errors="replace")
        lines = [line for line in text.strip().splitlines() if line.startswith("{")]
        assert lines, f"{argv} printed no report (exit {proc.returncode}):\n{text[-6000:]}"
        try:
            report = json.loads(lines[-1])
        except ValueError:
            raise AssertionError(f"{argv}: the last line is not JSON:\n{text[-6000:]}")
        report["_output"] = text[-6000:]
        return report


def check_report(report: dict[str, Any], required: list[str], stack: Stack) -> None:
    """Every required check passed, the client saw no `error` event and the server sent none;
    the report is kept in `results/` for the compatibility table (docs/protocol.md)."""
    RESULTS.mkdir(exist_ok=True)
    saved = {k: v for k, v in report.items() if k != "_output"}
    (RESULTS / f"{report['client']}.json").write_text(json.dumps(saved, indent=1) + "\n")
    checks = report.get("checks", {})
    failed = {name: checks.get(name, {"ok": False, "detail": "not run"}) for name in required
              if not checks.get(name, {}).get("ok")}
    sent = stack.errors_sent()
    assert not failed and not report.get("errors") and not sent, (
        f"{report['client']} {report.get('version')}: failed {json.dumps(failed, indent=1)}\n"
        f"errors: {json.dumps(report.get('errors'), indent=1)}\nserver sent errors: {sent}\n"
        f"output:\n{report['_output']}")


# The clients tested (the `client` of each driver's report): each must be in docs/protocol.md §10.
CLIENTS = ["openai-python", "openai-node", "openai-agents-js", "pipecat-openai-realtime",
           "livekit-agents"]

# The scenario every client plays (a driver may add client-specific checks).
REQUIRED_CHECKS = ["session_setup", "typed_turn", "spoken_turn", "spoken_answer_audio",
                   "barge_in", "function_call"]

# The fake model calls a tool when the student's last message names it, with arguments made
# from the tool's schema; after the tool's output it answers quoting it.
TOOL_NAME = "lookup_grade"
TOOL_SCHEMA = {"type": "object", "properties": {"student": {"type": "string"}},
               "required": ["student"], "additionalProperties": False}
TOOL_PROMPT = f"Please use {TOOL_NAME} to find Ada's grade."
TOOL_OUTPUT = '{"grade": "A-"}'
TOOL_JSON = json.dumps({"name": TOOL_NAME, "schema": TOOL_SCHEMA, "prompt": TOOL_PROMPT,
                        "output": TOOL_OUTPUT})  # INTEROP_TOOL, as the drivers read it


def tool_output_reached_model(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """The `tool` messages the model got that carry TOOL_OUTPUT (empty: it never got it)."""
    return [message for chat in fake.chats for message in chat.get("messages", [])
            if message.get("role") == "tool" and TOOL_OUTPUT in str(message.get("content"))]


def behaviour() -> Behaviour:
    """The fake provider as the interop runs use it: quick, and long enough spoken answers
    (60 ms of audio per character) that a barge-in lands while the tutor speaks."""
    return Behaviour(stt_latency=0.05, ttft=0.05, token_delay=0.005,
                     reply=("Good question! Let us work it out together, one step at a time. "
                            "First, think about what the question is really asking you. "
                            "Then try a small example, and tell me what you notice."))


@asynccontextmanager
async def serving(start_server: Any, **settings: Any) -> AsyncIterator[Stack]:
    """The fake provider and the app on the server's shipped defaults (spoken answers when the
    plan allows: `output_modalities` "auto", which tests/conftest.py turns off for the rest of
    the suite), the guest on the plan with every feature; `settings` override."""
    fake = FakeOpenAI(behaviour())
    await fake.start()
    try:
        address = await start_server(make_settings(fake, guest_tier="unlimited",
                                                   output_modalities="auto", **settings))
        yield Stack(fake, address, start_server.apps[-1])
    finally:
        await fake.stop()


@pytest.fixture
async def stack(start_server: Any) -> AsyncIterator[Stack]:
    async with serving(start_server) as running:
        yield running
