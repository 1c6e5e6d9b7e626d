// Offline-first in headless Chromium, with IndexedDB caches and the real server stopped and
// started: a reload shows the last value while the server is down; increments made offline in
// two browser contexts (each its own cache), across a reload, all land once; a strict set
// made offline on a stale version reports its conflict and writes nothing; and ten restarts
// of the server while two pages keep incrementing lose no increment and make none twice.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { connect, text } from '../dist/index.js';
import { launch, open } from './chromium.mjs';
import { newRef, startServer, token } from './server.mjs';

let server;
let browser;
let bucketToken;
before(async () => {
  server = await startServer();
  browser = await launch();
  bucketToken = token('offline-browser');
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/// Starts the app in `page`: a client with an IndexedDB cache and the `increment` operation,
/// as `window.app`.
function start(page) {
  return page.evaluate(
    async ({ url, token }) => {
      const lib = await import('/blobs-client.js');
      const client = lib.connect(url, { token, transports: ['websocket'], cache: lib.indexedDbCache() });
      client.operation('increment', (bytes, by) => String(Number(bytes ? lib.text(bytes) || '0' : '0') + by));
      const conflicts = [];
      client.on('conflict', (conflict) => conflicts.push({ ...conflict, data: lib.text(conflict.data) }));
      // Resolves once the status satisfies `test` (a function's source, for evaluate).
      const when = (test) =>
        new Promise((resolve) => {
          const check = new Function('s', `return (${test})(s)`);
          if (check(client.status)) return resolve(client.status);
          const off = client.on('status', (s) => check(s) && (off(), resolve(s)));
        });
      window.app = { lib, client, conflicts, when };
    },
    { url: server.url, token: bucketToken },
  );
}

const until = (page, test) => page.evaluate((test) => window.app.when(test).then((s) => s.state), test);
const synced = (page) => until(page, "(s) => s.state === 'online' && s.pending === 0");
const offline = (page) => until(page, "(s) => s.state === 'offline'");

/// The blob as the server has it, read by a client without a cache.
async function stored(ref) {
  const client = connect(server.url, { token: bucketToken, transports: ['websocket'] });
  try {
    const value = await client.blob(ref).get();
    return value && { version: value.version, data: text(value.data) };
  } finally {
    client.close();
  }
}

describe('offline-first in Chromium', () => {
  test('a reload while the server is down shows the last value from the cache', async () => {
    const context = await browser.newContext();
    const page = await open(context, server.url, 'reload');
    const ref = newRef();
    await start(page);
    await page.evaluate(async (ref) => {
      await window.app.client.blob(ref).set('last known');
      await window.app.client.close();
    }, ref);
    await server.down();
    try {
      await page.reload();
      await start(page);
      const shown = await page.evaluate(
        (ref) =>
          new Promise((resolve) => {
            const { client, lib } = window.app;
            const stop = client.blob(ref).watch((value) => {
              stop();
              resolve({ data: lib.text(value.data), version: value.version, cached: value.cached });
            });
          }),
        ref,
      );
      assert.deepEqual(shown, { data: 'last known', version: 1, cached: true });
      const read = await page.evaluate(async (ref) => {
        const value = await window.app.client.blob(ref).get();
        return { data: window.app.lib.text(value.data), cached: value.cached, state: window.app.client.status.state };
      }, ref);
      assert.deepEqual(read, { data: 'last known', cached: true, state: 'offline' });
      const missing = await page.evaluate(() =>
        window.app.client.blob('ab'.repeat(32)).get().then(() => 'resolved', (error) => error.name),
      );
      assert.equal(missing, 'OfflineError');
    } finally {
      await server.up();
      await context.close();
    }
  });

  test('increments made offline in two contexts, kept across a reload, all land once', async () => {
    const counters = [newRef(), newRef()];
    const contexts = [await browser.newContext(), await browser.newContext()];
    const pages = await Promise.all(contexts.map((context, i) => open(context, server.url, `counter-${i}`)));
    for (const page of pages) await start(page);
    await server.down();
    try {
      for (const page of pages) {
        await offline(page);
        const shown = await page.evaluate(async (counters) => {
          const { client, lib } = window.app;
          for (let i = 0; i < 25; i++) {
            for (const ref of counters) void client.blob(ref).update('increment', 1).catch(() => {});
          }
          await window.app.when('(s) => s.pending === 50');
          // Shown at once, before the server has them.
          const value = await client.blob(counters[0]).get();
          const shown = { data: lib.text(value.data), pending: value.pending };
          await client.close();
          return shown;
        }, counters);
        assert.deepEqual(shown, { data: '25', pending: 25 });
        // The queue is in IndexedDB: a reload finds it.
        await page.reload();
        await start(page);
        await until(page, '(s) => s.pending === 50');
      }
    } finally {
      await server.up();
    }
    for (const page of pages) await synced(page);
    for (const ref of counters) assert.deepEqual(await stored(ref), { version: 50, data: '50' });
    const total = (await stored(counters[0])).data * 1 + (await stored(counters[1])).data * 1;
    assert.equal(total, 100);
    for (const context of contexts) await context.close();
  });

  test('a strict set made offline on a version gone stale reports its conflict and writes nothing', async () => {
    const context = await browser.newContext();
    const page = await open(context, server.url, 'strict');
    const ref = newRef();
    await start(page);
    await page.evaluate(async (ref) => {
      await window.app.client.blob(ref).set('first');
      await window.app.client.blob(ref).get();
    }, ref);
    await server.down();
    try {
      await offline(page);
      await page.evaluate(async (ref) => {
        void window.app.client.blob(ref).set('made offline', { version: 1 }).catch(() => {});
        await window.app.when('(s) => s.pending === 1');
        await window.app.client.close();
      }, ref);
    } finally {
      await server.up();
    }
    // Someone else writes first; then the page comes back.
    const other = connect(server.url, { token: bucketToken, transports: ['websocket'] });
    assert.equal((await other.blob(ref).set('theirs', { version: 1 })).success, true);
    other.close();
    await page.reload();
    await start(page);
    await synced(page);
    const conflicts = await page.evaluate(() =>
      window.app.conflicts.map((c) => ({ ...c, current: { version: c.current.version, data: window.app.lib.text(c.current.data) } })),
    );
    assert.deepEqual(conflicts, [
      { ref, data: 'made offline', version: 1, current: { version: 2, data: 'theirs' } },
    ]);
    assert.deepEqual(await stored(ref), { version: 2, data: 'theirs' });
    await context.close();
  });

  test('ten restarts of the server while two pages increment: none lost, none twice', async () => {
    const ref = newRef();
    const contexts = [await browser.newContext(), await browser.newContext()];
    const pages = await Promise.all(contexts.map((context, i) => open(context, server.url, `restarts-${i}`)));
    for (const page of pages) {
      await start(page);
      // Increments as fast as they are made, at most 20 pending, until told to stop.
      await page.evaluate((ref) => {
        const { client } = window.app;
        window.app.made = 0;
        window.app.running = true;
        const waiting = [];
        // Resolves once `n` increments were made.
        window.app.reach = (n) => new Promise((resolve) => waiting.push({ n, resolve }));
        const blob = client.blob(ref);
        const step = () => {
          if (!window.app.running) return;
          if (client.status.pending < 20) {
            window.app.made++;
            void blob.update('increment', 1).catch((error) => (window.app.error = String(error)));
            for (const waiter of waiting.filter((w) => w.n <= window.app.made)) {
              waiting.splice(waiting.indexOf(waiter), 1);
              waiter.resolve();
            }
          }
          setTimeout(step, 5);
        };
        step();
      }, ref);
    }
    for (let restart = 0; restart < 10; restart++) {
      // Each restart once both pages made 10 more increments.
      await Promise.all(
        pages.map((page) => page.evaluate(() => window.app.reach(window.app.made + 10))),
      );
      await server.restart();
    }
    const counts = await Promise.all(
      pages.map((page) =>
        page.evaluate(async () => {
          window.app.running = false;
          await window.app.when("(s) => s.state === 'online' && s.pending === 0");
          return { made: window.app.made, error: window.app.error ?? null };
        }),
      ),
    );
    for (const { error } of counts) assert.equal(error, null);
    const total = counts[0].made + counts[1].made;
    console.log(`${total} increments across 10 restarts`);
    assert.ok(total >= 200, `${total} increments`);
    assert.deepEqual(await stored(ref), { version: total, data: String(total) });
    for (const context of contexts) await context.close();
  });
});
