// Interop driver: the official `openai` Node SDK's `OpenAIRealtimeWS` (openai/realtime/ws, GA
// interface, written on openai 6.49.0 with ws 8) plays the interop scenario against the tutor.
//
// Set up as the SDK's example (examples/realtime/ws.ts) does, keeping the GA defaults (audio out,
// PCM16 24 kHz, server VAD): `new OpenAI({baseURL, apiKey})`, `new OpenAIRealtimeWS({model},
// client)` (which always dials wss://<baseURL>/realtime?model=...), and on open one
// `session.update` with `type` and `model`. The SDK leaves interruption to the app, so this
// driver does what the Realtime guide says an app does: it "plays" the answer at real-time pace
// and, on `input_audio_buffer.speech_started`, stops and sends `conversation.item.truncate` at
// the point heard. Tools are registered with `session.update` and answered with a
// `function_call_output` item and `response.create`.
//
// Usage: node openai_node.mjs <speech.pcm (24 kHz PCM16)>, run in a folder whose node_modules
// hold openai and ws; env TUTOR_HTTP_URL (https://...), OPENAI_API_KEY, INTEROP_TOOL (JSON),
// NODE_EXTRA_CA_CERTS. Prints one JSON report as its last line.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const RATE = 24000;
const CHUNK = (RATE * 2) / 50; // 20 ms of PCM16
const STEP_TIMEOUT_MS = 20000; // answers are spoken at real-time pace: the fake's take ~11 s
const TOTAL_TIMEOUT_MS = 100000;
// The SDK is installed in the working directory's node_modules, not next to this file.
const require = createRequire(join(process.cwd(), 'driver.js'));
const { OpenAI } = require('openai');
const { OpenAIRealtimeWS } = require('openai/realtime/ws');
const sdkFolder = dirname(require.resolve('openai'));
const { version } = JSON.parse(readFileSync(join(sdkFolder, 'package.json')));

const speech = readFileSync(process.argv[2]);
const tool = JSON.parse(process.env.INTEROP_TOOL);
const events = []; // every server event, in arrival order
const errors = [];
const checks = {};
let changed = () => {};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const check = (name, ok, detail) => { checks[name] = { ok: Boolean(ok), detail }; };

// The first event from index `start` on whose type is one of `kinds` and that passes `where`.
async function wait(kinds, start = 0, where = () => true, timeout = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  for (;;) {
    for (let i = start; i < events.length; i++) {
      if (kinds.split(' ').includes(events[i].type) && where(events[i])) return events[i];
    }
    start = events.length;
    if (rt.socket.readyState > 1) throw new Error(`no ${kinds}: the connection ended (${closedBy})`);
    if (Date.now() >= deadline) throw new Error(`no ${kinds} within ${timeout / 1000} s`);
    await new Promise((resolve) => { changed = resolve; setTimeout(resolve, 50); });
  }
}

const answerText = (rid) => events.filter((e) => e.response_id === rid &&
  ['response.output_audio_transcript.delta', 'response.output_text.delta'].includes(e.type))
  .map((e) => e.delta).join('');
const pcmMs = (delta) => Buffer.from(delta, 'base64').length / 2 / RATE * 1000;
const audioMs = (rid) => events
  .filter((e) => e.type === 'response.output_audio.delta' && e.response_id === rid)
  .reduce((ms, e) => ms + pcmMs(e.delta), 0);

// Stands in for the speaker: an item's audio "plays" at real-time pace from its first delta.
const player = {
  itemId: null, started: 0, receivedMs: 0, stopped: new Set(),
  feed(e) {
    if (e.type !== 'response.output_audio.delta' || this.stopped.has(e.item_id)) return;
    if (e.item_id !== this.itemId) {
      Object.assign(this, { itemId: e.item_id, started: Date.now(), receivedMs: 0 });
    }
    this.receivedMs += pcmMs(e.delta);
  },
  playedMs() { return Math.floor(Math.min(this.receivedMs, Date.now() - this.started)); },
  playing() {
    return this.itemId !== null && !this.stopped.has(this.itemId) && this.playedMs() < this.receivedMs;
  },
};

const client = new OpenAI({ baseURL: process.env.TUTOR_HTTP_URL,
  apiKey: process.env.OPENAI_API_KEY });
const rt = new OpenAIRealtimeWS({ model: 'gpt-realtime' }, client);
let truncatedAt = null;
let bargedAt = -1; // the index of the speech_started event that interrupted

rt.on('event', (e) => {
  events.push(e);
  if (e.type === 'error') errors.push(e);
  player.feed(e);
  // The app's barge-in handling: stop playing and tell the server what was heard.
  if (e.type === 'input_audio_buffer.speech_started' && player.playing()) {
    truncatedAt = [player.itemId, player.playedMs()];
    bargedAt = events.length - 1;
    player.stopped.add(player.itemId);
    rt.send({ type: 'conversation.item.truncate', item_id: truncatedAt[0], content_index: 0,
      audio_end_ms: truncatedAt[1] });
  }
  changed();
});
const socketErrors = [];
let closedBy = '';
rt.socket.on('close', (code, reason) => { closedBy = `close ${code} ${reason}`; changed(); });
rt.on('error', (err) => { if (!err.error) socketErrors.push(String(err.cause ?? err.message)); });

async function streamSpeech() {
  const begin = Date.now();
  for (let n = 0, offset = 0; offset < speech.length; n++, offset += CHUNK) {
    const audio = speech.subarray(offset, offset + CHUNK).toString('base64');
    rt.send({ type: 'input_audio_buffer.append', audio });
    await sleep(Math.max(0, begin + (n + 1) * 20 - Date.now()));
  }
}

function say(text) {
  rt.send({ type: 'conversation.item.create',
    item: { type: 'message', role: 'user', content: [{ type: 'input_text', text }] } });
  rt.send({ type: 'response.create' });
}

async function sessionSetup() {
  await new Promise((resolve, reject) => {
    rt.socket.once('open', resolve);
    rt.socket.once('error', reject);
    rt.socket.once('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
  const created = await wait('session.created');
  const mark = events.length;
  rt.send({ type: 'session.update', session: { type: 'realtime', model: 'gpt-realtime' } });
  const updated = await wait('session.updated error', mark);
  check('session_setup', updated.type === 'session.updated',
    `session.created ${created.session?.id}; answer to session.update: ${updated.type}`);
}

async function typedTurn() {
  const mark = events.length;
  say('What is a derivative?');
  const done = await wait('response.done', mark);
  const text = answerText(done.response.id);
  check('typed_turn', done.response.status === 'completed' && text,
    `response.done ${done.response.status}; ${text.length} chars streamed: ` +
    JSON.stringify(text.slice(0, 60)));
}

// A spoken question; while its answer plays, a second one (the barge-in).
async function spokenTurns() {
  let mark = events.length;
  await streamSpeech();
  const heard = await wait('conversation.item.input_audio_transcription.completed', mark);
  const created = await wait('response.created', mark);
  const rid = created.response.id;
  await wait('response.output_audio.delta response.output_audio_transcript.delta response.output_text.delta',
    mark, (e) => e.response_id === rid);
  await sleep(1000); // the student listens for a second
  const text = answerText(rid);
  check('spoken_turn', heard.transcript && text,
    `transcript ${JSON.stringify(heard.transcript)}; answer streaming: ${JSON.stringify(text.slice(0, 60))}`);
  check('spoken_answer_audio', audioMs(rid) > 0, `${audioMs(rid).toFixed(0)} ms of answer audio by now`);

  mark = events.length;
  truncatedAt = null;
  await streamSpeech();
  const cut = await wait('response.done', 0, (e) => e.response.id === rid);
  const truncated = truncatedAt ? await wait('conversation.item.truncated', mark) : null;
  const second = await wait('response.created', mark, (e) => e.response.id !== rid);
  const done = await wait('response.done', mark, (e) => e.response.id === second.response.id);
  const answered = answerText(second.response.id);
  // the answer still being generated when the student spoke is cancelled; one already complete
  // (its audio still playing here) is only truncated
  const stopped = cut.response.status === 'cancelled' ||
    (cut.response.status === 'completed' && events.indexOf(cut) < bargedAt);
  check('barge_in', truncatedAt && truncated && truncated.audio_end_ms === truncatedAt[1] &&
    stopped && done.response.status === 'completed' && answered,
  `truncate sent ${JSON.stringify(truncatedAt)}; conversation.item.truncated ` +
    `${truncated && JSON.stringify([truncated.item_id, truncated.audio_end_ms])}; interrupted response ` +
    `${cut.response.status}; next answer ${done.response.status}: ${JSON.stringify(answered.slice(0, 40))}`);
}

async function functionCall() {
  let mark = events.length;
  rt.send({ type: 'session.update', session: { type: 'realtime', tools: [{ type: 'function',
    name: tool.name, description: "Look up a student's grade.", parameters: tool.schema }] } });
  const updated = await wait('session.updated error', mark);
  if (updated.type !== 'session.updated') {
    throw new Error(`session.update with tools: ${JSON.stringify(updated)}`);
  }
  mark = events.length;
  say(tool.prompt);
  const done = await wait('response.done', mark);
  const call = (done.response.output ?? []).find((item) => item.type === 'function_call');
  if (!call) {
    throw new Error(`response.done ${done.response.status} without a function_call item: ` +
      JSON.stringify(answerText(done.response.id).slice(0, 80)));
  }
  mark = events.length;
  rt.send({ type: 'conversation.item.create',
    item: { type: 'function_call_output', call_id: call.call_id, output: tool.output } });
  rt.send({ type: 'response.create' });
  const final = await wait('response.done', mark);
  const text = answerText(final.response.id);
  check('function_call', call.name === tool.name && Object.keys(JSON.parse(call.arguments || '{}')).length &&
    final.response.status === 'completed' && text.includes('The tool said'),
  `${call.name}(${call.arguments}) call_id ${call.call_id}; after its output: ${final.response.status} ` +
    `[${(final.response.output ?? []).map((i) => i.type)}] ${JSON.stringify(text.slice(0, 80))}`);
}

// Run one step; a failure or timeout is recorded as its check and the run goes on.
async function step(name, play, timeoutMs) {
  let timer;
  try {
    await Promise.race([play(), new Promise((_, reject) => {
      const late = () => reject(new Error(`step timed out after ${timeoutMs / 1000} s`));
      timer = setTimeout(late, timeoutMs);
    })]);
  } catch (err) {
    const seen = events.slice(-8).map((e) => e.type);
    if (!(name in checks)) {
      const socket = socketErrors.length ? ` (socket: ${socketErrors})` : '';
      checks[name] = { ok: false, detail: `${err.message}${socket} (last events: ${seen})` };
    }
  } finally {
    clearTimeout(timer);
  }
}

async function run() {
  await step('session_setup', sessionSetup, 20000);
  if (rt.socket.readyState !== 1) return;
  await step('typed_turn', typedTurn, 25000);
  await step('barge_in', spokenTurns, 50000);
  await step('function_call', functionCall, 25000);
}

await Promise.race([run(), sleep(TOTAL_TIMEOUT_MS)]);
rt.close();
for (const name of ['spoken_turn', 'spoken_answer_audio']) {
  checks[name] ??= checks.barge_in ?? { ok: false, detail: 'not run' };
}
console.log(JSON.stringify({ client: 'openai-node', version, checks, errors,
  events: [...new Set(events.map((e) => e.type))].sort() }));
process.exit(0);
