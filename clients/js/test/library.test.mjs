// The library against the real server: blobs, updates without lost writes, watches across a
// restart, many blobs on one connection, content, and the HTTP-only client.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Blob as DeprecatedBlob, BlobHandle, blake3Hex, connect, connectHttp, text } from '../dist/index.js';
import { newRef, patience, startServer, token } from './server.mjs';

const increment = (bytes) => String(Number(bytes ? text(bytes) || '0' : '0') + 1);

/// Resolves once `predicate()` holds, checking after every event `emitter` would fire; here,
/// polled with a bounded number of short waits (the condition is on state the callbacks set).
async function until(predicate, what, limit = patience) {
  const deadline = Date.now() + limit;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((wake) => setTimeout(wake, 10));
  }
}

test('a blob is a BlobHandle, still exported under its former name Blob', () => {
  // No request goes out: an HTTP client connects on its first call.
  const client = connectHttp('http://127.0.0.1:9', { token: 'unused' });
  assert.ok(client.blob(newRef()) instanceof BlobHandle);
  assert.equal(DeprecatedBlob, BlobHandle);
  client.close();
});

describe('blobs over Socket.IO', () => {
  let server;
  let bucketToken;
  before(async () => {
    server = await startServer({ METRICS_TOKEN: 'scrape' });
    bucketToken = token('library');
  });
  after(() => server.stop());

  test('get, set with compare-and-swap, strings and bytes', async () => {
    const client = connect(server.url, { token: bucketToken, transports: ['websocket'] });
    const blob = client.blob(newRef());
    assert.equal(await blob.get(), null);
    assert.deepEqual(await blob.set('hello'), { success: true, version: 1 });
    const stale = await blob.set(new Uint8Array([1, 2, 3]), { version: 7 });
    assert.equal(stale.success, false);
    assert.equal(stale.version, 1);
    assert.equal(text(stale.data), 'hello');
    assert.deepEqual(await blob.set(new Uint8Array([1, 2, 3]), { version: 1 }), { success: true, version: 2 });
    const read = await blob.get();
    assert.equal(read.version, 2);
    assert.deepEqual([...read.data], [1, 2, 3]);
    assert.throws(() => client.blob('not-a-ref'), TypeError);
    client.close();
  });

  test('no lost update: 8 clients, 50 updates each, half over long-polling', async () => {
    const ref = newRef();
    const clients = Array.from({ length: 8 }, (_, i) =>
      connect(server.url, { token: bucketToken, transports: [i % 2 ? 'polling' : 'websocket'] }),
    );
    await Promise.all(
      clients.map(async (client) => {
        const blob = client.blob(ref);
        for (let i = 0; i < 50; i++) await blob.update(increment, { retries: 1000 });
      }),
    );
    const final = await clients[0].blob(ref).get();
    assert.equal(text(final.data), '400');
    assert.equal(final.version, 400);
    clients.forEach((client) => client.close());
  });

  test('one connection watches 50 blobs', async () => {
    const watcher = connect(server.url, { token: bucketToken, transports: ['websocket'] });
    const writer = connect(server.url, { token: bucketToken, transports: ['websocket'] });
    const refs = Array.from({ length: 50 }, newRef);
    const seen = new Map();
    const stops = refs.map((ref) =>
      watcher.blob(ref).watch((value) => {
        if (value) seen.set(ref, [...(seen.get(ref) ?? []), value.version]);
      }),
    );
    for (const ref of refs) await writer.blob(ref).set('one');
    for (const ref of refs) await writer.blob(ref).set('two', { version: 1 });
    await until(() => refs.every((ref) => seen.get(ref)?.at(-1) === 2), 'every blob at version 2');
    for (const ref of refs) {
      const versions = seen.get(ref);
      assert.deepEqual(versions, [...new Set(versions)].sort(), `${ref}: increasing, no repeats`);
    }
    // The server counts two sockets: the watcher's one connection and the writer's.
    const metrics = await fetch(`${server.url}/metrics`, {
      headers: { authorization: 'Bearer scrape' },
    }).then((r) => r.text());
    const sockets = metrics
      .split('\n')
      .filter((line) => line.startsWith('blobs_sockets{'))
      .reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
    assert.equal(sockets, 2, metrics);
    stops.forEach((stop) => stop());
    watcher.close();
    writer.close();
  });

  test('content: inline and through a direct upload URL, verified', async () => {
    const client = connect(server.url, { token: bucketToken, transports: ['websocket'] });
    const small = new TextEncoder().encode('small content');
    const large = new Uint8Array(700 * 1024).map((_, i) => (i * 31) & 0xff);
    for (const bytes of [small, large]) {
      const hash = await client.content.put(bytes);
      assert.equal(hash, blake3Hex(bytes));
      assert.deepEqual(await client.content.get(hash), bytes);
    }
    await assert.rejects(client.content.get('0'.repeat(64)), /no content/);
    client.close();
  });

  test('BLAKE3 names content as the server does, at every tree shape', async () => {
    for (const size of [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 3072, 4097, 31744, 65537]) {
      const bytes = new Uint8Array(size).map((_, i) => (i * 7 + size) & 0xff);
      const hash = blake3Hex(bytes);
      // The server stores content only when the name is the BLAKE3 of the body (else 422).
      const stored = await fetch(`${server.url}/blobs/${hash}`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${bucketToken}` },
        body: bytes,
      });
      assert.ok(stored.ok, `${size} bytes: ${stored.status}`);
    }
    assert.equal(
      blake3Hex(new Uint8Array()),
      'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262',
    );
  });

  test('a closed client refuses calls instead of holding them forever', async () => {
    const client = connect(server.url, { token: bucketToken, transports: ['websocket'] });
    const blob = client.blob(newRef());
    await blob.set('before');
    client.close();
    await assert.rejects(blob.get(), /not reconnecting/);
    await assert.rejects(blob.set('after', { version: 1 }), /not reconnecting/);
    await assert.rejects(blob.set(7), TypeError);
  });

  test('a refused token fails every call', async () => {
    const client = connect(server.url, { token: 'not-a-token', transports: ['websocket'] });
    await assert.rejects(client.blob(newRef()).get(), /Access denied/);
    client.close();
  });
});

describe('watch across a restart', () => {
  test('strictly increasing versions, no duplicates, ending on the last one', async () => {
    const server = await startServer();
    const bucketToken = token('restart');
    const ref = newRef();
    const clients = [];
    let writing = true;
    let writes;
    try {
      const watchers = ['websocket', 'polling'].map((transport) => {
        const client = connect(server.url, { token: bucketToken, transports: [transport] });
        clients.push(client);
        const versions = [];
        client.blob(ref).watch((value) => value && versions.push(value.version));
        return { transport, versions };
      });
      const writer = connect(server.url, { token: bucketToken, transports: ['websocket'] });
      clients.push(writer);
      let last = 0;
      writes = (async () => {
        while (writing) {
          // A write cut by the restart has an unknown outcome: read again and go on.
          const done = await writer.blob(ref).update(increment).catch(() => null);
          if (done) last = Math.max(last, done.version);
        }
      })();
      await until(() => last >= 30, 'writes before the restart');
      await server.restart();
      const resumed = last;
      await until(() => last >= resumed + 30, 'writes after the restart');
      writing = false;
      await writes;
      const final = (await writer.blob(ref).get()).version;
      for (const { transport, versions } of watchers) {
        await until(() => versions.at(-1) === final, `the ${transport} watcher at ${final}: ${versions.slice(-5)}`);
        for (let i = 1; i < versions.length; i++) {
          assert.ok(versions[i] > versions[i - 1], `increasing: ${versions.slice(i - 1, i + 1)}`);
        }
      }
    } finally {
      writing = false;
      await writes;
      clients.forEach((client) => client.close());
      await server.stop();
    }
  });
});

describe('blobs over HTTP only', () => {
  let server;
  let bucketToken;
  before(async () => {
    server = await startServer();
    bucketToken = token('http-library');
  });
  after(() => server.stop());

  test('the same blob interface, watch included, and content', async () => {
    const client = connectHttp(server.url, { token: bucketToken });
    const other = connect(server.url, { token: bucketToken, transports: ['websocket'] });
    const blob = client.blob(newRef());
    const seen = [];
    const stop = blob.watch((value) => seen.push(value ? value.version : null));
    await until(() => seen.length === 1, 'the first value');
    assert.deepEqual(seen, [null]);
    assert.deepEqual(await blob.set('0'), { success: true, version: 1 });
    const stale = await blob.set('b');
    assert.equal(stale.success, false);
    assert.equal(text(stale.data), '0');
    for (let i = 0; i < 5; i++) await blob.update(increment);
    await other.blob(blob.ref).update(increment);
    await until(() => seen.at(-1) === 7, 'version 7');
    assert.equal(text((await blob.get()).data), '6');
    for (let i = 2; i < seen.length; i++) assert.ok(seen[i] > seen[i - 1]);
    const hash = await client.content.put('over http');
    assert.equal(text(await client.content.get(hash)), 'over http');
    stop();
    client.close();
    other.close();
  });
});
