// Approves a pending device-code login (RFC 8628) the way a person would: through the authorization
// server's OWN pages, with fetch and a cookie jar instead of a browser. Nothing here knows
// oidc-provider's routes beyond the verification URI: every next step is the form or redirect the
// previous page gave.
//
//   node approve-device.mjs VERIFICATION_URI USER_CODE [LOGIN]
//
// GET the verification URI (the user-code page), submit the user code (the form's hidden xsrf field
// included), confirm the device, sign in on the login page (any login name; the provider's
// development interactions accept any), grant consent ("Continue"), until a page says the sign-in
// succeeded. Forms are parsed generically from the HTML: the form's action and method, its hidden
// inputs, text and password fields filled in; buttons named `abort` and links to cancel are never
// chosen. stdout: one line per step; exit 0 on success, 1 with `FAIL ...` otherwise.
const [verificationUri, userCode, login = 'interop-user'] = process.argv.slice(2);
if (!verificationUri || !userCode) {
  console.error('usage: node approve-device.mjs VERIFICATION_URI USER_CODE [LOGIN]');
  process.exit(2);
}

function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
setTimeout(() => fail('gave up after 30 s'), 30_000).unref();

// --- cookie jar: name, value, path and host of each cookie the pages set (RFC 6265, the parts used here)
const jar = new Map(); // `${host} ${path} ${name}` -> { host, path, name, value }
function storeCookies(url, res) {
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';').map((s) => s.trim());
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const name = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    let path = url.pathname.replace(/\/[^/]*$/, '') || '/';
    let expired = false;
    for (const attr of attrs) {
      const [k, v = ''] = attr.split('=');
      const key = k.toLowerCase();
      if (key === 'path' && v.startsWith('/')) path = v;
      if (key === 'max-age' && Number(v) <= 0) expired = true;
      if (key === 'expires' && Date.parse(v) <= Date.now()) expired = true;
    }
    const id = `${url.host} ${path} ${name}`;
    if (expired || value === '') jar.delete(id);
    else jar.set(id, { host: url.host, path, name, value });
  }
}
function cookieHeader(url) {
  const matches = [...jar.values()].filter(
    (c) => c.host === url.host && (url.pathname === c.path || url.pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`)),
  );
  return matches.map((c) => `${c.name}=${c.value}`).join('; ');
}

// --- HTML forms
const decode = (s) =>
  s.replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
function attrsOf(tag) {
  const attrs = {};
  for (const m of tag.matchAll(/([^\s=/<>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?/g)) {
    attrs[m[1].toLowerCase()] = decode(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return attrs;
}
function forms(html) {
  const out = [];
  for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const form = attrsOf(m[1]);
    const inputs = [...m[2].matchAll(/<input\b([^>]*)>/gi)].map((i) => attrsOf(i[1]));
    // submit buttons inside the form, or outside it pointing at it with form="id"
    const buttons = [...m[2].matchAll(/<button\b([^>]*)>([\s\S]*?)<\/button>/gi)].map((b) => ({ ...attrsOf(b[1]), text: b[2] }));
    if (form.id) {
      for (const b of html.matchAll(/<button\b([^>]*)>([\s\S]*?)<\/button>/gi)) {
        const a = attrsOf(b[1]);
        if (a.form === form.id) buttons.push({ ...a, text: b[2] });
      }
    }
    out.push({ ...form, inputs, buttons });
  }
  return out;
}
function fill(form) {
  const fields = new URLSearchParams();
  for (const input of form.inputs) {
    const type = (input.type ?? 'text').toLowerCase();
    if (!input.name || ['submit', 'button', 'image', 'reset'].includes(type)) continue;
    if (type === 'hidden') fields.append(input.name, input.value ?? '');
    else if (input.name === 'user_code') fields.append(input.name, userCode);
    else if (type === 'password') fields.append(input.name, 'any-password');
    else if (['checkbox', 'radio'].includes(type)) {
      if ('checked' in input) fields.append(input.name, input.value ?? 'on');
    } else fields.append(input.name, input.value || login);
  }
  // the submit button a person would press: a named one that is not abort/cancel adds its value
  const button = form.buttons.find((b) => b.name && !/abort|cancel|deny/i.test(`${b.name} ${b.value}`));
  if (button) fields.append(button.name, button.value ?? '');
  return fields;
}

// --- the walk
const text = (html) => html.replace(/<style[\s\S]*?<\/style>|<script[\s\S]*?<\/script>/gi, '').replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim();

async function request(url, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  const cookie = cookieHeader(url);
  if (cookie) headers.Cookie = cookie;
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  storeCookies(url, res);
  return res;
}

let url = new URL(verificationUri);
let init = { method: 'GET' };
for (let step = 1; step <= 20; step += 1) {
  const res = await request(url, init);
  if (res.status >= 300 && res.status < 400) {
    const next = new URL(res.headers.get('location'), url);
    console.log(`step ${step}: ${init.method} ${url.pathname} -> ${res.status} ${next.pathname}`);
    url = next;
    init = { method: 'GET' };
    continue;
  }
  const html = await res.text();
  const words = text(html);
  console.log(`step ${step}: ${init.method} ${url.pathname} -> ${res.status} "${words.slice(0, 100)}"`);
  if (res.status >= 400) fail(`${init.method} ${url.pathname} answered ${res.status}: ${words.slice(0, 300)}`);
  if (/success/i.test(words) && forms(html).length === 0) {
    console.log('approved');
    process.exit(0);
  }
  if (/incorrect|expired|already used|error|interrupted|denied/i.test(words)) fail(`the provider says: ${words.slice(0, 300)}`);
  const form = forms(html).find((f) => (f.method ?? 'get').toLowerCase() === 'post');
  if (!form) fail(`no form to submit and no success on ${url.pathname}: ${words.slice(0, 300)}`);
  const body = fill(form);
  url = new URL(form.action || url.href, url);
  init = { method: 'POST', body: body.toString(), headers: { 'Content-Type': 'application/x-www-form-urlencoded' } };
}
fail('no success page after 20 steps');
