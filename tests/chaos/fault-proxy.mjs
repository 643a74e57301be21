// A fault-injecting TCP proxy for the chaos scenarios: forwards 127.0.0.1:LISTEN to
// 127.0.0.1:TARGET byte for byte, until told to fail in one of the ways a real authorization
// server fails.
//
//   node fault-proxy.mjs LISTEN_PORT TARGET_PORT CONTROL_PORT
//
// Control (loopback only): `POST /mode/NAME` on CONTROL_PORT, NAME one of
//   pass     forward (the default)
//   http500  answer every new connection `HTTP/1.1 500` with a JSON body, then close it
//   refuse   stop listening, so connects are refused (ECONNREFUSED) as by a host with nothing on
//            the port; listening resumes on the same port when the mode changes
//   hang     accept connections and never answer (no byte, no close)
// Changing the mode also ends every connection opened before it (a pooled keep-alive connection to
// a server that died does not survive its death either). stdout: one JSON line per mode change
// and per connection: {"event":"connection","mode":..}.
import net from 'node:net';
import http from 'node:http';

const [listenPort, targetPort, controlPort] = process.argv.slice(2).map(Number);
if (![listenPort, targetPort, controlPort].every((p) => Number.isInteger(p) && p > 0)) {
  console.error('usage: node fault-proxy.mjs LISTEN_PORT TARGET_PORT CONTROL_PORT');
  process.exit(2);
}
const log = (o) => process.stdout.write(`${JSON.stringify({ t: Date.now() / 1000, ...o })}\n`);
const MODES = new Set(['pass', 'http500', 'refuse', 'hang']);
let mode = 'pass';
const open = new Set();

function track(socket) {
  open.add(socket);
  socket.on('close', () => open.delete(socket));
  socket.on('error', () => {});
}

function onConnection(client) {
  track(client);
  log({ event: 'connection', mode });
  if (mode === 'http500') {
    const body = '{"error":"server_error","error_description":"injected by fault-proxy"}';
    client.end(`HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
    return;
  }
  if (mode === 'hang') return; // held open, never answered
  const upstream = net.connect(targetPort, '127.0.0.1');
  track(upstream);
  client.pipe(upstream);
  upstream.pipe(client);
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
}

let server = null;
function listen() {
  return new Promise((resolve, reject) => {
    server = net.createServer(onConnection);
    server.once('error', reject);
    server.listen(listenPort, '127.0.0.1', resolve);
  });
}
function unlisten() {
  return new Promise((resolve) => {
    if (!server) return resolve();
    server.close(() => resolve());
    server = null;
  });
}

async function setMode(next) {
  for (const s of open) s.destroy();
  open.clear();
  if (next === 'refuse' && mode !== 'refuse') await unlisten();
  if (next !== 'refuse' && mode === 'refuse') {
    // The port was ours a moment ago; retry briefly if the kernel has not released it yet.
    for (let i = 0; ; i++) {
      try {
        await listen();
        break;
      } catch (err) {
        if (i >= 50) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
  mode = next;
  log({ event: 'mode', mode });
}

await listen();
http
  .createServer((req, res) => {
    const m = /^\/mode\/([a-z0-9]+)$/.exec(req.url ?? '');
    if (req.method !== 'POST' || !m || !MODES.has(m[1])) {
      res.writeHead(404).end('POST /mode/pass|http500|refuse|hang\n');
      return;
    }
    setMode(m[1]).then(
      () => res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ mode })),
      (err) => res.writeHead(500).end(String(err)),
    );
  })
  .listen(controlPort, '127.0.0.1', () => log({ event: 'listening', listen: listenPort, target: targetPort, control: controlPort }));
