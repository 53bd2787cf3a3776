// Interop driver for the OpenAI Agents SDK (JS): `RealtimeSession` over WebSocket.
//
// Written against @openai/agents-realtime 0.20.0 (with @openai/agents-core 0.20.0, zod 4,
// ws 8) on Node 20. It plays the shared scenario (tests/interop/conftest.py) with a
// `RealtimeAgent` holding one function tool, on the SDK's defaults: `transport: 'websocket'`,
// only `apiKey` and `url` given to `session.connect()`. So the session.update is the SDK's:
// output_modalities ["audio"], pcm 24 kHz in and out, turn_detection semantic_vad,
// transcription gpt-4o-mini-transcribe, then `tracing: "auto"` once session.created arrives.
//
// It watches what an application sees (`history_updated`, `audio`, `audio_interrupted`,
// `agent_tool_start/end`, `error`) and, for the report, the raw wire: server events through
// the session's `transport_event`, client events by observing the socket's `send` (the SDK's
// events are not changed). Server events of a type the SDK knows but that fail its own zod
// schema are silently treated as unknown by the SDK, so they are listed under `schema_rejected`.
//
// Run with the client's folder (tests/interop/.node-openai-agents) as working directory; the
// packages are loaded from there (their CommonJS builds: ESM resolution ignores the working
// directory). Inputs: TUTOR_URL, OPENAI_API_KEY, INTEROP_SPEECH (raw PCM16 24 kHz),
// INTEROP_TOOL_PROMPT, INTEROP_TOOL_OUTPUT; INTEROP_TRACE=<file> writes the wire log.
// Prints one JSON report as its last line.

import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const require = createRequire(join(process.cwd(), 'package.json'));
const { RealtimeAgent, RealtimeSession, tool } = require('@openai/agents-realtime');
const { z } = require('zod');
const DIST = dirname(require.resolve('@openai/agents-realtime'));
const { realtimeServerEventSchema } = require(join(DIST, 'openaiRealtimeEvents.js'));
const VERSION = require(join(DIST, 'metadata.js')).METADATA.version;
const KNOWN_TYPES = new Set(realtimeServerEventSchema.options.map((o) => o.shape.type.value));

const RUN_LIMIT_MS = 110_000;
const TYPED_TEXT = 'What is a derivative, in one sentence?';
const TOOL_PROMPT = process.env.INTEROP_TOOL_PROMPT;
const TOOL_OUTPUT = process.env.INTEROP_TOOL_OUTPUT;
const SPEECH = readFileSync(process.env.INTEROP_SPEECH);
const CHUNK_BYTES = 960; // 20 ms of PCM16 at 24 kHz, the SDK's default input format

const checks = {};
const errors = []; // every `error` the session emitted (server events and SDK failures)
const wire = []; // {dir: 'in' | 'out', at: ms since start, event}
const schemaRejected = [];
const waiters = new Set();
const started = Date.now();
const toolCalls = [];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const timedOut = new Set(); // steps given up on: what they find later is not reported
const check = (name, ok, detail) => {
  if (!timedOut.has(name)) checks[name] = { ok: Boolean(ok), detail };
};
const seen = (dir, type, from = 0) => wire.slice(from).filter((w) => w.dir === dir && w.event.type === type);
const sent = (type, from = 0) => seen('out', type, from).map((w) => w.event);
const received = (type, from = 0) => seen('in', type, from).map((w) => w.event);

function record(dir, event) {
  wire.push({ dir, at: Date.now() - started, event });
  for (const waiter of [...waiters]) waiter();
}

/** Resolves with pred()'s first truthy value, re-evaluated on every wire event; null on timeout. */
function until(pred, ms) {
  return new Promise((resolve) => {
    const done = (value) => { waiters.delete(poll); clearTimeout(timer); resolve(value); };
    const poll = () => { const value = pred(); if (value) done(value); };
    const timer = setTimeout(() => done(null), ms);
    waiters.add(poll);
    poll();
  });
}

/** Streams PCM at real-time pace in 20 ms chunks, as a microphone would. */
async function stream(session, pcm) {
  const t0 = Date.now();
  for (let i = 0, n = 0; i < pcm.length; i += CHUNK_BYTES, n += 1) {
    await sleep(t0 + n * 20 - Date.now());
    const chunk = pcm.subarray(i, i + CHUNK_BYTES);
    session.sendAudio(chunk.buffer.slice(chunk.byteOffset, chunk.byteOffset + chunk.byteLength));
  }
}

const describe = (exc) => (exc?.stack ?? exc?.message ?? JSON.stringify(exc))
  .split('\n').slice(0, 3).join(' | ');
let closed = null; // how the socket closed, once it has

/** Runs one step under a time limit; a throw or a timeout fails only that check. */
async function step(name, ms, body) {
  if (closed) {
    check(name, false, `not run: the socket closed (${closed})`);
    return;
  }
  try {
    const result = await Promise.race([body(), sleep(ms).then(() => 'timeout')]);
    if (result === 'timeout') {
      check(name, false, `timed out after ${ms} ms; last server events: `
        + wire.filter((w) => w.dir === 'in').slice(-6).map((w) => w.event.type).join(', '));
      timedOut.add(name);
    }
  } catch (exc) {
    check(name, false, `threw: ${describe(exc)}${closed ? `; socket closed (${closed})` : ''}`);
  }
}

const transcriptOf = (from, responseId) => [
  ...received('response.output_audio_transcript.delta', from),
  ...received('response.output_text.delta', from),
].filter((e) => !responseId || e.response_id === responseId).map((e) => e.delta).join('');

function userItems(session) {
  return session.history.filter((item) => item.type === 'message' && item.role === 'user');
}

function summarise(history) {
  return history.map((item) => {
    if (item.type !== 'message') return `${item.type}:${item.name}(${item.output ?? ''})`;
    const text = item.content.map((c) => c.text ?? c.transcript ?? `<${c.type}>`).join(' ');
    return `${item.role}[${item.status ?? ''}]:${text.slice(0, 40)}`;
  });
}

async function main() {
  const lookupGrade = tool({
    name: 'lookup_grade',
    description: "Look up a student's grade.",
    parameters: z.object({ student: z.string() }),
    execute: async ({ student }) => { toolCalls.push(student); return TOOL_OUTPUT; },
  });
  const agent = new RealtimeAgent({
    name: 'Tutor',
    instructions: 'You are a patient maths tutor.',
    tools: [lookupGrade],
  });
  const session = new RealtimeSession(agent, { transport: 'websocket' });
  const transport = session.transport;
  const app = { interrupted: 0, toolStart: 0, toolEnd: [], audio: new Map(), historyUpdates: 0 };

  transport.on('connection_change', (status) => {
    const ws = transport.connectionState.websocket;
    if (status !== 'connecting' || !ws) return;
    ws.addEventListener('close', (e) => { closed = `code ${e.code} ${JSON.stringify(e.reason)}`; });
    ws.addEventListener('error', (e) => { closed ??= describe(e); });
    const send = ws.send.bind(ws);
    ws.send = (data, ...rest) => { record('out', JSON.parse(data)); return send(data, ...rest); };
  });
  session.on('transport_event', (event) => {
    record('in', event);
    if (event.type === 'error') errors.push(event);
    const parsed = realtimeServerEventSchema.safeParse(event);
    if (!parsed.success && KNOWN_TYPES.has(event.type) && schemaRejected.length < 20) {
      schemaRejected.push({ type: event.type, issues: parsed.error.issues.slice(0, 3)
        .map((i) => `${i.path.join('.')}: ${i.message}`) });
    }
  });
  session.on('error', (e) => {
    const error = e?.error;
    if (error?.type === 'error') return; // a server `error` event: recorded from the wire
    errors.push({ source: 'sdk', message: String(error?.message ?? error), stack: error?.stack });
  });
  session.on('audio', (event) => {
    app.audio.set(event.responseId, (app.audio.get(event.responseId) ?? 0) + event.data.byteLength);
  });
  session.on('audio_interrupted', () => { app.interrupted += 1; });
  session.on('history_updated', () => { app.historyUpdates += 1; });
  session.on('agent_tool_start', () => { app.toolStart += 1; });
  session.on('agent_tool_end', (_ctx, _agent, _tool, result) => { app.toolEnd.push(result); });
  const audioMs = (responseId) => Math.round((app.audio.get(responseId) ?? 0) / 48);

  // 1. The SDK's own session setup: session.update (full config) on open, then
  // session.update {tracing: "auto"} on session.created; each must come back session.updated.
  await step('session_setup', 10_000, async () => {
    await session.connect({ apiKey: process.env.OPENAI_API_KEY, url: process.env.TUTOR_URL });
    const ok = await until(() => received('session.created').length
      && sent('session.update').length >= 2
      && received('session.updated').length >= sent('session.update').length, 5_000);
    await sleep(300); // an error answering the second update would come now
    const s = received('session.updated').at(-1)?.session ?? {};
    const detail = `session.update sent ${sent('session.update').length}, session.updated `
      + `${received('session.updated').length}; server says output_modalities=`
      + `${JSON.stringify(s.output_modalities)}, turn_detection=`
      + `${JSON.stringify(s.audio?.input?.turn_detection)}, input format=`
      + `${JSON.stringify(s.audio?.input?.format)}, output format=`
      + `${JSON.stringify(s.audio?.output?.format)}`;
    check('session_setup', ok && !errors.length, detail);
  });

  // 2. Typed turn: conversation.item.create + response.create (the SDK sequences them).
  await step('typed_turn', 30_000, async () => {
    const mark = wire.length;
    session.sendMessage(TYPED_TEXT);
    const done = await until(() => received('response.done', mark)[0], 28_000);
    const text = transcriptOf(mark, done?.response?.id);
    check('typed_turn', done && text && done.response.status === 'completed',
      done ? `response.done ${done.response.status}, ${received('response.output_audio_transcript.delta', mark).length}`
        + ` transcript + ${received('response.output_text.delta', mark).length} text deltas: `
        + `${JSON.stringify(text.slice(0, 60))}, audio ${audioMs(done.response.id)} ms`
        : 'no response.done');
  });

  // 3-5. Spoken turn at real-time pace; while its spoken answer plays, speak again (barge-in).
  let spoken = null; // {mark, rid}: where the spoken turn began, its answer's id
  await step('spoken_turn', 35_000, async () => {
    const mark = wire.length;
    await stream(session, SPEECH);
    const transcript = await until(() => received(
      'conversation.item.input_audio_transcription.completed', mark)[0], 15_000);
    const inHistory = await until(() => userItems(session).find((item) =>
      item.itemId === transcript?.item_id && item.content.some((c) => c.transcript)), 3_000);
    const created = await until(() => received('response.created', mark)[0], 10_000);
    const rid = created?.response?.id;
    const firstAudio = await until(() => app.audio.get(rid) && transcriptOf(mark, rid), 10_000);
    spoken = { mark, rid };
    check('spoken_answer_audio', audioMs(rid) > 0, `${audioMs(rid)} ms of audio events so far for `
      + `${rid} (response.created says ${JSON.stringify(created?.response?.audio?.output?.format)})`);
    check('spoken_turn', transcript && inHistory && firstAudio,
      `transcript ${JSON.stringify(transcript?.transcript)}; user item in session.history: `
      + `${Boolean(inHistory)} (conversation.item.added for it: `
      + `${received('conversation.item.added', mark).some((e) => e.item?.id === transcript?.item_id)}); `
      + `answer ${rid ?? 'none'} streaming: ${JSON.stringify(transcriptOf(mark, rid).slice(0, 40))}`);
  });

  await step('barge_in', 40_000, async () => {
    const rid = spoken?.rid;
    if (!rid) throw new Error('no spoken answer to interrupt');
    await sleep(500);
    const firstAt = wire.find((w) => w.dir === 'in' && w.event.response_id === rid
      && w.event.type === 'response.output_audio.delta')?.at ?? 0;
    const stillPlaying = audioMs(rid) > Date.now() - started - firstAt;
    const mark = wire.length;
    await stream(session, SPEECH);
    const truncate = await until(() => sent('conversation.item.truncate', mark)[0], 3_000);
    const truncated = await until(() => received('conversation.item.truncated', mark)[0], 3_000);
    const transcript = await until(() => received(
      'conversation.item.input_audio_transcription.completed', mark)[0], 15_000);
    const answer = await until(() => received('response.done', mark).find((e) =>
      e.response.id !== rid && e.response.status === 'completed'), 30_000);
    const answerRid = answer?.response?.id;
    const first = received('response.done', spoken.mark).find((e) => e.response.id === rid);
    check('barge_in', app.interrupted && truncate && truncated && first && transcript && answer
      && audioMs(answerRid) > 0,
      `still playing when speech began: ${stillPlaying}; audio_interrupted ${app.interrupted}; `
      + `sent truncate ${JSON.stringify(truncate && { item_id: truncate.item_id,
        audio_end_ms: truncate.audio_end_ms })}, response.cancel ${sent('response.cancel', mark).length}; `
      + `truncated ${Boolean(truncated)}; interrupted answer ended ${first?.response?.status}; `
      + `new transcript ${JSON.stringify(transcript?.transcript)}; new answer ${answerRid} `
      + `${answer?.response?.status}, audio ${audioMs(answerRid)} ms`);
  });

  // 6. Function tool: the SDK runs it on response.output_item.done (function_call, completed),
  // sends conversation.item.create function_call_output and response.create.
  await step('function_call', 30_000, async () => {
    await until(() => !wire.length || received('response.done').length
      >= received('response.created').length, 15_000);
    const mark = wire.length;
    session.sendMessage(TOOL_PROMPT);
    const output = await until(() => sent('conversation.item.create', mark)
      .find((e) => e.item?.type === 'function_call_output'), 15_000);
    const outMark = wire.length;
    const answer = await until(() => received('response.done', outMark).find((e) =>
      e.response.output?.some((item) => item.type === 'message')), 15_000);
    const text = transcriptOf(outMark, answer?.response?.id);
    const calls = received('response.output_item.done', mark)
      .filter((e) => e.item?.type === 'function_call');
    check('function_call', output && app.toolEnd.includes(TOOL_OUTPUT) && answer
      && text.includes('The tool said'),
      `${calls.length} function_call item(s), the first ${JSON.stringify(calls[0]?.item && {
        name: calls[0].item.name, status: calls[0].item.status, arguments: calls[0].item.arguments })}; `
      + `tool ran ${toolCalls.length} time(s) with ${JSON.stringify(toolCalls.slice(0, 2))}; `
      + `function_call_output sent ${sent('conversation.item.create', mark).filter((e) =>
        e.item?.type === 'function_call_output').length}; answer after it: `
      + `${answer ? `${answer.response.status} ${JSON.stringify(text.slice(0, 60))}` : 'none'}`);
  });

  // Client-specific: the local history is built from conversation.item.added / .done /
  // .retrieved, and every conversation.item.retrieve (sent after each transcript and
  // truncation) must be answered with conversation.item.retrieved for that item.
  await sleep(500);
  const users = userItems(session);
  check('history', users.some((i) => i.content.some((c) => c.text === TYPED_TEXT))
    && users.filter((i) => i.content.some((c) => c.transcript)).length >= 2
    && session.history.some((i) => i.role === 'assistant')
    && session.history.some((i) => i.type === 'function_call' && i.output === TOOL_OUTPUT),
  `${app.historyUpdates} history_updated; ${JSON.stringify(summarise(session.history))}`);
  const asked = sent('conversation.item.retrieve');
  const unanswered = asked.filter((r) => !received('conversation.item.retrieved')
    .some((e) => e.item?.id === r.item_id));
  check('item_retrieve', asked.length && !unanswered.length,
    `${asked.length} conversation.item.retrieve sent, unanswered: `
    + `${JSON.stringify(unanswered.map((r) => r.item_id))}`);
  check('events_match_sdk_schema', !schemaRejected.length,
    schemaRejected.length ? JSON.stringify(schemaRejected) : 'every known event parsed');
  session.close();
}

function report() {
  const types = (dir) => [...new Set(wire.filter((w) => w.dir === dir).map((w) => w.event.type))];
  if (process.env.INTEROP_TRACE) {
    writeFileSync(process.env.INTEROP_TRACE, wire.map((w) => JSON.stringify({ ...w, event: {
      ...w.event, ...(w.event.audio ? { audio: `<${w.event.audio.length}>` } : {}),
      ...(w.event.delta && w.event.type.includes('audio.delta') ? { delta: '<audio>' } : {}) } }))
      .join('\n') + '\n');
  }
  console.log(JSON.stringify({ client: 'openai-agents-js', version: VERSION, checks, errors,
    events: types('in'), sent: types('out'), schema_rejected: schemaRejected }));
}

const limit = setTimeout(() => { report(); process.exit(1); }, RUN_LIMIT_MS);
main().catch((exc) => check('driver', false, describe(exc)))
  .finally(() => { clearTimeout(limit); report(); process.exit(0); });
