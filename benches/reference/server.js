// The Node.js original of Blobs, reconstructed from the contract in docs/PROTOCOL.md (the
// original's source is not part of this repository). It is kept only as the benchmark's
// reference, so that `cargo bench --bench bench -- --other-server ...` measures both servers
// in the same run and the ratios compare like with like.
//
// It deliberately keeps the original's behaviour where Blobs differs on purpose: writes are
// acknowledged without fsync; a blob file is replaced in place behind a `<ref>.json.backup`
// copy; refs are stored as sent (not lower-cased); the transport message limit is Socket.IO's
// default of 1e6 bytes; `get(null)` and `set(null)` throw and take the process down; the
// CONNECT timeout is Socket.IO's 45 s. None of Blobs' additions (watch, content-addressed
// events, read-only tokens, tombstones, rate limits, HTTP APIs) is here.
//
// Environment: PORT (default 3000), STORAGE (default ./data), TOKEN_SECRET.

'use strict';

const http = require('node:http');
const fs = require('node:fs/promises');
const path = require('node:path');
const { Server } = require('socket.io');
const jwt = require('jsonwebtoken');

const PORT = Number(process.env.PORT || 3000);
const STORAGE = path.resolve(process.env.STORAGE || './data');
const TOKEN_SECRET = process.env.TOKEN_SECRET;
if (!TOKEN_SECRET) {
  console.error('TOKEN_SECRET is not set');
  process.exit(1);
}

const MAX = Number.MAX_SAFE_INTEGER;
const MAX_DATA_CHARS = 1048576;
const BUCKET = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const REF = /^[0-9a-f]{64}$/i;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

const ERR = {
  ref: 'Invalid reference: expected 64 hexadecimal characters or null',
  known: `Invalid known: expected an integer from 1 to ${MAX}`,
  version: `Invalid version: expected an integer from 1 to ${MAX}`,
  data: `Invalid data: expected a base64 string of at most ${MAX_DATA_CHARS} characters`,
  noRef: 'Reference is not provided',
  storage: 'Storage error: the operation could not be completed',
};

const isVersion = (v) => Number.isSafeInteger(v) && v >= 1;
const isData = (d) => typeof d === 'string' && d.length <= MAX_DATA_CHARS && BASE64.test(d);

// --- Storage: STORAGE/<bucket>/<ref[0..2]>/<ref>.json ---------------------------------------

const blobFile = (bucket, ref) => path.join(STORAGE, bucket, ref.slice(0, 2), `${ref}.json`);

const exists = (file) => fs.access(file).then(() => true, () => false);

async function readBlob(file) {
  // A backup left behind means a replacement did not finish: it holds the last whole version.
  if (await exists(`${file}.backup`)) await fs.rename(`${file}.backup`, file);
  try {
    return JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (e) {
    if (e.code === 'ENOENT') return null;
    throw e;
  }
}

async function writeBlob(file, blob, replacing) {
  if (replacing) {
    await fs.copyFile(file, `${file}.backup`);
    await fs.writeFile(file, JSON.stringify(blob));
    await fs.unlink(`${file}.backup`);
  } else {
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, JSON.stringify(blob));
  }
}

// Reads and writes of one blob run one after the other, so compare-and-swap holds.
const queues = new Map();
function serial(key, task) {
  const run = (queues.get(key) || Promise.resolve()).then(task);
  const tail = run.catch(() => {});
  queues.set(key, tail);
  tail.then(() => queues.get(key) === tail && queues.delete(key));
  return run;
}

// --- Server ---------------------------------------------------------------------------------

const httpServer = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok');
  } else {
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found');
  }
});

const io = new Server(httpServer, { cors: { origin: true } });

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  try {
    if (typeof token !== 'string') throw new Error('no token');
    const claims = jwt.verify(token, TOKEN_SECRET, { algorithms: ['HS256', 'HS384', 'HS512'] });
    if (typeof claims.bucket !== 'string' || !BUCKET.test(claims.bucket)) throw new Error('bucket');
    socket.data.bucket = claims.bucket;
    next();
  } catch {
    next(new Error('Access denied'));
  }
});

io.on('connection', (socket) => {
  const { bucket } = socket.data;
  const ip = socket.handshake.headers['x-real-ip'] || 'unknown';
  let ref = null;
  const room = (r) => `${bucket}/${r}`;

  // Events of one socket run one at a time, in the order they arrived. Each must come with an
  // ack; one without is a broken client, disconnected once the events before it are answered.
  let queue = Promise.resolve();
  const on = (event, handler) =>
    socket.on(event, (...args) => {
      const ack = args.pop();
      queue = queue.then(() =>
        typeof ack === 'function' ? handler(args[0], ack) : socket.disconnect(),
      );
    });

  on('now', (_, ack) => ack({ timestamp: Date.now() }));

  on('ref', (value, ack) => {
    if (value !== null && !(typeof value === 'string' && REF.test(value))) {
      return ack({ error: ERR.ref });
    }
    if (ref !== null) socket.leave(room(ref));
    ref = value;
    if (ref !== null) socket.join(room(ref));
    ack();
  });

  on('get', (arg, ack) => {
    const { known } = arg;
    if (known != null && !isVersion(known)) return ack({ error: ERR.known });
    if (ref === null) return ack({ error: ERR.noRef });
    const file = blobFile(bucket, ref);
    return serial(file, () => readBlob(file)).then(
      (blob) => {
        if (!blob) ack(null);
        else if (blob.version === known) ack({ version: blob.version });
        else ack({ data: blob.data, version: blob.version });
      },
      (e) => {
        console.error(`get ${file}:`, e);
        ack({ error: ERR.storage });
      },
    );
  });

  on('set', (arg, ack) => {
    const { data, version } = arg;
    if (version != null && !isVersion(version)) return ack({ error: ERR.version });
    if (data != null && !isData(data)) return ack({ error: ERR.data });
    if (ref === null) return ack({ error: ERR.noRef });
    const current = ref;
    const file = blobFile(bucket, current);
    return serial(file, async () => {
      const blob = await readBlob(file);
      const now = Date.now();
      if (!blob) {
        await writeBlob(file, { data: data ?? undefined, version: 1, created: now, ip }, false);
        return { success: true, version: 1 };
      }
      if (version !== blob.version) {
        return { success: false, data: blob.data, version: blob.version };
      }
      if (blob.version >= MAX) throw new Error('version past 2^53 - 1');
      const next = {
        data: data ?? undefined,
        version: blob.version + 1,
        created: blob.created,
        updated: now,
        ip,
      };
      await writeBlob(file, next, true);
      return { success: true, version: next.version };
    }).then(
      (result) => {
        ack(result);
        if (result.success) socket.to(room(current)).emit('changed');
      },
      (e) => {
        console.error(`set ${file}:`, e);
        ack({ error: ERR.storage });
      },
    );
  });
});

httpServer.listen(PORT, '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${PORT}, storage ${STORAGE}`);
});
