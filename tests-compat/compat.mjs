#!/usr/bin/env node
// Parley Socket.IO compatibility scenario, driven by the official socket.io-client.
//
// Env: BASE_URL (default http://127.0.0.1:18090), TRANSPORT = websocket | polling | upgrade,
//      COMPAT_VERBOSE=1 to log every received event to stderr.
// Prints one JSON line {"transport","passed":[…],"failed":[{name,error}…]} and exits 0 only if nothing failed.
// See README.md and /work/shared/api-contract.md sections 7 and 14.2.

import { randomBytes } from 'node:crypto';
import { io } from 'socket.io-client';

const BASE_URL = (process.env.BASE_URL || 'http://127.0.0.1:18090').replace(/\/+$/, '');
const TRANSPORT = process.env.TRANSPORT || 'websocket';
const VERBOSE = process.env.COMPAT_VERBOSE === '1';
const STEP_TIMEOUT_MS = 5000; // every single wait is bounded by this
const WATCHDOG_MS = Math.min(Number(process.env.COMPAT_WATCHDOG_MS) || 30000, 30000); // the whole run is bounded by this
const QUIET_WINDOW_MS = 300; // how long we watch for an event that must NOT arrive
const CLOSE_GRACE_MS = 300; // pause before exiting so close packets get out
const SOCKET_PATH = '/chat/socket.io';
const ENVELOPE = '{"__encrypted":true,"type":3,"body":"QUJD"}';
const PLAINTEXT = 'plaintext typed by the user';
const PASSWORD = 'Passw0rd!';
const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

const TRANSPORTS = {
  websocket: { transports: ['websocket'] },
  polling: { transports: ['polling'] },
  upgrade: { transports: ['polling', 'websocket'], upgrade: true },
};

const passed = [];
const failed = [];
const pending = new Map(); // id -> description, reported by the watchdog
const clients = [];
let pendingSeq = 0;
let currentCheck = '(setup)';
let finished = false;

function log(...args) {
  if (VERBOSE) console.error('[compat]', ...args);
}

function show(v) {
  try {
    return JSON.stringify(v, (_k, x) => (x instanceof Error ? { message: x.message, data: x.data } : x));
  } catch {
    return String(v);
  }
}

function track(desc, promise) {
  const id = ++pendingSeq;
  pending.set(id, `${currentCheck}: ${desc}`);
  return promise.finally(() => pending.delete(id));
}

function finish(extraFailure) {
  if (finished) return;
  finished = true;
  if (extraFailure) failed.push(extraFailure);
  for (const c of clients) {
    try {
      c.socket?.disconnect();
      c.socket?.io?.disconnect(); // close the Manager and its engine as well
    } catch {
      /* ignore */
    }
  }
  const line = JSON.stringify({ transport: TRANSPORT, passed, failed });
  const code = failed.length === 0 && passed.length > 0 ? 0 : 1;
  // Give the close packets (a polling POST in particular) a moment to reach the server, so the users
  // do not linger as "online" until the server's ping timeout.
  setTimeout(() => process.stdout.write(line + '\n', () => process.exit(code)), CLOSE_GRACE_MS);
}

// Global watchdog: report what is still pending, close everything, exit 1.
const watchdog = setTimeout(() => {
  const what = [...pending.values()];
  console.error(`[compat] watchdog: ${WATCHDOG_MS} ms elapsed; current check "${currentCheck}"; pending: ${show(what)}`);
  finish({ name: 'watchdog', error: `run exceeded ${WATCHDOG_MS} ms in check "${currentCheck}"; pending: ${what.join(' | ') || '(nothing)'}` });
}, WATCHDOG_MS);

process.on('unhandledRejection', (err) => {
  finish({ name: 'internal', error: `unhandled rejection in "${currentCheck}": ${err?.stack || err}` });
});

// ---------------------------------------------------------------------------------------------
// assertions

class CheckError extends Error {}

function assert(cond, msg) {
  if (!cond) throw new CheckError(msg);
}

function assertEq(actual, expected, what) {
  if (show(actual) !== show(expected)) {
    throw new CheckError(`${what}: expected ${show(expected)}, got ${show(actual)}`);
  }
}

async function check(name, fn, requires = []) {
  if (finished) return false;
  const missing = requires.filter((r) => !passed.includes(r));
  if (missing.length) {
    failed.push({ name, error: `not run: prerequisite failed: ${missing.join(', ')}` });
    return false;
  }
  currentCheck = name;
  const t0 = Date.now();
  try {
    await fn();
    passed.push(name);
    log(`PASS ${name} (${Date.now() - t0} ms)`);
    return true;
  } catch (err) {
    const error = err instanceof CheckError ? err.message : `${err?.message || err}`;
    failed.push({ name, error });
    log(`FAIL ${name}: ${error}`);
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers (global fetch, cookie auth like the browser)

async function http(method, path, { cookie, body } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (cookie) headers.Cookie = `jwt=${cookie}`;
  const res = await track(
    `${method} ${path}`,
    fetch(`${BASE_URL}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
    }),
  ).catch((err) => {
    throw new CheckError(`${method} ${path}: request failed: ${err?.cause?.code || err?.message || err}`);
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { res, text, json };
}

async function register(tag) {
  const username = `compat_${tag}_${randomBytes(5).toString('hex')}`; // lowercase, 3-30 chars
  const email = `${username}@example.com`;
  const { res, text, json } = await http('POST', '/user/register', { body: { username, email, password: PASSWORD } });
  assert(res.status === 200, `POST /user/register (${username}): HTTP ${res.status} ${text}`);
  const id = json?.data?.id;
  assert(typeof id === 'string' && id.length > 0, `POST /user/register (${username}): no data.id in ${text}`);
  const setCookies = res.headers.getSetCookie();
  const jwt = setCookies.map((c) => c.split(';')[0].trim()).find((c) => c.startsWith('jwt='));
  assert(jwt && jwt.length > 4, `POST /user/register (${username}): no jwt cookie in Set-Cookie ${show(setCookies)}`);
  return { tag, id, username: json.data.username ?? username, cookie: jwt.slice(4) };
}

// ---------------------------------------------------------------------------------------------
// Socket client with an event journal, so nothing is missed between "emit" and "listen".

let eventSeq = 0;

class Client {
  constructor(label, cookie) {
    this.label = label;
    this.cookie = cookie;
    this.events = [];
    this.waiters = new Set();
    this.upgradedTo = null;
    clients.push(this);
  }

  connect() {
    const opts = {
      path: SOCKET_PATH,
      withCredentials: true,
      ...TRANSPORTS[TRANSPORT],
      reconnection: false,
    };
    // The header name must be lowercase: with withCredentials:true, engine.io-client's Node websocket
    // transport sets `headers.cookie` from its (empty) cookie jar, and Node treats header names
    // case-insensitively, so an `extraHeaders.Cookie` would be replaced by that empty value and the WS
    // handshake would carry no cookie at all (the server then rightly answers "Authentication required").
    if (this.cookie !== undefined) opts.extraHeaders = { cookie: `jwt=${this.cookie}` };
    const socket = io(BASE_URL, opts);
    this.socket = socket;
    socket.onAny((ev, ...args) => this.record(ev, args));
    socket.on('connect', () => this.record('connect', []));
    socket.on('connect_error', (err) => this.record('connect_error', [err]));
    socket.on('disconnect', (reason, desc) => this.record('disconnect', [reason, desc?.message]));
    const engine = socket.io.engine;
    if (engine) {
      engine.on('upgrade', (t) => {
        this.upgradedTo = t?.name;
        this.record('engine:upgrade', [t?.name]);
      });
      engine.on('upgradeError', (err) => this.record('engine:upgradeError', [err?.message]));
    }
    return this;
  }

  get transportName() {
    return this.socket?.io?.engine?.transport?.name;
  }

  mark() {
    return eventSeq;
  }

  record(ev, args) {
    const e = { seq: ++eventSeq, ev, args, at: Date.now() };
    this.events.push(e);
    log(`${this.label} <- ${ev} ${show(args)}`);
    for (const w of [...this.waiters]) w(e);
  }

  seen(ev, after = 0) {
    return this.events.filter((e) => e.ev === ev && e.seq > after);
  }

  // Resolve with the first event named `ev` (after `after`) whose first argument satisfies `pred`.
  waitFor(ev, pred, desc, { after = 0, timeout = STEP_TIMEOUT_MS, failOn = [] } = {}) {
    const p = new Promise((resolve, reject) => {
      const test = (e) => {
        if (e.seq <= after) return false;
        if (failOn.includes(e.ev)) {
          done();
          reject(new CheckError(`${this.label}: got "${e.ev}" ${show(e.args)} while waiting for ${desc}`));
          return true;
        }
        if (e.ev === ev && pred(e.args[0], e)) {
          done();
          resolve(e);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        const got = this.seen(ev, after).map((e) => e.args);
        reject(
          new CheckError(
            `${this.label}: no ${desc} within ${timeout} ms; "${ev}" events received: ${got.length ? show(got) : 'none'}`,
          ),
        );
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(test);
      };
      for (const e of this.events) if (test(e)) return;
      this.waiters.add(test);
    });
    return track(`${this.label} waiting for ${desc}`, p);
  }

  async emitWithAck(ev, payload) {
    const p = this.socket.timeout(STEP_TIMEOUT_MS).emitWithAck(ev, payload);
    return track(`${this.label} ack of ${ev} ${show(payload)}`, p).catch((err) => {
      throw new CheckError(`${this.label}: no ack for ${ev} ${show(payload)} within ${STEP_TIMEOUT_MS} ms (${err?.message})`);
    });
  }
}

const isPresence = (userId, online) => (d) => d && d.userId === userId && d.online === online;

// ---------------------------------------------------------------------------------------------
// scenario

async function main() {
  if (!TRANSPORTS[TRANSPORT]) {
    finish({ name: 'config', error: `TRANSPORT must be one of ${Object.keys(TRANSPORTS).join(', ')}, got "${TRANSPORT}"` });
    return;
  }
  let a;
  let b;
  let A;
  let B;
  let restId;
  let socketOnlyId;

  await check('register', async () => {
    [a, b] = await Promise.all([register('a'), register('b')]);
    log(`users: A=${a.username} ${a.id}, B=${b.username} ${b.id}`);
  });

  const expectTransport = async (c) => {
    if (TRANSPORT === 'upgrade') {
      await c.waitFor('engine:upgrade', () => true, 'engine "upgrade" event', { failOn: ['engine:upgradeError'] });
      assertEq(c.upgradedTo, 'websocket', `${c.label}: transport of the upgrade event`);
      assertEq(c.transportName, 'websocket', `${c.label}: engine transport after upgrade`);
    } else {
      assertEq(c.transportName, TRANSPORT, `${c.label}: engine transport`);
    }
  };

  await check(
    'connect-a',
    async () => {
      A = new Client('A', a.cookie).connect();
      await A.waitFor('connect', () => true, '"connect"', { failOn: ['connect_error', 'disconnect'] });
      assert(A.socket.connected, 'A: socket.connected is false after "connect"');
    },
    ['register'],
  );

  await check(
    'presence-self',
    async () => {
      await A.waitFor('presence', isPresence(a.id, true), `presence {userId: A, online: true}`);
    },
    ['connect-a'],
  );

  await check(
    'connect-b',
    async () => {
      B = new Client('B', b.cookie).connect();
      await B.waitFor('connect', () => true, '"connect"', { failOn: ['connect_error', 'disconnect'] });
    },
    ['connect-a'],
  );

  await check(
    'presence-peer-online',
    async () => {
      await A.waitFor('presence', isPresence(b.id, true), `presence {userId: B, online: true}`);
      // io.emit reaches the connecting socket too
      await B.waitFor('presence', isPresence(b.id, true), `presence {userId: B, online: true} (own)`);
    },
    ['connect-b'],
  );

  await check(
    'presence-bulk',
    async () => {
      const e = await B.waitFor('presenceBulk', (d) => Array.isArray(d?.onlineUserIds), 'presenceBulk {onlineUserIds: [...]}');
      const ids = e.args[0].onlineUserIds;
      assert(ids.includes(a.id), `B: presenceBulk does not contain A (${a.id}): ${show(e.args[0])}`);
      assert(!ids.includes(b.id), `B: presenceBulk contains B itself: ${show(e.args[0])}`);
      assertEq(Object.keys(e.args[0]), ['onlineUserIds'], 'B: presenceBulk keys');
    },
    ['connect-b'],
  );

  await check(
    'transport',
    async () => {
      await Promise.all([expectTransport(A), expectTransport(B)]);
    },
    ['connect-a', 'connect-b'],
  );

  const both = ['connect-a', 'connect-b'];

  await check(
    'rest-then-socket-send',
    async () => {
      const { res, text, json } = await http('POST', '/chat/send', {
        cookie: a.cookie,
        body: { receiverId: b.id, message: ENVELOPE },
      });
      assert(res.status === 200, `POST /chat/send: HTTP ${res.status} ${text}`);
      restId = json?.data?.id;
      assert(typeof restId === 'string' && restId, `POST /chat/send: no data.id in ${text}`);
      assertEq(json.data.message, ENVELOPE, 'POST /chat/send data.message');

      // REST alone must not broadcast (contract 4.1 / 15.6)
      const afterRest = B.mark();
      await new Promise((r) => setTimeout(r, QUIET_WINDOW_MS));
      const early = B.seen('receiveMessage', afterRest);
      assert(early.length === 0, `B: got receiveMessage after POST /chat/send alone (before the socket sendMessage): ${show(early.map((e) => e.args[0]))}`);

      const mark = B.mark();
      const ack = await A.emitWithAck('sendMessage', { _id: restId, senderId: a.id, receiverId: b.id, message: PLAINTEXT });
      assertEq(ack, { ok: true, id: restId }, 'A: sendMessage (re-send path) ack');

      const msgEv = await B.waitFor('receiveMessage', (d) => d?._id === restId || d?.id === restId, `receiveMessage for ${restId}`, { after: mark });
      const typingEv = B.seen('typing', mark).find((e) => e.args[0]?.userId === a.id && e.args[0]?.isTyping === false);
      assert(typingEv, `B: no typing {userId: A, isTyping: false} before receiveMessage; typing events: ${show(B.seen('typing', mark).map((e) => e.args[0]))}`);
      assert(typingEv.seq < msgEv.seq, `B: typing {isTyping:false} arrived AFTER receiveMessage`);
      const m = msgEv.args[0];
      assertEq(m._id, restId, 'receiveMessage._id');
      assertEq(m.id, restId, 'receiveMessage.id');
      assertEq(m.content, ENVELOPE, 'receiveMessage.content');
      assertEq(m.message, ENVELOPE, 'receiveMessage.message');
      assertEq(m.senderId, a.id, 'receiveMessage.senderId');
      assertEq(m.receiverId, b.id, 'receiveMessage.receiverId');
      assertEq(m.senderUsername, a.username, 'receiveMessage.senderUsername');
      assert(!show(m).includes(PLAINTEXT), `receiveMessage leaks the plaintext: ${show(m)}`);
      assert(typeof m.createdAt === 'string' && !Number.isNaN(Date.parse(m.createdAt)), `receiveMessage.createdAt not a date: ${show(m)}`);
      assert(A.seen('receiveMessage', mark).length === 0, `A (the sender) got receiveMessage: ${show(A.seen('receiveMessage', mark).map((e) => e.args[0]))}`);
    },
    both,
  );

  await check(
    'socket-only-send',
    async () => {
      const mark = B.mark();
      const ack = await A.emitWithAck('sendMessage', { senderId: a.id, receiverId: b.id, message: ENVELOPE });
      assert(ack?.ok === true && typeof ack.id === 'string' && ack.id, `A: sendMessage (new-message path) ack: expected {ok:true,id}, got ${show(ack)}`);
      assertEq(Object.keys(ack).sort(), ['id', 'ok'], 'A: sendMessage ack keys');
      socketOnlyId = ack.id;
      assert(socketOnlyId !== restId, `socket-only send reused the REST message id ${restId}`);
      const e = await B.waitFor('receiveMessage', (d) => d?._id === socketOnlyId, `receiveMessage for ${socketOnlyId}`, { after: mark });
      const m = e.args[0];
      assertEq(m.id, socketOnlyId, 'receiveMessage.id');
      assertEq(m.content, ENVELOPE, 'receiveMessage.content');
      assertEq(m.message, ENVELOPE, 'receiveMessage.message');
      assertEq(m.senderId, a.id, 'receiveMessage.senderId');
      assertEq(m.senderUsername, a.username, 'receiveMessage.senderUsername');
    },
    both,
  );

  await check(
    'send-as-other-user-rejected',
    async () => {
      const mark = B.mark();
      const ack = await A.emitWithAck('sendMessage', { senderId: b.id, receiverId: a.id, message: ENVELOPE });
      assertEq(ack, { ok: false, error: 'Unauthorized: cannot send as another user' }, 'A: sendMessage as B ack');
      await new Promise((r) => setTimeout(r, QUIET_WINDOW_MS));
      const leaked = [...A.seen('receiveMessage', mark), ...B.seen('receiveMessage', mark)];
      assert(leaked.length === 0, `a rejected sendMessage was still delivered: ${show(leaked.map((e) => e.args[0]))}`);
    },
    both,
  );

  await check(
    'message-delivered',
    async () => {
      const mark = A.mark();
      B.socket.emit('messageDelivered', { messageId: restId });
      const e = await A.waitFor('messageDelivered', (d) => d?.messageId === restId, `messageDelivered {messageId: ${restId}}`, { after: mark });
      assertEq(e.args[0], { messageId: restId, by: b.id }, 'A: messageDelivered payload');
    },
    ['rest-then-socket-send'],
  );

  await check(
    'mark-read',
    async () => {
      const mark = A.mark();
      B.socket.emit('markRead', { senderId: a.id });
      const e = await A.waitFor('messageRead', () => true, 'messageRead', { after: mark });
      assertEq(e.args[0], { by: b.id }, 'A: messageRead payload');
    },
    both,
  );

  await check(
    'typing-timeout',
    async () => {
      const mark = B.mark();
      A.socket.emit('typing', { receiverId: b.id, isTyping: true });
      const on = await B.waitFor('typing', (d) => d?.userId === a.id, 'typing from A', { after: mark });
      assertEq(on.args[0], { userId: a.id, isTyping: true }, 'B: first typing event');
      const off = await B.waitFor('typing', (d) => d?.userId === a.id && d?.isTyping === false, 'typing {isTyping:false} after the server timeout', { after: on.seq });
      log(`typing false arrived ${off.at - on.at} ms after typing true`);
    },
    both,
  );

  await check(
    'history-stored-once',
    async () => {
      const { res, text, json } = await http('GET', `/chat/get/${b.id}?limit=50&offset=0`, { cookie: a.cookie });
      assert(res.status === 200, `GET /chat/get/B: HTTP ${res.status} ${text}`);
      const rows = json?.data;
      assert(Array.isArray(rows), `GET /chat/get/B: data is not an array: ${text}`);
      assertEq(rows.map((r) => r.id), [restId, socketOnlyId], 'GET /chat/get/B message ids (the re-send must not insert again)');
      for (const r of rows) assertEq(r.message, ENVELOPE, `stored message ${r.id}`);
      const dupes = B.seen('receiveMessage').filter((e) => e.args[0]?._id === restId);
      assertEq(dupes.length, 1, `B: number of receiveMessage for ${restId}`);
    },
    ['rest-then-socket-send', 'socket-only-send'],
  );

  const rejected = async (label, cookie, expected) => {
    const c = new Client(label, cookie).connect();
    const e = await c.waitFor('connect_error', () => true, '"connect_error"', { failOn: ['connect'] });
    const err = e.args[0];
    assertEq(err?.message, expected, `${label}: connect_error message`);
    assert(!c.socket.connected, `${label}: socket is connected after connect_error`);
    c.socket.close();
    c.socket.io.disconnect();
  };

  await check('connect-error-invalid-token', () => rejected('BadCookie', 'garbage', 'Invalid token'));
  await check('connect-error-no-cookie', () => rejected('NoCookie', undefined, 'Authentication required'));

  await check(
    'presence-offline',
    async () => {
      const mark = A.mark();
      B.socket.disconnect();
      const e = await A.waitFor('presence', isPresence(b.id, false), 'presence {userId: B, online: false}', { after: mark });
      const d = e.args[0];
      assert(typeof d.lastSeen === 'string' && ISO_RE.test(d.lastSeen) && !Number.isNaN(Date.parse(d.lastSeen)), `A: presence offline lastSeen is not an ISO string: ${show(d)}`);
      assertEq(Object.keys(d).sort(), ['lastSeen', 'online', 'userId'], 'A: presence offline keys');
    },
    both,
  );

  if (TRANSPORT === 'upgrade') {
    await check('still-on-websocket', async () => assertEq(A.transportName, 'websocket', 'A: engine transport at the end'), ['transport']);
  }
}

main()
  .catch((err) => finish({ name: 'internal', error: `${err?.stack || err}` }))
  .then(() => {
    clearTimeout(watchdog);
    finish();
  });
