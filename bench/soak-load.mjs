// The soak run's mixed load through the sidecar, with raw fetch (every reply checked):
// W workers, each looping: initialize a session (and notifications/initialized), open a GET
// stream on it and keep reading it, then CALLS tool calls alternating `echo` (JSON reply) and
// `echo_sse` (SSE reply), each checked to answer its own text, then DELETE the session and start
// again (a session re-init every CALLS calls).
//
//   node bench/soak-load.mjs MCP_URL WORKERS SECONDS STATS_FILE
//
// Writes STATS_FILE (JSON, rewritten every 2 s and at the end) with the counts so far: requests,
// calls, errors by kind, sessions, streams opened, stream events read. Every request is bounded
// (10 s); the run is bounded by SECONDS. Exit 0 when the run completed (errors are the figure).
import { writeFileSync } from 'node:fs';

const [url, workersArg, secondsArg, statsFile] = process.argv.slice(2);
const workers = Number(workersArg);
const seconds = Number(secondsArg);
if (!url || !workers || !seconds || !statsFile) {
  console.error('usage: node soak-load.mjs MCP_URL WORKERS SECONDS STATS_FILE');
  process.exit(2);
}
const CALLS = 50;
const end = Date.now() + seconds * 1000;
const stats = { requests: 0, calls: 0, json_calls: 0, sse_calls: 0, sessions: 0, streams: 0, stream_events: 0, errors: {} };
const error = (kind, detail) => {
  stats.errors[kind] = (stats.errors[kind] ?? 0) + 1;
  if (!stats.first_errors) stats.first_errors = [];
  if (stats.first_errors.length < 10) stats.first_errors.push(`${kind}: ${String(detail).slice(0, 200)}`);
};
const save = () => writeFileSync(statsFile, JSON.stringify(stats));
setInterval(save, 2000).unref();
setTimeout(() => {
  save();
  console.error('soak-load: overall deadline passed');
  process.exit(3);
}, (seconds + 60) * 1000).unref();

const base = { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' };
async function post(body, session) {
  stats.requests += 1;
  const headers = { ...base, ...(session ? { 'Mcp-Session-Id': session, 'MCP-Protocol-Version': '2025-11-25' } : {}) };
  return fetch(url, { method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(10_000) });
}

async function readReply(res) {
  const text = await res.text();
  if ((res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    const data = text.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
    return JSON.parse(data[data.length - 1]);
  }
  return JSON.parse(text);
}

async function stream(session, stop) {
  try {
    stats.requests += 1;
    const res = await fetch(url, { headers: { Accept: 'text/event-stream', 'Mcp-Session-Id': session, 'MCP-Protocol-Version': '2025-11-25' }, signal: stop });
    if (res.status !== 200) return error('get_status', res.status);
    stats.streams += 1;
    for await (const chunk of res.body) stats.stream_events += (String(Buffer.from(chunk)).match(/^event: message$/gm) ?? []).length;
  } catch (err) {
    if (!stop.aborted) error('get_stream', err?.message ?? err);
  }
}

async function worker(w) {
  let n = 0;
  while (Date.now() < end) {
    let session;
    try {
      const res = await post({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'soak', version: '0' } } });
      session = res.headers.get('mcp-session-id');
      const reply = await readReply(res);
      if (res.status !== 200 || !session || !reply.result) throw new Error(`initialize: HTTP ${res.status} ${JSON.stringify(reply).slice(0, 200)}`);
      const ack = await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, session);
      await ack.arrayBuffer();
      if (ack.status !== 202) throw new Error(`notifications/initialized: HTTP ${ack.status}`);
      stats.sessions += 1;
    } catch (err) {
      error('initialize', err?.message ?? err);
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
    const stop = new AbortController();
    const reading = stream(session, stop.signal);
    for (let i = 0; i < CALLS && Date.now() < end; i++) {
      n += 1;
      const sse = n % 2 === 0;
      const text = `w${w}-${n}`;
      try {
        const res = await post({ jsonrpc: '2.0', id: n, method: 'tools/call', params: { name: sse ? 'echo_sse' : 'echo', arguments: { text } } }, session);
        const reply = await readReply(res);
        if (res.status !== 200 || reply.id !== n || reply.result?.content?.[0]?.text !== text) {
          throw new Error(`HTTP ${res.status} ${JSON.stringify(reply).slice(0, 200)}`);
        }
        stats.calls += 1;
        if (sse) stats.sse_calls += 1;
        else stats.json_calls += 1;
      } catch (err) {
        error(sse ? 'sse_call' : 'json_call', err?.message ?? err);
      }
    }
    stop.abort();
    await reading;
    try {
      stats.requests += 1;
      const res = await fetch(url, { method: 'DELETE', headers: { 'Mcp-Session-Id': session }, signal: AbortSignal.timeout(10_000) });
      await res.arrayBuffer();
      if (res.status >= 300) error('delete', res.status);
    } catch (err) {
      error('delete', err?.message ?? err);
    }
  }
}

await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
save();
process.exit(0);
