// Asks a real Codex CLI which MCP servers it has and what each offers: `codex app-server` over
// stdio (JSON-RPC, one message a line), `initialize`, then `mcpServerStatus/list`, which connects to
// every configured server and lists its tools without an OpenAI login (`codex mcp list` only reads
// the config). Prints one line per server, `NAME STATUS TOOL,TOOL,...`, sorted, and exits 0; exits 1
// when Codex answers with an error or not within the timeout.
//
//   node codex-status.mjs CODEX_BIN [TIMEOUT_MS]   (CODEX_HOME, HOME from the environment)
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

const [bin, timeoutMs = "60000"] = process.argv.slice(2);
const child = spawn(bin, ["app-server"], { stdio: ["pipe", "pipe", "inherit"] });
const pending = new Map();
let nextId = 1;

function request(method, params) {
  const id = nextId++;
  child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject, method }));
}

createInterface({ input: child.stdout }).on("line", (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  const waiter = msg.id !== undefined && pending.get(msg.id);
  if (!waiter || msg.method) return; // notifications and server requests are not ours
  pending.delete(msg.id);
  if (msg.error) waiter.reject(new Error(`${waiter.method}: ${JSON.stringify(msg.error)}`));
  else waiter.resolve(msg.result);
});

const timer = setTimeout(() => {
  console.error(`codex app-server did not answer within ${timeoutMs} ms`);
  child.kill("SIGKILL");
  process.exit(1);
}, Number(timeoutMs));

try {
  await request("initialize", { clientInfo: { name: "mcp-sidecar-interop", version: "0.0.0" } });
  child.stdin.write(JSON.stringify({ jsonrpc: "2.0", method: "initialized" }) + "\n");
  const servers = [];
  let cursor = null;
  do {
    const page = await request("mcpServerStatus/list", { cursor });
    servers.push(...page.data);
    cursor = page.nextCursor ?? null;
  } while (cursor);
  const lines = servers.map((s) => {
    const tools = Object.keys(s.tools ?? {}).sort().join(",");
    const status = s.toolsError ? `error:${s.toolsError}` : s.runtimeStatus ?? "listed";
    return `${s.name} ${status} ${tools || "-"}`.replace(/\s+/g, (w) => (w === "\n" ? " " : w));
  });
  for (const line of lines.sort()) console.log(line);
  clearTimeout(timer);
  child.kill();
  process.exit(0);
} catch (err) {
  console.error(String(err));
  child.kill();
  process.exit(1);
}
