"""Helpers of the browser tests: Debian's Chromium under Playwright, a fake microphone built from
the speech corpus, and waiting on the page's `window.tutor` counters.

Chromium comes from Debian (`/usr/bin/chromium`, installed by `make test` when missing), never
from `playwright install`, which downloads builds from a CDN. Its fake microphone plays a WAV
file (`--use-file-for-fake-audio-capture`), from the start, each time a page opens the
microphone; `%noloop` plays it once, and silence is appended anyway so nothing repeats.
"""

from __future__ import annotations

import json
import os
import wave
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest
import soxr

from tests.conftest import CORPUS

CHROMIUM = Path(os.environ.get("TUTOR_CHROMIUM", "/usr/bin/chromium"))
WAV_RATE = 48000  # Chromium's fake capture device runs at 48 kHz


def browser_problem() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return (f"{CHROMIUM} not found: `make test` installs Debian's chromium "
                "(apt-get install chromium), or set TUTOR_CHROMIUM")
    return None


def require_browser() -> None:
    """Skip on a laptop without Chromium; fail under CI, where it must be there."""
    problem = browser_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {problem}", pytrace=False)
    pytest.skip(problem)


def speech_wav(path: Path, script: list[str | float]) -> Path:
    """A 48 kHz 16-bit mono WAV of corpus files (names) and silences (seconds), in order."""
    parts = []
    for piece in script:
        if isinstance(piece, str):
            with wave.open(str(CORPUS / piece)) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            parts.append(soxr.resample(pcm, 16000, WAV_RATE).astype("<i2"))
        else:
            parts.append(np.zeros(int(piece * WAV_RATE), dtype="<i2"))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(WAV_RATE)
        w.writeframes(np.concatenate(parts).tobytes())
    return path


@asynccontextmanager
async def chromium(microphone: Path | None = None) -> AsyncIterator[Any]:
    """A headless Chromium whose microphone plays `microphone` (or a beep without it), with
    audio allowed to start without a gesture and permission prompts answered yes."""
    from playwright.async_api import async_playwright

    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required"]
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}%noloop")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield browser
        finally:
            await browser.close()


class PageWatch:
    """What went wrong in the page: uncaught errors and console errors, for the test's end."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        where = (msg.location or {}).get("url", "")
        self.console.append(f"{msg.type}: {msg.text} ({where})")
        if msg.type == "error":
            self.errors.append(f"{msg.text} ({where})")

    async def until(self, expression: str, timeout_s: float = 10.0, what: str | None = None) -> Any:
        """Wait for a JavaScript expression (over `window.tutor`, `document`) to be truthy."""
        try:
            handle = await self.page.wait_for_function(f"() => ({expression})",
                                                       timeout=timeout_s * 1000)
        except Exception as exc:
            events = await self.page.evaluate("() => window.tutor ? window.tutor.events : []")
            raise AssertionError(f"{what or expression} did not happen within {timeout_s} s; "
                                 f"events so far: {events}; page errors: {self.errors}; "
                                 f"console: {self.console[-10:]}") from exc
        return await handle.json_value()

    async def value(self, expression: str) -> Any:
        return await self.page.evaluate(f"() => ({expression})")

    async def events(self, kind: str) -> list[dict[str, Any]]:
        return await self.page.evaluate(
            "(kind) => window.tutor.log.filter(e => e.type === kind)", kind)

    def assert_clean(self) -> None:
        assert not self.errors, "the page reported errors:\n" + "\n".join(self.errors)


def count(kind: str) -> str:
    """JavaScript: how many events of this type the page received."""
    return f"window.tutor.events.filter(t => t === {json.dumps(kind)}).length"
