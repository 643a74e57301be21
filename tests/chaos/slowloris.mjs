// Slowloris against the sidecar for chaos scenario G: N connections that each send the start of
// a request and then one more header byte every 5 s, never finishing the headers.
//
//   node slowloris.mjs PORT CONNECTIONS SECONDS
//
// stdout: one JSON line at the end: {"opened":N,"failed_to_open":N,"closed_by_server":N,
// "still_open":N}: how many the server cut off (a header-read timeout does that) within SECONDS.
import net from 'node:net';

const [port, n, seconds] = process.argv.slice(2).map(Number);
if (!port || !n || !seconds) {
  console.error('usage: node slowloris.mjs PORT CONNECTIONS SECONDS');
  process.exit(2);
}
const stats = { opened: 0, failed_to_open: 0, closed_by_server: 0, still_open: 0 };
const sockets = [];
let ending = false;
for (let i = 0; i < n; i++) {
  const s = net.connect(port, '127.0.0.1');
  s.on('connect', () => {
    stats.opened += 1;
    s.write(`POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-${i}: `);
  });
  s.on('error', () => {});
  s.on('close', () => {
    if (ending) return;
    if (s.connecting === false && s.bytesWritten > 0) stats.closed_by_server += 1;
    else stats.failed_to_open += 1;
  });
  sockets.push(s);
}
const drip = setInterval(() => {
  for (const s of sockets) if (!s.destroyed && !s.connecting) s.write('a');
}, 5000);
setTimeout(() => {
  ending = true;
  clearInterval(drip);
  stats.still_open = sockets.filter((s) => !s.destroyed).length;
  for (const s of sockets) s.destroy();
  console.log(JSON.stringify(stats));
  process.exit(0);
}, seconds * 1000);
