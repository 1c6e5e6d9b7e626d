// Drives a Blobs server with the official socket.io-client, as browser apps of the original do.
// Usage: BLOBS_URL=... BLOBS_TOKEN=... BLOBS_TOKEN_OTHER=... node client.mjs websocket|polling|upgrade
// (`upgrade`: the client's default, long-polling first, then upgraded to a WebSocket)
// Exits 0 and prints "ok" when every check passed; exits 1 with the failed check otherwise.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { io } from 'socket.io-client';

const url = process.env.BLOBS_URL;
const token = process.env.BLOBS_TOKEN;
const otherToken = process.env.BLOBS_TOKEN_OTHER;
const transport = process.argv[2] ?? 'websocket';
const transports = transport === 'upgrade' ? ['polling', 'websocket'] : [transport];
const options = { transports, reconnection: false, forceNew: true };

// The test's patience (BLOBS_PATIENCE_MS), generous because the machine may be busy: past it
// the scenario fails rather than hangs, and names the last wait it began.
const patience = Number(process.env.BLOBS_PATIENCE_MS ?? 300_000);
// The last wait the scenario began, for the message if time runs out.
let waiting = 'the first step';
setTimeout(() => {
  console.error(`client.mjs ${transport}: not done within ${patience / 1000} s; the last wait begun: ${waiting}`);
  process.exit(1);
}, patience).unref();

const newRef = () => randomBytes(32).toString('hex');

function connect(auth) {
  waiting = 'a connection';
  const socket = io(url, { ...options, auth });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(err);
    });
  });
}

// Resolves once the socket's connection has been upgraded to a WebSocket.
function upgraded(socket) {
  waiting = 'the upgrade to a WebSocket';
  const engine = socket.io.engine;
  if (engine.transport.name === 'websocket') return Promise.resolve();
  return new Promise((resolve) => engine.once('upgrade', resolve));
}

function nextEvent(socket, name) {
  waiting = `the event ${name}`;
  return new Promise((resolve) => socket.once(name, (...args) => resolve(args)));
}

// The callback's arguments exactly, to tell "no argument" from null.
function call(socket, event, ...args) {
  waiting = `the ack of ${event}`;
  return new Promise((resolve) => socket.emit(event, ...args, (...ackArgs) => resolve(ackArgs)));
}

async function main() {
  // A refused handshake carries "Access denied".
  for (const auth of [{}, { token: 'garbage' }]) {
    await assert.rejects(connect(auth), (err) => err.message === 'Access denied');
  }

  // The apps' pattern: emit `ref` from the connect handler, before anything else.
  const ref = newRef();
  const refAck = new Promise((resolve) => {
    const socket = io(url, { ...options, auth: { token } });
    socket.on('connect', () => socket.emit('ref', ref, (...args) => resolve([socket, args])));
  });
  const [writer, refArgs] = await refAck;
  assert.deepEqual(refArgs, [], 'ref is acknowledged with no argument');
  assert.deepEqual(await call(writer, 'get', {}), [null], 'a missing blob is null');

  const watcher = await connect({ token });
  await call(watcher, 'ref', ref.toUpperCase());
  const otherBucket = await connect({ token: otherToken });
  await call(otherBucket, 'ref', ref);
  let otherBucketHeard = false;
  otherBucket.on('changed', () => { otherBucketHeard = true; });
  let writerHeard = false;
  writer.on('changed', () => { writerHeard = true; });

  const changed = nextEvent(watcher, 'changed');
  assert.deepEqual(await call(writer, 'set', { data: 'aGVsbG8=' }), [{ success: true, version: 1 }]);
  assert.deepEqual(await changed, [], 'changed has no argument');
  assert.deepEqual(await call(watcher, 'get', { known: 1 }), [{ version: 1 }]);
  assert.deepEqual(await call(watcher, 'get', {}), [{ data: 'aGVsbG8=', version: 1 }]);
  assert.deepEqual(
    await call(watcher, 'set', { data: 'eA==', version: 7 }),
    [{ success: false, data: 'aGVsbG8=', version: 1 }],
  );

  // The documented maximum fits in one set on this transport.
  const max = 'QUJD'.repeat(1_048_576 / 4);
  const bigChanged = nextEvent(watcher, 'changed');
  assert.deepEqual(await call(writer, 'set', { data: max, version: 1 }), [{ success: true, version: 2 }]);
  await bigChanged;
  const [big] = await call(watcher, 'get', { known: 1 });
  assert.equal(big.data.length, 1_048_576);
  assert.equal(big.version, 2);

  // Twelve of them asked for at once, several times what the server lets wait for one client:
  // each reply waits until the client has read enough of those before, and all arrive.
  if (transport === 'upgrade') await upgraded(watcher);
  const bigs = await Promise.all(Array.from({ length: 12 }, () => call(watcher, 'get', {})));
  for (const [reply] of bigs) assert.equal(reply.data.length, 1_048_576);

  // Wrong shapes are answered with an error and the socket stays usable.
  for (const [event, arg] of [['get', null], ['set', 'x'], ['get', 5], ['ref', 'nothex'], ['set', { version: 0 }]]) {
    const [ack] = await call(writer, event, arg);
    assert.equal(typeof ack.error, 'string', `${event}(${JSON.stringify(arg)})`);
  }
  assert.equal(typeof (await call(writer, 'now'))[0].timestamp, 'number');

  // Events take effect in order: ref then get at once, without waiting for the first ack.
  const fresh = newRef();
  writer.emit('ref', fresh, () => {});
  assert.deepEqual(await call(writer, 'get', {}), [null]);
  writer.emit('ref', ref, () => {});
  assert.equal((await call(writer, 'get', {}))[0].version, 2);

  // One more round trip on each socket that must not have heard `changed`.
  await call(otherBucket, 'now');
  assert.equal(otherBucketHeard, false, 'other buckets hear nothing');
  assert.equal(writerHeard, false, 'the writer does not receive its own changed');

  // An event without an ack callback disconnects that socket.
  const rude = await connect({ token });
  const reason = new Promise((resolve) => rude.once('disconnect', resolve));
  rude.emit('now');
  assert.equal(await reason, 'io server disconnect');

  // Content-addressed blobs: inline upload, the direct path and redirects. The test passes in
  // two contents with their BLAKE3 hashes (a JSON file named by BLOBS_CONTENT), as a NodalMerge
  // client computes them.
  const [inline, direct] = JSON.parse(readFileSync(process.env.BLOBS_CONTENT, 'utf8'));
  const available = nextEvent(watcher, 'blob-available');
  const [uploaded] = await call(writer, 'blob-upload', { blobs: [inline] });
  assert.deepEqual(uploaded, { accepted: [inline.hash], rejected: [] });
  assert.deepEqual(await available, [{ hash: inline.hash }]);

  // Without an ack, replies come as events of their own name.
  const grant = nextEvent(writer, 'upload-granted');
  const directBytes = Buffer.from(direct.data_b64, 'base64');
  writer.emit('request-upload', { hash: direct.hash, size: directBytes.length });
  const [{ url: uploadUrl }] = await grant;
  const put = await fetch(uploadUrl, { method: 'PUT', body: directBytes });
  assert.equal(put.status, 201);
  const announced = nextEvent(watcher, 'blob-available');
  assert.deepEqual(await call(writer, 'blob-uploaded', { hash: direct.hash }), [{ hash: direct.hash }]);
  assert.deepEqual(await announced, [{ hash: direct.hash }]);

  const [pack] = await call(watcher, 'blob-request', { hashes: [inline.hash, direct.hash, 'f'.repeat(64)] });
  assert.deepEqual(pack.blobs, [inline, direct]);
  assert.deepEqual(pack.unavailable, ['f'.repeat(64)]);
  const [redirected] = await call(watcher, 'blob-request', { hashes: [direct.hash], redirect: true });
  assert.equal(redirected.redirects.length, 1);
  const download = await fetch(redirected.redirects[0].url);
  assert.equal(download.status, 200);
  assert.deepEqual(Buffer.from(await download.arrayBuffer()), directBytes);
  assert.equal(otherBucketHeard, false);

  for (const socket of [writer, watcher, otherBucket]) socket.close();
  console.log(`ok ${transport}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
