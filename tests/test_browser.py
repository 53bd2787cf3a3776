"""The browser client (`web/`) in a real Chromium against the real app, end to end.

Debian's Chromium runs headless under Playwright with a fake microphone playing recordings of
the speech corpus (tests/browser_support.py), against the app under uvicorn with the loopback
provider (tests/fake_openai.py) as the dev guest: sign-in, the course list, a spoken question
captioned and answered with citations, the student interrupting the answer, spoken answers
played through the player worklet, push-to-talk from the keyboard, a dropped connection that
reconnects and resumes the conversation, running out of minutes and the upgrade, and the layout
at phone width; a teacher's class report (a table and a chart). Screenshots go to each test's tmp_path; with TUTOR_README_SCREENSHOT=1, one at
1000×700 also to docs/screenshot.png (the README's), so a test run leaves the checkout as it was.

The test of the routes the client uses (courses, passages, the static files) needs no browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from sqlalchemy import select

from store import queries
from store.models import Content, Interaction, Quiz, QuizAnswer, UsageEntry, now
from study.mastery import section_of
from tests.browser_support import PageWatch, chromium, count, require_browser, speech_wav
from tests.conftest import ROOT, make_settings
from tests.fake_stripe import FakeStripe

Q_FRACTIONS = "Why do we flip the second fraction when we divide?"
Q_PHOTOSYNTHESIS = "Can you explain how photosynthesis works?"
Q_WAR = "When did the Second World War end?"
SCREENSHOT = ROOT / "docs" / "screenshot.png"


@pytest.fixture
def browser_ready() -> None:
    require_browser()


async def open_page(browser, address: str, *, width: int = 1000, height: int = 700):  # type: ignore[no-untyped-def]
    page = await browser.new_page(viewport={"width": width, "height": height})
    watch = PageWatch(page)
    await page.goto(f"http://{address}/")
    await watch.until("document.body.dataset.ready === 'true' || "
                      "!document.getElementById('signed-out').hidden", what="the page to load")
    return page, watch


async def start_talking(page, watch: PageWatch) -> None:  # type: ignore[no-untyped-def]
    await page.get_by_role("button", name="Start talking").click()
    await watch.until(f"{count('session.updated')} >= 1", what="the session to be configured")


async def no_overflow_at_phone_width(page, watch: PageWatch, shot: Path) -> None:  # type: ignore[no-untyped-def]
    await page.set_viewport_size({"width": 360, "height": 740})
    await asyncio.sleep(0.1)
    width = await watch.value("document.documentElement.scrollWidth")
    await page.screenshot(path=str(shot), full_page=True)
    assert width <= 360, f"the page is {width} px wide at a 360 px viewport"


# -- the routes the client uses (no browser) ----------------------------------------------------
async def test_courses_passages_and_static_files(fake, start_server) -> None:
    address = await start_server(make_settings(fake, load_sample_course=True))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        courses = (await http.get("/api/rag/courses")).json()["items"]
        assert courses == [{"name": "sample", "documents": 4, "chunks": courses[0]["chunks"]}]
        assert courses[0]["chunks"] > 4
        hit = (await http.post("/api/rag/search", json={"query": "photosynthesis chloroplasts",
                                                         "course": "sample"})).json()["items"][0]
        passage = (await http.get(f"/api/rag/passages/{hit['chunk_id']}")).json()
        assert passage == {"chunk_id": hit["chunk_id"], "course": "sample",
                           "document": hit["document"], "heading": hit["heading"],
                           "text": hit["text"]}
        assert (await http.get(f"/api/rag/passages/{hit['chunk_id'][1:]}")).json() == passage
        for missing in ("c999999", "cabc", "x", "c" + "9" * 30):
            r = await http.get(f"/api/rag/passages/{missing}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", missing

        index = await http.get("/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        assert index.headers["cache-control"] == "no-cache"
        # the page names the client's files by content (tests/test_static.py tests the rest)
        assert re.search(r'src="/web/app\.[0-9a-f]{10}\.js"', index.text)
        for name in ("app.js", "audio.js", "connection.js", "mic-worklet.js",
                     "player-worklet.js", "style.css"):
            r = await http.get(f"/web/{name}")
            assert r.status_code == 200 and r.headers["cache-control"] == "no-cache", name
        assert (await http.get("/web/app.js")).headers["content-type"].startswith(
            ("text/javascript", "application/javascript"))
        assert (await http.get("/web/nothing.js")).status_code == 404
        assert (await http.get("/healthz")).json()["status"] == "ok"  # API routes still win
        assert (await http.get("/api/auth/me")).json()["name"] == "Local guest"

    # signed out: the passages and courses need a user like the rest of /api/rag
    address = await start_server(make_settings(fake, load_sample_course=True, dev_guest=False))
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        assert (await http.get("/api/rag/courses")).status_code == 401
        assert (await http.get("/api/rag/passages/c1")).status_code == 401
        assert (await http.get("/")).status_code == 200  # the page itself is public


# -- in the browser ------------------------------------------------------------------------------
async def test_signed_out_offers_google_sign_in(browser_ready, fake, start_server, tmp_path) -> None:
    address = await start_server(make_settings(fake, dev_guest=False))
    async with chromium() as browser:
        page, watch = await open_page(browser, address)
        button = page.get_by_role("link", name="Sign in with Google")
        assert await button.is_visible()
        assert await button.get_attribute("href") == "/api/auth/google/login"
        assert not await page.locator("#tutor").is_visible()
        await page.screenshot(path=str(tmp_path / "signed-out.png"))
        await no_overflow_at_phone_width(page, watch, tmp_path / "signed-out-360.png")
        watch.errors = [e for e in watch.errors if "/api/auth/me" not in e]  # it said 401
        watch.assert_clean()


async def test_a_server_without_a_provider_says_so_before_the_first_turn(browser_ready,
                                                                          start_server) -> None:
    """`make run` without OPENAI_API_KEY: the page says what to set as soon as it loads, instead
    of "Ready", and in the server's own words (`provider_not_configured`) once a session opens."""
    address = await start_server(make_settings(None))
    problem = start_server.apps[-1].state.services.providers.problem
    async with chromium() as browser:
        page, watch = await open_page(browser, address)
        notice = page.locator("#notice")
        assert await notice.is_visible()
        assert "OPENAI_API_KEY" in await notice.inner_text()
        label = await page.locator("#state-label").inner_text()
        assert label != "Ready" and "no AI provider" in label

        await page.locator("#typed-input").fill(Q_WAR)
        await page.locator("#typed-input").press("Enter")
        await watch.until(f"{count('session.created')} >= 1 && {count('error')} >= 1",
                          what="the session's provider_not_configured error")
        [first, *_] = await watch.events("error")
        assert first["error"]["code"] == "provider_not_configured"
        await watch.until("document.getElementById('notice-text').textContent === "
                          f"{json.dumps(problem)}", what="the server's own words in the notice")
        assert await notice.is_visible()
        assert "no AI provider" in await page.locator("#state-label").inner_text()
        watch.assert_clean()


async def test_spoken_question_answered_aloud_and_interrupted(browser_ready, fake, start_server,
                                                             tmp_path) -> None:
    """A spoken question is captioned and answered, in text with its sources and aloud through
    the player worklet; the student, speaking again, interrupts the answer, which stops at once;
    the second question is answered in full and the client settles back to listening."""
    fake.behaviour.transcripts = [Q_FRACTIONS, Q_PHOTOSYNTHESIS]
    fake.behaviour.ttft = 0.1
    fake.behaviour.token_delay = 0.2  # ~3 s per answer: the second question arrives during it
    address = await start_server(make_settings(fake, load_sample_course=True, guest_tier="pro"))
    mic = speech_wav(tmp_path / "mic.wav", [0.5, "q_fractions.wav", "q_photosynthesis.wav", 30.0])
    async with chromium(mic) as browser:
        page, watch = await open_page(browser, address)
        assert await page.locator("#course").input_value() == "sample"
        assert await page.locator("#minutes").inner_text() == "300 min left"  # the pro plan's
        await start_talking(page, watch)
        update = (await watch.events("session.updated"))[-1]["session"]
        assert update["audio"]["input"]["format"]["rate"] == 16000
        assert update["output_modalities"] == ["audio"]
        assert await watch.value("window.tutor.state") == "listening"

        # the first question: captioned, then the answer streams in, and is heard
        await watch.until(f"{count('conversation.item.input_audio_transcription.completed')} >= 1",
                          timeout_s=12, what="the first transcript")
        await page.get_by_text(Q_FRACTIONS).wait_for()
        await watch.until("document.querySelector('.msg.tutor .text').textContent.length > 0",
                          what="the first answer's first words")
        first = (await watch.events("response.created"))[0]["response"]["id"]
        try:
            await watch.until("window.tutor.receivedAudioBytes > 0", timeout_s=3,
                              what="spoken audio")
        except AssertionError as exc:
            raise AssertionError("the server sent no binary audio frame for the answer: spoken "
                                 "answers (TTS, ?audio=binary) are missing on the server") from exc
        await watch.until("window.tutor.playedSamples > 2400", what="the answer to be heard")
        assert await watch.value("window.tutor.state") == "speaking"
        assert await watch.value(count("response.output_audio_transcript.delta")) > 0

        # the student speaks again during the answer: it is cut, and playback stops at once
        await watch.until(f"{count('input_audio_buffer.speech_started')} >= 2", timeout_s=8,
                          what="the second question to start")
        await watch.until("window.tutor.flushAcks >= 1 && !window.tutor.playing", timeout_s=1,
                          what="playback to stop")
        stopped_at = await watch.value("window.tutor.playedSamples")
        done = await watch.until(
            f"window.tutor.log.find(e => e.type === 'response.done' && e.response.id === '{first}')",
            what="the first answer to end")
        assert done["response"]["status"] == "cancelled", done["response"]
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        cut = page.locator(f".msg.tutor[data-response='{first}']")
        assert "cancelled" in (await cut.get_attribute("class") or "")
        partial = (await cut.locator(".text").inner_text()).strip()
        full = f"Good question! Let us work it out. You said: {Q_FRACTIONS}"
        assert partial and full.startswith(partial) and partial != full, partial
        assert await watch.value("window.tutor.state") in ("listening", "thinking")
        await asyncio.sleep(0.4)
        if await watch.value(count("response.created")) == 1:  # the next answer not started yet
            assert await watch.value("window.tutor.playedSamples") == stopped_at

        # the second question is answered in full, aloud, with its sources, then it settles
        fake.behaviour.token_delay = 0.02  # the rest quickly
        fake.behaviour.tts_ms_per_char = 25
        await page.get_by_text(Q_PHOTOSYNTHESIS, exact=True).wait_for(timeout=10000)
        await watch.until("window.tutor.log.filter(e => e.type === 'response.done' && "
                          "e.response.status === 'completed').length >= 1", timeout_s=10,
                          what="the second answer to complete")
        await page.get_by_text(f"You said: {Q_PHOTOSYNTHESIS}").wait_for()
        await watch.until(f"window.tutor.playedSamples > {stopped_at + 24000}", timeout_s=10,
                          what="the second answer to be heard")
        await watch.until("window.tutor.state === 'listening'", timeout_s=15,
                          what="back to listening once the answer has been played")
        assert fake.speeches and all(s["voice"] == "alloy" for s in fake.speeches)
        citations = (await watch.events("tutor.citations"))[-1]["citations"]
        assert citations and citations[0]["course"] == "sample"
        links = page.locator(".msg.tutor").last.locator(".cites a")
        assert await links.count() == len(citations)
        assert await links.first.get_attribute("href") == \
            f"/api/rag/passages/{citations[0]['chunk_id']}"

        # captions are announced politely; focus is visible
        assert await page.locator("#transcript").get_attribute("aria-live") == "polite"
        await page.get_by_label("Type a question").focus()
        outline = await watch.value("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"

        await page.screenshot(path=str(tmp_path / "conversation.png"), full_page=True)
        # the passage behind a citation, in the side panel
        await links.first.click()
        await page.locator("#passage").get_by_text(citations[0]["document"]).wait_for()
        assert await page.locator("#passage-text").inner_text() != ""
        if os.environ.get("TUTOR_README_SCREENSHOT") == "1":
            await page.screenshot(path=str(SCREENSHOT))  # the README's, at 1000×700
        await page.screenshot(path=str(tmp_path / "passage.png"))
        await no_overflow_at_phone_width(page, watch, tmp_path / "conversation-360.png")
        watch.assert_clean()
    asked = [c["messages"][-1]["content"] for c in fake.chats]
    assert any(Q_FRACTIONS in t for t in asked) and any(Q_PHOTOSYNTHESIS in t for t in asked)


async def test_push_to_talk_from_the_keyboard(browser_ready, fake, start_server, tmp_path) -> None:
    """Push-to-talk: turn detection off, audio only while Space is held, commit + answer on
    release; Space does not press the focused toggle."""
    fake.behaviour.transcripts = [Q_WAR]
    fake.behaviour.tts_ms_per_char = 10  # short spoken answers: this test is about the input
    address = await start_server(make_settings(fake))
    mic = speech_wav(tmp_path / "mic.wav", [0.3, "q_war.wav", 30.0])
    async with chromium(mic) as browser:
        page, watch = await open_page(browser, address)
        await start_talking(page, watch)
        toggle = page.get_by_role("button", name="Push to talk")
        await toggle.focus()
        await page.keyboard.press("Enter")  # a toggle button: Enter (or a click) switches it
        assert await toggle.get_attribute("aria-pressed") == "true"
        update = await watch.until(
            "window.tutor.log.filter(e => e.type === 'session.updated')"
            ".find(e => e.session.audio.input.turn_detection === null)",
            what="turn detection to be switched off")
        assert update
        assert await page.get_by_role("button", name="Hold to talk (Space)").is_visible()
        before = await watch.value("window.tutor.sentFrames")
        await asyncio.sleep(0.4)
        assert await watch.value("window.tutor.sentFrames") == before, "audio sent while not held"

        await page.keyboard.down("Space")
        await asyncio.sleep(1.5)
        held = await watch.value("window.tutor.sentFrames") - before
        await page.keyboard.up("Space")
        assert 40 <= held <= 100, held  # ~75 frames of 20 ms
        assert await toggle.get_attribute("aria-pressed") == "true"  # Space did not toggle it
        await watch.until(f"{count('input_audio_buffer.committed')} == 1", what="the commit")
        await page.get_by_text(Q_WAR, exact=True).wait_for()
        await watch.until(f"{count('response.done')} == 1", what="the answer")
        await page.get_by_text(f"You said: {Q_WAR}").wait_for()
        after = await watch.value("window.tutor.sentFrames")
        await asyncio.sleep(0.3)
        assert await watch.value("window.tutor.sentFrames") == after
        assert await watch.value(count("input_audio_buffer.speech_started")) == 0
        assert fake.transcriptions[0]["seconds"] == pytest.approx(held * 0.02, abs=0.1)
        await page.screenshot(path=str(tmp_path / "push-to-talk.png"))
        watch.assert_clean()


async def test_out_of_minutes_shows_upgrade_and_does_not_reconnect(browser_ready, fake,
                                                                   start_server, tmp_path) -> None:
    tiers = {"default": "tiny", "tiers": {
        "tiny": {"voice_minutes_per_day": 0.1, "max_concurrent_sessions": 1},
        "pro": {"rank": 10, "voice_minutes_per_day": 300, "max_concurrent_sessions": 2}}}
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps(tiers))
    fake.behaviour.transcripts = [Q_WAR]
    async with FakeStripe(api_key="sk_test_123") as stripe:
        address = await start_server(make_settings(
            fake, tiers_file=path, guest_tier="tiny", quota_step_ms=500,
            stripe_api_key="sk_test_123", stripe_webhook_secret="whsec_test",
            stripe_api_base=stripe.base_url, stripe_prices={"pro": "price_pro"}))
        mic = speech_wav(tmp_path / "mic.wav", [0.3, "q_war.wav", 30.0])
        async with chromium(mic) as browser:
            page = await browser.new_page(viewport={"width": 1000, "height": 700})
            # without the usage report the client does not know this plan has no spoken answers
            await page.route("**/api/billing/usage", lambda route: route.fulfill(status=503))
            watch = PageWatch(page)
            await page.goto(f"http://{address}/")
            await watch.until("document.body.dataset.ready === 'true'")
            upgrade = page.locator("#upgrade")
            assert await upgrade.is_visible()  # billing is configured: pro is on sale
            await start_talking(page, watch)
            await watch.until("!document.getElementById('minutes').hidden")
            assert await page.locator("#minutes").inner_text() == "6 s left"
            # it asked for spoken answers, was refused, and went on in text
            refusal = (await watch.events("error"))[0]["error"]
            assert refusal["code"] == "feature_not_available", refusal
            assert (await watch.events("session.updated"))[-1]["session"]["output_modalities"] \
                == ["text"]
            assert await page.get_by_role("button", name="Spoken answers").is_disabled()
            await page.get_by_text(Q_WAR, exact=True).wait_for(timeout=10000)
            await page.get_by_text(f"You said: {Q_WAR}").wait_for()
            assert await watch.value(count("response.output_text.delta")) > 0
            assert await watch.value("window.tutor.receivedAudioBytes") == 0
            await watch.until("window.tutor.state === 'ended'", timeout_s=10,
                              what="the session to end for its plan")
            error = (await watch.events("error"))[-1]["error"]
            assert error["code"] == "quota_exceeded"
            assert await watch.value("window.tutor.closes") == [4402]
            assert await page.locator("#minutes").inner_text() == "0 s left"
            notice = page.locator("#notice")
            assert "minutes are used up" in await notice.inner_text()
            assert await page.locator("#notice-upgrade").is_visible()
            await asyncio.sleep(1.5)
            assert await watch.value("window.tutor.connects") == 1  # no reconnection after 4402
            await page.screenshot(path=str(tmp_path / "out-of-minutes.png"))

            await page.route("https://checkout.stripe.com/**", lambda route: route.fulfill(
                status=200, content_type="text/html", body="<h1>Stripe Checkout</h1>"))
            await page.locator("#notice-upgrade").click()
            await page.wait_for_url("https://checkout.stripe.com/**")
            await page.get_by_text("Stripe Checkout").wait_for()
            watch.errors = [e for e in watch.errors if "/api/billing/usage" not in e]
            watch.assert_clean()
        [session] = stripe.checkout_sessions.values()
        assert session["mode"] == "subscription"
        assert stripe.session_line_items[session["id"]][0]["price"] == "price_pro"


async def test_dropped_connection_reconnects_and_resumes(browser_ready, fake, start_server,
                                                         tmp_path) -> None:
    """The socket drops (closed with 4000): the client reconnects by itself with a new ticket
    and the resume token, the transcript stays on screen, and the next question's prompt still
    holds the first one. Needs the server's session resume (tutor.session.resumable/resumed)."""
    fake.behaviour.tts_ms_per_char = 10  # short spoken answers: this test is about the socket
    address = await start_server(make_settings(fake, load_sample_course=True))
    mic = speech_wav(tmp_path / "mic.wav", [40.0])
    first, second = "What is a fraction?", "And how do I divide two of them?"
    async with chromium(mic) as browser:
        page, watch = await open_page(browser, address)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await start_talking(page, watch)
        await page.get_by_label("Type a question").fill(first)
        await page.keyboard.press("Enter")
        await watch.until(f"{count('response.done')} == 1", what="the first answer")
        await page.get_by_text(f"You said: {first}").wait_for()

        await page.evaluate("() => window.tutor.ws.close(4000, 'test: connection dropped')")
        await watch.until("window.tutor.states.includes('reconnecting')",
                          what="the drop to be noticed")
        await watch.until(f"window.tutor.connects === 2 && {count('session.created')} === 2",
                          what="the reconnection")
        await watch.until(f"{count('session.updated')} >= 2")
        assert await watch.value("window.tutor.closes") == [4000]
        await page.get_by_text(first, exact=True).wait_for()  # the transcript is kept
        await page.get_by_text(f"You said: {first}").wait_for()
        frames = await watch.value("window.tutor.sentFrames")
        await watch.until(f"window.tutor.sentFrames > {frames + 10}",
                          what="the microphone to stream on the new socket")
        await page.get_by_label("Type a question").fill(second)
        await page.keyboard.press("Enter")
        await watch.until(f"{count('response.done')} == 2", what="the second answer")
        await page.screenshot(path=str(tmp_path / "reconnected.png"))
        # Stop ends it for good: closed with 1000, and no reconnection
        await page.get_by_role("button", name="Stop").click()
        await watch.until("window.tutor.state === 'idle'", what="the session to end")
        await asyncio.sleep(0.8)
        assert await watch.value("window.tutor.closes") == [4000, 1000]
        assert await watch.value("window.tutor.connects") == 2
        assert await page.get_by_role("button", name="Start talking").is_visible()
        watch.assert_clean()

        # -- from here on, the server's session resume -----------------------------------------
        resumable = await watch.events("tutor.session.resumable")
        assert resumable, "the server sent no tutor.session.resumable"
        assert len(sockets) == 2 and "resume=" not in sockets[0]
        assert any(f"resume={r['resume_token']}" in sockets[1] for r in resumable)
        assert all("audio=binary" in url and "ticket=" in url for url in sockets)
        assert await watch.value(count("tutor.session.resumed")) == 1, \
            "the server did not resume the conversation (no tutor.session.resumed)"
        assert "messages" in (await watch.events("tutor.session.resumed"))[0]
        await page.get_by_text("Reconnected: the conversation goes on").wait_for()
    prompt = json.dumps(fake.chats[-1]["messages"])
    assert first in prompt and second in prompt, "the resumed session forgot the first question"


MIC_WORKLET_CHECK = """async () => {
  // 1 s of a 1 kHz tone (kept) plus a 10 kHz tone (above 8 kHz: it must not alias to 6 kHz),
  // rendered at 44.1 kHz through the microphone worklet
  const rate = 44100, ctx = new OfflineAudioContext(1, rate, rate);
  await ctx.audioWorklet.addModule('/web/mic-worklet.js');
  const frames = [];
  const node = new AudioWorkletNode(ctx, 'mic-capture', {numberOfInputs: 1, numberOfOutputs: 0});
  node.port.onmessage = (e) => frames.push(e.data);
  for (const [freq, gain] of [[1000, 0.4], [10000, 0.4]]) {
    const osc = new OscillatorNode(ctx, {frequency: freq});
    const g = new GainNode(ctx, {gain});
    osc.connect(g).connect(node);
    osc.start();
  }
  await ctx.startRendering();
  await new Promise((r) => setTimeout(r, 200));  // the last messages from the worklet thread
  const sizes = [...new Set(frames.map((f) => f.byteLength))];
  const pcm = new Int16Array(frames.length * 320);
  frames.forEach((f, i) => pcm.set(new Int16Array(f), i * 320));
  const tone = (freq) => {  // amplitude of one frequency (Goertzel) over the steady part
    const x = pcm.subarray(1600, 1600 + 12800), w = 2 * Math.PI * freq / 16000;
    let re = 0, im = 0;
    for (let n = 0; n < x.length; n++) { re += x[n] * Math.cos(w * n); im -= x[n] * Math.sin(w * n); }
    return 2 * Math.hypot(re, im) / x.length / 32768;
  };
  return {frames: frames.length, sizes, kept: tone(1000), aliased: tone(6000)};
}"""

PLAYER_WORKLET_CHECK = """async () => {
  // a 440 Hz tone at 24 kHz pushed in 20 ms chunks, then a flush, played at 48 kHz
  const rate = 48000, ctx = new OfflineAudioContext(1, rate, rate);
  await ctx.audioWorklet.addModule('/web/player-worklet.js');
  const node = new AudioWorkletNode(ctx, 'pcm-player', {numberOfInputs: 0, numberOfOutputs: 1,
    outputChannelCount: [1], processorOptions: {inputRate: 24000, prebufferMs: 100}});
  node.connect(ctx.destination);
  const statuses = [];
  node.port.onmessage = (e) => statuses.push(e.data);
  let n = 0;
  const push = (ms) => {
    const chunk = new Int16Array(24 * ms);
    for (let i = 0; i < chunk.length; i++, n++) chunk[i] = Math.round(8000 * Math.sin(2 * Math.PI * 440 * n / 24000));
    node.port.postMessage({type: 'push', buffer: chunk.buffer}, [chunk.buffer]);
  };
  const at = (t, f) => ctx.suspend(t).then(() => { f(); ctx.resume(); });
  // 60 ms at 0.1 s (under the jitter buffer: waits), 60 ms more at 0.2 s (starts), then 20 ms
  // every 20 ms until a flush at 0.6 s, with more pushed at 0.7 s that must wait again
  at(0.1, () => push(60));
  at(0.2, () => push(60));
  for (let t = 0.22; t < 0.6; t += 0.02) at(Math.round(t * 1000) / 1000, () => push(20));
  at(0.6, () => node.port.postMessage({type: 'flush'}));
  at(0.7, () => push(40));
  const out = (await ctx.startRendering()).getChannelData(0);
  const first = out.findIndex((v) => Math.abs(v) > 1e-4);
  let jump = 0;  // the largest sample-to-sample step while playing: a click would stand out
  for (let i = first + 1; i < 0.58 * rate; i++) jump = Math.max(jump, Math.abs(out[i] - out[i - 1]));
  let lastSound = 0;
  for (let i = 0; i < out.length; i++) if (Math.abs(out[i]) > 1e-4) lastSound = i;
  await new Promise((r) => setTimeout(r, 100));
  return {start: first / rate, jump, lastSound: lastSound / rate,
          played: statuses.length ? statuses[statuses.length - 1].played : 0,
          flushed: statuses.some((s) => s.flushed)};
}"""


async def test_worklets_resample_and_play_smoothly(browser_ready, fake, start_server) -> None:
    """The two worklets on their own, rendered offline: the microphone's goes to 16 kHz PCM16 in
    640-byte frames without aliasing; the player waits for its jitter buffer, plays across
    chunks without clicks, and stops dead on a flush."""
    address = await start_server(make_settings(fake))
    async with chromium() as browser:
        page, watch = await open_page(browser, address)
        mic = await page.evaluate(MIC_WORKLET_CHECK)
        assert mic["sizes"] == [640] and 49 <= mic["frames"] <= 50, mic
        assert 0.36 < mic["kept"] < 0.44, mic  # the 1 kHz tone passes at its level
        assert mic["aliased"] < 0.004, mic  # the 10 kHz one is gone (> 40 dB down)
        player = await page.evaluate(PLAYER_WORKLET_CHECK)
        # starts once 100 ms are queued (at 0.2 s, not 0.1 s), within a render quantum or two
        assert 0.2 <= player["start"] < 0.21, player
        # a 440 Hz tone of amplitude 0.24 moves at most 0.0139 per 48 kHz sample: no clicks
        assert player["jump"] < 0.016, player
        # the flush at 0.6 s cuts it at once; the 40 ms pushed at 0.7 s stay under the buffer
        assert 0.59 < player["lastSound"] < 0.61, player
        assert player["flushed"]
        watch.assert_clean()


async def test_a_teacher_sees_a_class_report_as_a_table_and_a_chart(browser_ready, fake,
                                                                    start_server, tmp_path) -> None:
    """The dev guest, a student, sees no class report; made a teacher with a class of two
    students, they see the report: a row and a bar per student, the class's most asked and
    weakest sections, and the CSV behind the download link."""
    address = await start_server(make_settings(fake, load_sample_course=True))
    db = start_server.apps[-1].state.services.db
    async with chromium() as browser:
        page, watch = await open_page(browser, address)
        assert await page.locator("#teacher").is_hidden()  # a student's page
        await page.close()

        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            guest_id = (await http.get("/api/auth/me")).json()["id"]
            async with db.session() as s, s.begin():
                await queries.set_role(s, guest_id, "teacher")
            room = (await http.post("/api/classes", json={"name": "5B", "course": "sample"})).json()
        async with db.session() as s, s.begin():
            chunk = (await s.execute(select(Content).where(
                Content.course == "sample", Content.heading_path.like("%Dividing Fractions%"))
                .limit(1))).scalar_one()
            section = section_of(chunk.source, chunk.heading_path)
            students = []
            for name, questions in (("Ada Lovelace", 3), ("Bob Marley", 1)):
                user = await queries.upsert_user(s, provider="google", subject=name, name=name,
                                                 email=f"{name.split()[0].lower()}@example.com")
                await queries.add_student(s, room["id"], user.id)
                students.append(user.id)
            later = now() + timedelta(seconds=1)
            for user_id, questions in zip(students, (3, 1)):
                for i in range(questions):
                    s.add(Interaction(session_id="s", user_id=user_id, course="sample",
                                      kind="text", transcript=f"q{i}", created_at=later,
                                      answer=f"Flip the second fraction [c{chunk.id}]."))
            s.add(UsageEntry(user_id=students[0], kind="voice_ms", amount=120_000,
                             created_at=later))
            quiz = Quiz(user_id=students[0], course="sample", questions=[])
            s.add(quiz)
            await s.flush()
            s.add(QuizAnswer(quiz_id=quiz.id, user_id=students[0], question=0, course="sample",
                             sections=[section], choice=0, correct=False, created_at=later))

        page, watch = await open_page(browser, address)
        await watch.until(f"document.getElementById('teacher').dataset.loaded === '{room['id']}'",
                          what="the class report")
        assert await page.locator("#report-class option").all_inner_texts() == ["5B"]
        rows = page.locator("#report-table tbody tr")
        assert await rows.count() == 2
        ada = await rows.nth(0).locator("td").all_inner_texts()
        assert ada[:3] == ["Ada Lovelace", "2", "3"] and section in ada[3]
        assert ada[4] == "0%" and ada[5] == section and ada[6] == "0"  # no flagged turns
        assert await page.locator("#report-chart rect.bar").count() == 2
        widths = [float(await page.locator("#report-chart rect.bar").nth(i).get_attribute("width"))
                  for i in range(2)]
        assert widths[0] == pytest.approx(3 * widths[1], rel=0.01)  # 3 questions against 1
        assert section in await page.locator("#report-asked").inner_text()
        assert "0%" in await page.locator("#report-lowest").inner_text()
        assert "2 students, 4 questions, 2 voice minutes" in await page.locator(
            "#report-summary").inner_text()
        href = await page.locator("#report-csv").get_attribute("href")
        assert href == f"/api/classes/{room['id']}/report?format=csv"
        csv_text = await page.evaluate("async (url) => (await fetch(url)).text()", href)
        assert csv_text.startswith("user_id,name,email,") and "Ada Lovelace" in csv_text
        await page.screenshot(path=str(tmp_path / "teacher.png"), full_page=True)
        await no_overflow_at_phone_width(page, watch, tmp_path / "teacher-360.png")
        watch.assert_clean()
