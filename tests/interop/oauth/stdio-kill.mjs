// The stdio front killed and respawned, as hosts do: the official TypeScript SDK's
// StdioClientTransport spawns `mcp-sidecar stdio` (settings from this process's MCP_SIDECAR_*
// variables), calls whoami CALLS times EVERY seconds apart, then kills the process with SIGKILL
// mid-session (no DELETE, no clean exit) and spawns a new one, ROUNDS times.
//
//   node stdio-kill.mjs BIN ROUNDS CALLS EVERY STDERR_LOG
//
// stdout: `round N whoami {...}` per call, then `rounds R calls C distinct-tokens T`. Exit 0 when
// every call of every round succeeded, 1 (with `FAIL ...`) otherwise. Each round must be answered
// without a login: the refresh token rotated by the previous process must come from STATE_DIR.
import { appendFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const [bin, roundsArg, callsArg, everyArg, stderrLog] = process.argv.slice(2);
const rounds = Number(roundsArg);
const callsPerRound = Number(callsArg);
const every = Number(everyArg);
if (!bin || !(rounds > 0) || !(callsPerRound > 0) || !(every >= 0) || !stderrLog) {
  console.error('usage: node stdio-kill.mjs BIN ROUNDS CALLS EVERY STDERR_LOG');
  process.exit(2);
}
function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('gave up after 300 s'), 300_000).unref();

// exactly the sidecar's settings, as a host's config would give them
const env = { PATH: process.env.PATH, HOME: process.env.HOME };
for (const [k, v] of Object.entries(process.env)) if (k.startsWith('MCP_SIDECAR_')) env[k] = v;

const jtis = new Set();
let calls = 0;
for (let round = 1; round <= rounds; round++) {
  const transport = new StdioClientTransport({ command: bin, args: ['stdio'], env, stderr: 'pipe' });
  const client = new Client({ name: 'oauth-interop-stdio-kill', version: '1.0.0' });
  const connecting = client.connect(transport);
  transport.stderr?.on('data', (chunk) => appendFileSync(stderrLog, chunk));
  try {
    await connecting;
  } catch (err) {
    fail(`round ${round}: initialize: ${err?.message ?? err}`);
  }
  for (let i = 0; i < callsPerRound; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, every * 1000));
    let result;
    try {
      result = await client.callTool({ name: 'whoami', arguments: {} });
    } catch (err) {
      fail(`round ${round} call ${i + 1}: ${err?.message ?? err}`);
    }
    const text = result?.content?.[0]?.text;
    if (result?.isError || !text) fail(`round ${round} call ${i + 1}: ${JSON.stringify(result)}`);
    const who = JSON.parse(text);
    jtis.add(who.jti);
    calls++;
    console.log(`round ${round} whoami ${text}`);
  }
  const pid = transport.pid;
  if (!pid) fail(`round ${round}: no child pid`);
  const exited = new Promise((resolve) => {
    const timer = setInterval(() => {
      try {
        process.kill(pid, 0);
      } catch {
        clearInterval(timer);
        resolve();
      }
    }, 20);
  });
  process.kill(pid, 'SIGKILL');
  await exited;
  // the transport's own close would SIGTERM a process that is already gone: harmless
  await client.close().catch(() => {});
}
console.log(`rounds ${rounds} calls ${calls} distinct-tokens ${jtis.size}`);
process.exit(0);
