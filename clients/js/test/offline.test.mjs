// The client's cache and offline writes in Node, against the real server stopped and started
// again: reads from the cache, named operations queued offline and made once, strict sets
// that conflict, a file cache that survives a new process's client, the byte bound, buckets
// kept apart, damaged records not served, and a revoked token.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { blake3Hex, connect, memoryCache, OfflineError, text } from '../dist/index.js';
import { fileCache } from '../dist/file-cache.js';
import { newRef, patience, startServer, token } from './server.mjs';

const add = (bytes, by = 1) => String(Number(bytes ? text(bytes) || '0' : '0') + by);

/// Resolves with the client's status once `predicate` holds for it (checked on every change).
function status(client, predicate, what) {
  return new Promise((resolve, reject) => {
    if (predicate(client.status)) return resolve(client.status);
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(client.status)}`));
    }, patience);
    const off = client.on('status', (now) => {
      if (!predicate(now)) return;
      clearTimeout(timer);
      off();
      resolve(now);
    });
  });
}
const synced = (client) => status(client, (s) => s.state === 'online' && s.pending === 0, 'synced');
const offline = (client) => status(client, (s) => s.state === 'offline', 'offline');

/// Calls of `watch`'s callback, and a way to wait for one.
function watching(blob) {
  const seen = [];
  const waiters = [];
  const stop = blob.watch((value) => {
    seen.push(value);
    for (const waiter of [...waiters]) waiter();
  });
  const until = (predicate, what) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const found = seen.find(predicate);
        if (!found) return false;
        waiters.splice(waiters.indexOf(check), 1);
        clearTimeout(timer);
        resolve(found);
        return true;
      };
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(seen)}`)), patience);
      waiters.push(check);
      check();
    });
  return { seen, stop, until };
}

describe('a client with a cache', () => {
  let server;
  let bucketToken;
  before(async () => {
    server = await startServer();
    bucketToken = token('offline');
  });
  after(() => server.stop());

  const open = (cache, extra = {}) => {
    const client = connect(server.url, { token: bucketToken, transports: ['websocket'], cache, ...extra });
    client.operation('add', add);
    return client;
  };

  test('reads, watches and writes offline, and makes each queued write once on reconnect', async () => {
    const cache = memoryCache();
    const client = open(cache);
    const other = open(undefined);
    const counter = client.blob(newRef());
    const unseen = client.blob(newRef());
    await counter.update('add', 5);
    assert.equal(text((await counter.get()).data), '5');
    const watch = watching(counter);
    await watch.until((v) => v && v.version === 1 && !v.cached, 'the server value');

    await server.down();
    await offline(client);
    const cached = await counter.get();
    assert.equal(text(cached.data), '5');
    assert.equal(cached.version, 1);
    await assert.rejects(unseen.get(), OfflineError);

    // Applied at once, queued, and counted.
    const writes = [counter.update('add', 2), counter.update('add', 3)];
    const shown = await watch.until((v) => v?.pending === 2, 'both writes shown');
    assert.equal(text(shown.data), '10');
    assert.equal(shown.version, 1);
    assert.equal(client.status.pending, 2);
    assert.equal(client.status.state, 'offline');

    // Another client adds 100 once the server is back, before, between or after them.
    await server.up();
    await other.blob(counter.ref).update('add', 100);
    const done = await Promise.all(writes);
    assert.ok(done[1].version > done[0].version, 'made in order');
    await synced(client);
    const final = await other.blob(counter.ref).get();
    assert.equal(text(final.data), '110');
    assert.equal(final.version, 4, 'one version per write: none was made twice');
    await watch.until((v) => v?.version === 4 && !v.pending, 'the committed value');
    watch.stop();
    client.close();
    other.close();
  });

  test('a strict set made offline on a version gone stale reports the conflict and writes nothing', async () => {
    const client = open(memoryCache());
    const other = open(undefined);
    const blob = client.blob(newRef());
    assert.equal((await blob.set('mine')).success, true);
    await client.blob(blob.ref).get();
    // Offline on its side only, so that the other client writes first.
    client.socket.disconnect();
    await offline(client);
    const conflicts = [];
    client.on('conflict', (conflict) => conflicts.push(conflict));
    const answer = blob.set('offline edit', { version: 1 });
    assert.equal((await other.blob(blob.ref).set('theirs', { version: 1 })).success, true);
    client.socket.connect();
    const refused = await answer;
    assert.equal(refused.success, false);
    assert.equal(text(refused.data), 'theirs');
    await synced(client);
    assert.equal(conflicts.length, 1);
    assert.equal(conflicts[0].ref, blob.ref);
    assert.equal(text(conflicts[0].data), 'offline edit');
    assert.equal(conflicts[0].version, 1);
    assert.deepEqual([conflicts[0].current.version, text(conflicts[0].current.data)], [2, 'theirs']);
    const stored = await other.blob(blob.ref).get();
    assert.deepEqual([stored.version, text(stored.data)], [2, 'theirs']);
    client.close();
    other.close();
  });

  test('a file cache keeps values, content and queued writes for the next process', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'blobs-cache-'));
    try {
      const first = open(fileCache(dir));
      const ref = newRef();
      await first.blob(ref).update('add', 1);
      const hash = await first.content.put('content kept by hash');
      await server.down();
      await offline(first);
      void first.blob(ref).update('add', 10).catch(() => {});
      await status(first, (s) => s.pending === 1, 'the write queued');
      await first.close();

      // A new client, as after a restart of the app: the same cache, the server still down.
      const second = open(fileCache(dir));
      const value = await second.blob(ref).get();
      assert.deepEqual([text(value.data), value.version, value.cached, value.pending], ['11', 1, true, 1]);
      assert.equal(text(await second.content.get(hash)), 'content kept by hash');
      await server.up();
      await synced(second);
      const stored = await second.blob(ref).get();
      assert.deepEqual([text(stored.data), stored.version], ['11', 2]);
      await second.close();

      // Damaged records are not served: a value whose bytes no longer match its hash, and
      // content that does not hash to its name.
      const [file] = readdirSync(dir).filter((name) => name.endsWith('.json'));
      const path = join(dir, file);
      const saved = JSON.parse(readFileSync(path, 'utf8'));
      for (const [, record] of saved.records) {
        if (record.kind === 'value' || record.kind === 'content') {
          record.data = { $bytes: Buffer.from('tampered').toString('base64') };
        }
      }
      writeFileSync(path, JSON.stringify(saved));
      await server.down();
      const third = open(fileCache(dir));
      await offline(third);
      await assert.rejects(third.blob(ref).get(), OfflineError);
      await assert.rejects(third.content.get(hash), OfflineError);
      await third.close();
      await server.up();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the cache keeps to its byte bound, least recently used out first, pending writes kept', async () => {
    const cache = memoryCache({ maxBytes: 4096 });
    const client = open(cache);
    const refs = Array.from({ length: 6 }, newRef);
    const kilobyte = 'x'.repeat(1000);
    for (const ref of refs) {
      await client.blob(ref).set(kilobyte);
      await client.blob(ref).get();
    }
    await server.down();
    await offline(client);
    // About three values of 1 KB fit: the last ones written are kept.
    await assert.rejects(client.blob(refs[0]).get(), OfflineError);
    assert.equal(text((await client.blob(refs[5]).get()).data), kilobyte);
    // Queued writes are never evicted; one that cannot fit is refused.
    void client.blob(refs[5]).set('y'.repeat(1500), { version: 1 }).catch(() => {});
    await assert.rejects(client.blob(refs[4]).set('z'.repeat(3000), { version: 1 }), /cannot hold another pending write/);
    assert.equal(client.status.pending, 1);
    await server.up();
    await synced(client);
    client.close();
  });

  test('one cache keeps two buckets apart', async () => {
    const cache = memoryCache();
    const ref = newRef();
    const a = connect(server.url, { token: token('bucket-a'), transports: ['websocket'], cache });
    const b = connect(server.url, { token: token('bucket-b'), transports: ['websocket'], cache });
    await a.blob(ref).set('in a');
    await a.blob(ref).get();
    assert.equal(await b.blob(ref).get(), null);
    await server.down();
    await Promise.all([offline(a), offline(b)]);
    assert.equal(text((await a.blob(ref).get()).data), 'in a');
    assert.equal(await b.blob(ref).get(), null, 'b knows only what its bucket said');
    a.close();
    b.close();
    await server.up();
    assert.throws(() => connect(server.url, { token: 'not-a-jwt', cache }), /bucket token/);
  });

  test('what a write gives is checked: operations that return no data, data too large', async () => {
    const client = open(memoryCache());
    const blob = client.blob(newRef());
    for (const [name, result] of [['nothing', undefined], ['null', null], ['number', 42], ['object', { a: 1 }], ['promise', Promise.resolve('1')]]) {
      client.operation(name, () => result);
      await assert.rejects(blob.update(name), TypeError, name);
    }
    await assert.rejects(blob.set(5), TypeError);
    assert.equal(client.status.pending, 0);
    // Larger than the server takes: refused, and the next writes go on.
    await assert.rejects(blob.set('x'.repeat(800_000)), /Invalid data/);
    const other = client.blob(newRef());
    for (let i = 0; i < 5; i++) await other.update('add', 1);
    assert.equal(text((await other.get()).data), '5');
    client.close();
  });

  test("the server's first answer replaces what the cache held, even an older version", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'blobs-cache-'));
    try {
      const first = open(fileCache(dir));
      const ref = newRef();
      await first.blob(ref).set('restored');
      await first.blob(ref).get();
      await first.close();
      // As if the server were restored from a backup older than the cache.
      const [file] = readdirSync(dir);
      const saved = JSON.parse(readFileSync(join(dir, file), 'utf8'));
      for (const [, record] of saved.records) if (record.kind === 'value') record.version = 50;
      writeFileSync(join(dir, file), JSON.stringify(saved));

      const second = open(fileCache(dir));
      const watch = watching(second.blob(ref));
      await watch.until((v) => v && !v.cached, 'the server value');
      const read = await second.blob(ref).get();
      assert.deepEqual([read.version, text(read.data), read.cached], [1, 'restored', undefined]);
      const other = open(undefined);
      await other.blob(ref).set('after', { version: 1 });
      await watch.until((v) => v?.version === 2, 'the next version');
      watch.stop();
      other.close();
      await second.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a blob larger than the cache is read and watched while online', async () => {
    const client = open(memoryCache({ maxBytes: 1000 }));
    const writer = open(undefined);
    const blob = client.blob(newRef());
    await writer.blob(blob.ref).set('y'.repeat(5000));
    assert.equal((await blob.get()).data.length, 5000);
    const watch = watching(blob);
    await watch.until((v) => v?.version === 1, 'the first version');
    await writer.blob(blob.ref).set('z'.repeat(6000), { version: 1 });
    assert.equal((await watch.until((v) => v?.version === 2, 'the second')).data.length, 6000);
    // A write must fit the cache, where it waits until it is made.
    await assert.rejects(blob.set('w'.repeat(2000), { version: 2 }), /cannot hold another pending write/);
    watch.stop();
    client.close();
    writer.close();
  });

  test('clearCache while writes are made: each settles with what happened to it', async () => {
    const client = open(memoryCache());
    const other = open(undefined);
    const ref = newRef();
    client.socket.disconnect();
    await offline(client);
    const writes = Array.from({ length: 20 }, () => client.blob(ref).update('add', 1));
    await status(client, (s) => s.pending === 20, 'queued');
    client.socket.connect();
    await status(client, (s) => s.pending < 18, 'some made');
    await client.clearCache();
    const settled = await Promise.allSettled(writes);
    const made = settled.filter((s) => s.status === 'fulfilled').length;
    for (const s of settled) {
      if (s.status === 'rejected') assert.match(s.reason.message, /cleared before this write was sent/);
    }
    await synced(client);
    const stored = await other.blob(ref).get();
    assert.deepEqual([stored.version, text(stored.data)], [made, String(made)]);
    client.close();
    other.close();
  });

  test('close settles every pending write, and later writes are refused', async () => {
    const client = open(memoryCache());
    client.socket.disconnect();
    await offline(client);
    const blob = client.blob(newRef());
    const writes = [blob.update('add', 1), blob.set('x', { version: 1 })];
    await status(client, (s) => s.pending === 2, 'queued');
    await client.close();
    for (const result of await Promise.allSettled(writes)) {
      assert.equal(result.status, 'rejected');
      assert.match(result.reason.message, /closed before this write was sent; it stays in the cache/);
    }
    await assert.rejects(blob.update('add', 1), /closed/);
  });

  test('a long queue of one blob is applied once per write, not once per write per write', async () => {
    const client = open(memoryCache({ maxBytes: 64 << 20 }));
    let calls = 0;
    client.operation('count', (bytes) => {
      calls++;
      return add(bytes);
    });
    const blob = client.blob(newRef());
    const watch = watching(blob);
    client.socket.disconnect();
    await offline(client);
    const writes = Array.from({ length: 3000 }, () => blob.update('count'));
    await status(client, (s) => s.pending === 3000, 'queued');
    client.socket.connect();
    await Promise.all(writes);
    await watch.until((v) => v?.version === 3000 && !v.pending, 'all made');
    assert.ok(calls < 5 * 3000, `${calls} calls for 3,000 writes`);
    watch.stop();
    client.close();
  });

  test('a revoked token: offline with the reason, the cache still readable, writes kept', async () => {
    const storage = server.storage;
    const revocable = token('revocable');
    const cache = memoryCache();
    const client = connect(server.url, { token: revocable, transports: ['websocket'], cache });
    client.operation('add', add);
    const ref = newRef();
    await client.blob(ref).update('add', 1);
    const { jti } = JSON.parse(Buffer.from(revocable.split('.')[1], 'base64url').toString());
    execFileSync(process.env.BLOBS_BIN, ['revoke', '--jti', jti], {
      env: { ...process.env, STORAGE: storage },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    // Running servers close its connections.
    const refused = await status(client, (s) => s.state === 'offline' && s.lastError, 'the refusal');
    assert.match(refused.lastError.message, /revoked/i);
    assert.equal(text((await client.blob(ref).get()).data), '1');
    void client.blob(ref).update('add', 1).catch(() => {});
    await status(client, (s) => s.pending === 1, 'the write queued');
    assert.equal(text((await client.blob(ref).get()).data), '2');
    await client.close();
    // Sent by a client with a valid token for the bucket, from the same cache.
    const renewed = connect(server.url, { token: token('revocable'), transports: ['websocket'], cache });
    renewed.operation('add', add);
    await synced(renewed);
    assert.equal(text((await renewed.blob(ref).get()).data), '2');
    renewed.close();
  });
});
