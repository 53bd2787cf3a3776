// The voice tutor's browser client: sign-in, course, the voice socket (docs/protocol.md), captions,
// citations, minutes left and upgrades. Plain ES modules, no build step; see docs/web.md.
//
// `window.tutor` exposes the client's state and counters for debugging and for the browser tests
// (tests/test_browser.py): state, states (the last 200 changes), events (types received), log
// (the events themselves), ws, playedSamples, sentFrames, connects, resumed, flushes, closes.

import { AudioEngine } from "./audio.js";
import { Connection } from "./connection.js";
import { showTeacherView } from "./teacher.js";

const $ = (id) => document.getElementById(id);
const LOG_LIMIT = 5000;
const QUIET_ERRORS = new Set([
  "input_audio_buffer_commit_empty", "response_cancel_not_active",
  "conversation_already_has_active_response",
]);
const STATE_LABELS = {
  idle: "Ready", connecting: "Connecting…", listening: "Listening", thinking: "Thinking…",
  speaking: "Speaking", reconnecting: "Reconnecting…", ended: "Session ended",
};

const tutor = {
  state: "idle", states: ["idle"], events: [], log: [], ws: null, user: null, course: null,
  playedSamples: 0, bufferedSamples: 0, playing: false, receivedAudioBytes: 0,
  sentFrames: 0, connects: 0, resumed: 0, flushes: 0, flushAcks: 0, closes: [],
  ptt: false, spoken: true, talking: false, conn: null, audio: null,
};
window.tutor = tutor;

// -- conversation on screen -------------------------------------------------------------------
const students = new Map(); // item id → message element
const answers = new Map(); // response id → {el, text, kind, audio}
let activeResponse = null;
let muteAudio = false; // after an interruption, until the next response starts
let pttFrames = 0;
let wantMic = false;
let pendingTyped = [];
let billing = { target: null };
// Why the server cannot hear or answer (no AI provider configured): shown as a notice, and the
// status never says "Ready" while it holds.
let providerProblem = null;

function message(role, text = "", { pending = false } = {}) {
  const li = document.createElement("li");
  li.className = `msg ${role}` + (pending ? " pending" : "");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "student" ? "You" : role === "tutor" ? "Tutor" : "";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  if (role !== "system") li.append(who);
  li.append(body);
  $("transcript").append(li);
  $("empty").hidden = true;
  scrollDown();
  return li;
}

function scrollDown() {
  const list = $("transcript");
  list.scrollTop = list.scrollHeight;
}

function system(text) {
  message("system", text);
}

function studentItem(itemId) {
  let el = students.get(itemId);
  if (!el) {
    el = message("student", "", { pending: true });
    el.dataset.item = itemId;
    students.set(itemId, el);
  }
  return el;
}

function studentSaid(itemId, transcript) {
  const el = studentItem(itemId);
  el.classList.remove("pending");
  if (!transcript || !transcript.trim()) {
    el.remove(); // nothing was heard: no empty caption
    students.delete(itemId);
    return;
  }
  el.querySelector(".text").textContent = transcript;
  scrollDown();
}

function answerOf(responseId) {
  let answer = answers.get(responseId);
  if (!answer) {
    const el = message("tutor", "", { pending: true });
    el.dataset.response = responseId;
    el.setAttribute("aria-busy", "true"); // read once complete, not delta by delta
    answer = { el, text: "", kind: null, audio: false };
    answers.set(responseId, answer);
  }
  return answer;
}

function answerDelta(responseId, delta, kind) {
  const answer = answerOf(responseId);
  if (answer.kind && answer.kind !== kind) return; // text and its spoken transcript: show one
  answer.kind = kind;
  answer.text += delta;
  answer.el.classList.remove("pending");
  answer.el.querySelector(".text").textContent = answer.text;
  scrollDown();
}

function finalText(response) {
  const item = (response.output || [])[0];
  const part = item && (item.content || [])[0];
  return part ? (part.text ?? part.transcript ?? null) : null;
}

function linkCitations(textEl, text) {
  // the model is asked to cite passages as [c12]: make those links to the passage
  const parts = text.split(/(\[c\d+\])/g);
  if (parts.length === 1) return;
  textEl.textContent = "";
  for (const part of parts) {
    const match = /^\[(c\d+)\]$/.exec(part);
    if (match) textEl.append(passageLink(match[1], part));
    else textEl.append(part);
  }
}

function answerDone(response) {
  const answer = answerOf(response.id);
  const text = finalText(response);
  if (text !== null && text !== answer.text) answer.text = text;
  const textEl = answer.el.querySelector(".text");
  textEl.textContent = answer.text;
  linkCitations(textEl, answer.text);
  answer.el.classList.remove("pending");
  answer.el.removeAttribute("aria-busy");
  if (response.status === "cancelled") answer.el.classList.add("cancelled");
  if (response.status === "failed") answer.el.classList.add("failed");
  if (!answer.text && response.status !== "completed") {
    answer.el.remove(); // interrupted before its first word
    answers.delete(response.id);
  }
}

function passageLink(chunkId, label) {
  const a = document.createElement("a");
  a.href = `/api/rag/passages/${encodeURIComponent(chunkId)}`;
  a.target = "_blank";
  a.rel = "noopener";
  a.dataset.chunk = chunkId;
  a.textContent = label;
  a.addEventListener("click", (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    showPassage(chunkId);
  });
  return a;
}

function showCitations(responseId, citations) {
  if (!citations || !citations.length) return;
  const answer = answerOf(responseId);
  const list = document.createElement("ul");
  list.className = "cites";
  list.setAttribute("aria-label", "Sources");
  citations.forEach((c, i) => {
    const li = document.createElement("li");
    const label = `[${i + 1}] ${c.document}${c.heading ? " — " + c.heading.split(" > ").pop() : ""}`;
    const link = passageLink(c.chunk_id, label);
    link.title = c.snippet || "";
    li.append(link);
    list.append(li);
  });
  answer.el.append(list);
}

async function showPassage(chunkId) {
  const panel = $("passage");
  $("passage-title").textContent = "Loading the passage…";
  $("passage-where").textContent = "";
  $("passage-text").textContent = "";
  panel.hidden = false;
  panel.focus();
  try {
    const response = await fetch(`/api/rag/passages/${encodeURIComponent(chunkId)}`,
                                 { credentials: "same-origin" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    $("passage-title").textContent = body.heading ? body.heading.split(" > ").pop() : body.document;
    $("passage-where").textContent = `${body.course} · ${body.document}` +
      (body.heading ? ` · ${body.heading}` : "");
    $("passage-text").textContent = body.text;
  } catch (error) {
    $("passage-title").textContent = "The passage could not be loaded";
    $("passage-text").textContent = error.message;
  }
}

// -- state ------------------------------------------------------------------------------------
function setState(state, label) {
  if (state !== tutor.state) {
    tutor.states.push(state);
    if (tutor.states.length > 200) tutor.states.shift();
  }
  tutor.state = state;
  document.body.dataset.state = state;
  const waiting = state === "idle" || state === "listening";
  $("state-label").textContent = providerProblem && waiting
    ? "Not set up: no AI provider" : label || STATE_LABELS[state] || state;
}

function showProviderProblem(text) {
  providerProblem = text;
  notice(text);
  setState(tutor.state);
}

function idleState() {
  if (tutor.ptt && tutor.talking) return ["listening", "Listening — release Space to send"];
  return ["listening", tutor.ptt ? "Hold Space to talk" : "Listening"];
}

function settle() {
  // nothing being said or answered: back to listening
  if (activeResponse !== null || tutor.playing || !tutor.conn || !tutor.conn.open) return;
  if (tutor.state === "speaking" || tutor.state === "thinking" || tutor.state === "connecting") {
    setState(...idleState());
  }
}

function notice(text, { upgrade = false } = {}) {
  $("notice-text").textContent = text;
  $("notice-upgrade").hidden = !(upgrade && billing.target);
  $("notice").hidden = false;
}

function clearNotice() {
  $("notice").hidden = true;
}

// -- audio ------------------------------------------------------------------------------------
const audio = new AudioEngine({
  prebufferMs: 100,
  onFrame(buffer) {
    meter(buffer);
    if (tutor.ptt && !tutor.talking) return;
    if (tutor.conn && tutor.conn.sendAudio(buffer)) {
      tutor.sentFrames++;
      if (tutor.talking) pttFrames++;
    }
  },
  onPlayer(status) {
    tutor.playedSamples = status.played;
    tutor.bufferedSamples = status.buffered;
    tutor.playing = status.playing;
    if (status.flushed) tutor.flushAcks++;
    if (status.playing && tutor.state !== "speaking" && !muteAudio) setState("speaking");
    // the answer has been played out (a flush is not the end of an answer: that is handled
    // where the flush was asked for)
    if (!status.playing && !status.buffered && !status.flushed && tutor.state === "speaking") settle();
  },
});
tutor.audio = audio;

let lastMeter = 0;
function meter(buffer) {
  const now = performance.now();
  if (now - lastMeter < 60) return;
  lastMeter = now;
  const pcm = new Int16Array(buffer);
  let sum = 0;
  for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
  const rms = Math.sqrt(sum / pcm.length) / 32768;
  $("level").style.width = `${Math.min(100, Math.round(Math.sqrt(rms) * 250))}%`;
}

function interrupt() {
  muteAudio = true;
  audio.flush();
  tutor.flushes++;
  tutor.playing = false;
}

// -- the socket -------------------------------------------------------------------------------
function sessionUpdate({ turnDetection } = {}) {
  const input = { format: { type: "audio/pcm", rate: 16000 } };
  if (tutor.ptt) input.turn_detection = null;
  else if (turnDetection) input.turn_detection = turnDetection;
  return {
    type: "session.update",
    session: {
      type: "realtime",
      output_modalities: [tutor.spoken ? "audio" : "text"],
      audio: { input, output: { voice: "alloy" } },
    },
  };
}

function record(event) {
  tutor.events.push(event.type);
  tutor.log.push(event);
  if (tutor.log.length > LOG_LIMIT) {
    tutor.log.splice(0, tutor.log.length - LOG_LIMIT);
    tutor.events.splice(0, tutor.events.length - LOG_LIMIT);
  }
}

function handle(event) {
  record(event);
  switch (event.type) {
    case "session.created":
      tutor.conn.send(sessionUpdate());
      if (!providerProblem) clearNotice();
      setState(...idleState());
      if (wantMic) startMic();
      for (const text of pendingTyped.splice(0)) sendTyped(text);
      break;
    case "tutor.session.resumed":
      tutor.resumed++;
      system(`Reconnected: the conversation goes on (${event.messages} messages kept).`);
      break;
    case "input_audio_buffer.speech_started":
      interrupt(); // the student is talking: the tutor stops at once
      studentItem(event.item_id);
      setState("listening", "Hearing you…");
      break;
    case "input_audio_buffer.speech_stopped":
    case "input_audio_buffer.committed":
      studentItem(event.item_id);
      setState("thinking");
      break;
    case "conversation.item.input_audio_transcription.completed":
      studentSaid(event.item_id, event.transcript);
      break;
    case "conversation.item.input_audio_transcription.failed":
      studentSaid(event.item_id, "");
      system("Sorry, that could not be heard. Please say it again.");
      settle();
      break;
    case "response.created":
      activeResponse = event.response.id;
      muteAudio = false;
      answerOf(event.response.id);
      setState("thinking");
      break;
    case "response.output_text.delta":
      answerDelta(event.response_id, event.delta, "text");
      if (tutor.state !== "speaking") setState("speaking");
      break;
    case "response.output_audio_transcript.delta":
      answerDelta(event.response_id, event.delta, "transcript");
      if (tutor.state !== "speaking") setState("speaking");
      break;
    case "response.output_audio.delta": // base64 audio, when the server sends JSON audio
      playAudio(base64ToBuffer(event.delta));
      break;
    case "tutor.citations":
      showCitations(event.response_id, event.citations);
      break;
    case "response.done":
      answerDone(event.response);
      if (activeResponse === event.response.id) activeResponse = null;
      if (event.response.status !== "completed") {
        interrupt();
        setState(...idleState());
      } else if (tutor.spoken && answerOf(event.response.id).audio) {
        audio.endOfAnswer(); // play out what is buffered; the player says when it is done
      } else {
        settle();
      }
      break;
    case "output_audio_buffer.cleared":
      interrupt();
      settle();
      break;
    case "tutor.rate_limits.updated": // every limit, voice minutes (voice_seconds) included
      showLimits(event.rate_limits);
      break;
    case "error":
      serverError(event.error || {});
      break;
    default:
      break;
  }
}

let tailTimer = null;
function playAudio(buffer) {
  tutor.receivedAudioBytes += buffer.byteLength;
  if (muteAudio || !tutor.spoken) return;
  audio.play(buffer);
  if (activeResponse) {
    answerOf(activeResponse).audio = true;
  } else {
    // audio after its response.done: the tail of that answer; play it all once it stops coming
    clearTimeout(tailTimer);
    tailTimer = setTimeout(() => audio.endOfAnswer(), 150);
  }
}

function base64ToBuffer(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes.buffer;
}

function spokenNotAllowed() {
  tutor.spoken = false;
  const toggle = $("voice-toggle");
  toggle.setAttribute("aria-pressed", "false");
  toggle.disabled = true;
  toggle.title = "Spoken answers are not part of your plan: the answers are shown as text";
}

function serverError(error) {
  if (QUIET_ERRORS.has(error.code)) return;
  if (error.code === "feature_not_available" && error.param === "session.output_modalities") {
    // the whole session.update was refused: send it again without spoken answers
    spokenNotAllowed();
    if (tutor.conn) tutor.conn.send(sessionUpdate());
    return;
  }
  if (error.code === "provider_not_configured") {
    showProviderProblem(error.message || "No AI provider is configured on the server.");
  } else if (error.code === "resume_not_found") {
    system("Reconnected, but the earlier conversation had expired: the tutor starts afresh.");
  } else if (error.code === "quota_exceeded") {
    notice("Your voice minutes are used up for now. Upgrade for more, or come back later.",
           { upgrade: true });
  } else if (error.code === "session_expired") {
    notice("This session reached your plan's longest session. Press Start to begin a new one.");
  } else if (error.code === "too_many_sessions") {
    notice("You already have a voice session open (another tab or device). Close it and press Start.");
  } else if (error.code === "rate_limited") {
    notice("Too many sessions started in the last minute. Wait a moment, then press Start.");
  } else if (error.type === "authentication_error") {
    notice(`Sign-in was refused: ${error.message}`);
  } else {
    system(`Problem: ${error.message || error.code}`);
  }
}

function updateStartButton() {
  $("start").textContent = tutor.conn && wantMic ? "Stop" : "Start talking";
}

function connect() {
  if (tutor.conn) return;
  setState("connecting");
  $("course").disabled = true;
  const conn = new Connection({
    course: tutor.course,
    onEvent: handle,
    onAudio: playAudio,
    onOpen(ws) {
      tutor.ws = ws;
      tutor.connects = conn.connects;
    },
    onDrop(info) {
      tutor.closes.push(info.code);
      if (activeResponse !== null) {
        const answer = answers.get(activeResponse);
        if (answer) answerDone({ id: activeResponse, status: "cancelled", output: [] });
        activeResponse = null;
      }
      setState("reconnecting", `Connection lost, reconnecting in ${Math.ceil(info.retryInMs / 1000)} s…`);
    },
    onEnd(info) {
      tutor.closes.push(info.code);
      endSession(info);
    },
    onTicketRefused(status, body) {
      const detail = body && body.error ? body.error.message : `HTTP ${status}`;
      endSession({ code: status });
      if (status === 401) showSignedOut();
      else if (status === 402) notice(`Your voice minutes are used up: ${detail}`, { upgrade: true });
      else notice(`The voice session could not start: ${detail}`);
    },
  });
  tutor.conn = conn;
  updateStartButton();
  conn.start();
}

function endSession(info) {
  audio.stopMic();
  interrupt();
  tutor.conn = null;
  tutor.talking = false;
  activeResponse = null;
  wantMic = false;
  updateStartButton();
  $("course").disabled = false;
  $("level").style.width = "0";
  if (info.code === 1000) setState("idle");
  else setState("ended", info.code === 4402 ? "Out of voice minutes" : STATE_LABELS.ended);
}

async function startMic() {
  try {
    await audio.startMic();
  } catch (error) {
    wantMic = false;
    updateStartButton();
    notice(`The microphone is not available (${error.message}). You can still type questions.`);
  }
}

async function onStart() {
  if (tutor.conn && wantMic) {
    tutor.conn.stop(); // closes with 1000: ends the session, no reconnection
    return;
  }
  wantMic = true;
  updateStartButton();
  try {
    await audio.open(); // inside the click: browsers allow audio to start now
  } catch (error) {
    notice(`Audio is not available in this browser: ${error.message}`);
    return;
  }
  if (tutor.conn) {
    if (tutor.conn.open) startMic();
  } else {
    connect();
  }
}

// -- typed questions --------------------------------------------------------------------------
function sendTyped(text) {
  const conn = tutor.conn;
  if (activeResponse !== null) {
    conn.send({ type: "response.cancel" });
    interrupt();
  }
  message("student", text);
  conn.send({ type: "conversation.item.create",
              item: { type: "message", role: "user", content: [{ type: "input_text", text }] } });
  conn.send({ type: "response.create" });
  setState("thinking");
}

function onTyped(event) {
  event.preventDefault();
  const input = $("typed-input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  audio.open().catch(() => {}); // a gesture: let the answer be heard
  if (tutor.conn && tutor.conn.open) sendTyped(text);
  else {
    pendingTyped.push(text);
    connect();
  }
}

// -- push to talk -----------------------------------------------------------------------------
function isTextField(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || target.tagName === "TEXTAREA" ||
     (target.tagName === "INPUT" && !["button", "checkbox", "radio", "submit"].includes(target.type)) ||
     target.tagName === "SELECT");
}

function setPtt(on) {
  tutor.ptt = on;
  $("ptt-toggle").setAttribute("aria-pressed", String(on));
  $("hold").hidden = !on;
  $("hint").textContent = on
    ? "Push to talk: hold Space (or the button) while you speak, release to send."
    : "Open mic: just talk. You can interrupt the tutor at any time.";
  if (tutor.conn && tutor.conn.open) {
    tutor.conn.send(sessionUpdate({ turnDetection: on ? undefined : { type: "server_vad" } }));
  }
  if (tutor.state === "listening") setState(...idleState());
}

function pressTalk() {
  if (!tutor.ptt || tutor.talking) return;
  tutor.talking = true;
  pttFrames = 0;
  document.body.dataset.talking = "true";
  if (activeResponse !== null) tutor.conn && tutor.conn.send({ type: "response.cancel" });
  interrupt();
  setState(...idleState());
}

function releaseTalk() {
  if (!tutor.talking) return;
  tutor.talking = false;
  document.body.dataset.talking = "false";
  const conn = tutor.conn;
  if (!conn || !conn.open) return;
  if (pttFrames >= 5) { // at least 100 ms
    conn.send({ type: "input_audio_buffer.commit" });
    conn.send({ type: "response.create" });
    setState("thinking");
  } else {
    conn.send({ type: "input_audio_buffer.clear" });
    setState(...idleState());
  }
}

function onKey(event) {
  if (event.code !== "Space" || !tutor.ptt || isTextField(event.target)) return;
  event.preventDefault(); // Space talks, it does not press the focused button
  if (event.type === "keydown" && !event.repeat) pressTalk();
  if (event.type === "keyup") releaseTalk();
}

// -- plans ------------------------------------------------------------------------------------
function showLimits(limits) {
  const voice = (limits || []).find((l) => l.name === "voice_seconds");
  const el = $("minutes");
  if (!voice) {
    el.hidden = true;
    return;
  }
  minutesLeft(voice.remaining, voice.limit, voice.reset_seconds);
}

function minutesLeft(remaining, limit, resetSeconds) {
  const el = $("minutes");
  const text = remaining >= 60 ? `${Math.floor(remaining / 60)} min left` : `${Math.max(0, Math.ceil(remaining))} s left`;
  el.textContent = text;
  el.title = `Voice time left${limit ? ` of ${Math.round(limit / 60 * 10) / 10} min` : ""}` +
    (resetSeconds ? `; resets in ${Math.round(resetSeconds / 3600)} h` : "");
  el.setAttribute("aria-label", `Voice time: ${text}`);
  el.classList.toggle("low", remaining < 60);
  el.hidden = false;
}

async function loadBilling(user) {
  try {
    const response = await fetch("/api/billing/tiers", { credentials: "same-origin" });
    if (!response.ok) return;
    const tiers = (await response.json()).tiers || [];
    const current = tiers.find((t) => t.name === user.tier);
    const rank = current ? current.rank ?? 0 : 0;
    const forSale = tiers.filter((t) => t.purchasable && !t.per_seat && (t.rank ?? 0) > rank);
    billing.target = forSale.find((t) => t.name === "pro") || forSale[0] || null;
    $("upgrade").hidden = !billing.target;
    if (billing.target) $("upgrade").title = `Upgrade to ${billing.target.label || billing.target.name}`;
  } catch {
    // billing is optional
  }
  try {
    const response = await fetch("/api/billing/usage", { credentials: "same-origin" });
    if (response.ok) {
      const usage = await response.json();
      if (Array.isArray(usage.features) && !usage.features.includes("tts")) spokenNotAllowed();
      const voice = usage.voice || {};
      if (typeof voice.remaining_seconds === "number") {
        const limit = voice.minutes_per_day ? voice.minutes_per_day * 60 : null;
        minutesLeft(voice.remaining_seconds, limit, voice.resets_in_seconds);
      }
    }
  } catch {
    // usage is informative only
  }
}

async function upgrade() {
  if (!billing.target) return;
  const buttons = [$("upgrade"), $("notice-upgrade")];
  buttons.forEach((b) => (b.disabled = true));
  try {
    const response = await fetch("/api/payments/checkout", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ tier: billing.target.name }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok && body.url) {
      location.assign(body.url);
      return;
    }
    notice(`The upgrade could not start: ${body.error ? body.error.message : response.statusText}`);
  } catch (error) {
    notice(`The upgrade could not start: ${error.message}`);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// -- start-up ---------------------------------------------------------------------------------
async function checkProviders() {
  // before the first turn: a server without a provider says so at once (the socket's
  // provider_not_configured error, with the server's own wording, replaces this on connecting)
  try {
    const response = await fetch("/healthz");
    const health = await response.json();
    if (health.transcription && health.chat) return;
    const missing = [!health.transcription && "transcribe", !health.chat && "answer"].filter(Boolean);
    showProviderProblem(`No AI provider is configured, so the tutor cannot ${missing.join(" or ")} ` +
      "yet. Set OPENAI_API_KEY (or OPENAI_BASE_URL, or LLM_BASE_URL for a local " +
      "OpenAI-compatible server) where the server runs, then restart it.");
  } catch {
    // the health check is informative only
  }
}

function showSignedOut() {
  $("signed-out").hidden = false;
  $("tutor").hidden = true;
  $("user-name").textContent = "";
}

async function loadCourses() {
  const select = $("course");
  let items = [];
  try {
    const response = await fetch("/api/rag/courses", { credentials: "same-origin" });
    if (response.ok) items = (await response.json()).items || [];
  } catch {
    // no list: the server's default course
  }
  select.textContent = "";
  const all = new Option("All courses", "");
  select.append(all);
  for (const c of items) {
    const label = `${c.name} (${c.documents} document${c.documents === 1 ? "" : "s"})`;
    select.append(new Option(label, c.name));
  }
  const wanted = new URLSearchParams(location.search).get("course");
  const names = items.map((c) => c.name);
  select.value = names.includes(wanted) ? wanted : names.includes("sample") ? "sample" : (names[0] ?? "");
  tutor.course = select.value || null;
}

async function main() {
  $("start").addEventListener("click", onStart);
  $("typed").addEventListener("submit", onTyped);
  $("course").addEventListener("change", (e) => (tutor.course = e.target.value || null));
  $("ptt-toggle").addEventListener("click", () => setPtt(!tutor.ptt));
  $("voice-toggle").addEventListener("click", () => {
    tutor.spoken = !tutor.spoken;
    $("voice-toggle").setAttribute("aria-pressed", String(tutor.spoken));
    if (!tutor.spoken) interrupt();
    if (tutor.conn && tutor.conn.open) tutor.conn.send(sessionUpdate());
  });
  const hold = $("hold");
  hold.addEventListener("pointerdown", (e) => { hold.setPointerCapture(e.pointerId); pressTalk(); });
  for (const type of ["pointerup", "pointercancel"]) hold.addEventListener(type, releaseTalk);
  window.addEventListener("keydown", onKey, true);
  window.addEventListener("keyup", onKey, true);
  window.addEventListener("blur", releaseTalk);
  window.addEventListener("online", () => tutor.conn && tutor.conn.reconnectNow());
  $("upgrade").addEventListener("click", upgrade);
  $("notice-upgrade").addEventListener("click", upgrade);
  $("passage-close").addEventListener("click", () => ($("passage").hidden = true));
  $("passage").addEventListener("keydown", (e) => {
    if (e.key === "Escape") $("passage").hidden = true;
  });

  let user;
  try {
    const response = await fetch("/api/auth/me", { credentials: "same-origin" });
    if (response.status === 401) {
      showSignedOut();
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    user = await response.json();
  } catch (error) {
    notice(`The server could not be reached (${error.message}). Reload to try again.`);
    return;
  }
  tutor.user = user;
  $("user-name").textContent = user.name || user.email || "Signed in";
  $("tutor").hidden = false;
  await Promise.all([loadCourses(), loadBilling(user), checkProviders(),
                     showTeacherView(user).catch((error) => console.warn("class report:", error))]);
  const params = new URLSearchParams(location.search);
  if (params.get("checkout") === "success") notice("Thank you! Your new plan is on its way; it applies within a minute.");
  else if (params.get("upgrade") && billing.target) notice("Upgrade for more voice minutes:", { upgrade: true });
  document.body.dataset.ready = "true";
}

main();
