// The library's browser bundle in headless Chromium (Debian's, driven by playwright-core):
// 8 clients making 50 updates each, half over long-polling, lose nothing; a watch sees every
// change in order; the HTTP-only client reads the result.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { launch, open } from './chromium.mjs';
import { newRef, patience, startServer, token } from './server.mjs';

let server;
let browser;
before(async () => {
  server = await startServer();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('the bundle in Chromium: updates, a watch and the HTTP client', async () => {
  const page = await open(browser, server.url, 'library');
  const result = await page.evaluate(
    async ({ url, token, ref, patience }) => {
      const { connect, connectHttp, text } = await import('/blobs-client.js');
      const watcher = connect(url, { token, transports: ['websocket'] });
      const versions = [];
      watcher.blob(ref).watch((value) => value && versions.push(value.version));
      const clients = [0, 1, 2, 3, 4, 5, 6, 7].map((i) =>
        connect(url, { token, transports: [i % 2 ? 'polling' : 'websocket'] }),
      );
      const increment = (bytes) => String(Number(bytes ? text(bytes) || '0' : '0') + 1);
      await Promise.all(
        clients.map(async (client) => {
          for (let i = 0; i < 50; i++) await client.blob(ref).update(increment, { retries: 1000 });
        }),
      );
      const deadline = Date.now() + patience;
      while (versions.at(-1) !== 400 && Date.now() < deadline) {
        await new Promise((wake) => setTimeout(wake, 10));
      }
      const read = await connectHttp(url, { token }).blob(ref).get();
      clients.forEach((client) => client.close());
      watcher.close();
      return { versions, data: text(read.data), version: read.version };
    },
    { url: server.url, token: token('browser'), ref: newRef(), patience },
  );
  assert.equal(result.data, '400');
  assert.equal(result.version, 400);
  assert.equal(result.versions.at(-1), 400);
  for (let i = 1; i < result.versions.length; i++) {
    assert.ok(result.versions[i] > result.versions[i - 1]);
  }
});
