// `useBlob` in a React page in headless Chromium: the component commits once per change it
// shows (each version once, whoever wrote it), writes through the hook's `update`, and stops
// watching when unmounted.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

import { connect } from '../dist/index.js';
import { launch, open } from './chromium.mjs';
import { newRef, startServer, token } from './server.mjs';

/// The test app: React, the library and its hook, bundled as an app would bundle them.
const APP = `
import { createElement as h, useLayoutEffect } from 'react';
import { createRoot } from 'react-dom/client';
import { flushSync } from 'react-dom';
import { connect, text } from '../dist/index.js';
import { BlobsProvider, useBlob } from '../dist/react.js';

function Counter({ blobRef }) {
  const { value, version, status, update } = useBlob(blobRef);
  // After every commit: what it showed.
  useLayoutEffect(() => {
    window.commits.push({ value: value === undefined ? 'loading' : value && text(value), version, state: status.state });
  });
  return h('button', { id: 'increment', onClick: () => update('increment', 1) }, value ? text(value) : '-');
}

window.mount = ({ url, token, ref }) => {
  window.commits = [];
  const client = connect(url, { token, transports: ['websocket'] });
  client.operation('increment', (bytes, by) => String(Number(bytes ? text(bytes) || '0' : '0') + by));
  const root = createRoot(document.getElementById('root'));
  flushSync(() => root.render(h(BlobsProvider, { client }, h(Counter, { blobRef: ref }))));
  window.app = { client, root };
};
`;

let server;
let browser;
let app;
before(async () => {
  server = await startServer();
  browser = await launch();
  const bundled = await build({
    stdin: { contents: APP, resolveDir: fileURLToPath(new URL('.', import.meta.url)), loader: 'js' },
    bundle: true,
    format: 'esm',
    write: false,
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'silent',
  });
  app = bundled.outputFiles[0].text;
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('useBlob commits once per version, writes through update, and stops on unmount', async () => {
  const bucketToken = token('react');
  const ref = newRef();
  const page = await open(browser, server.url, 'react', { '/app.js': app });
  await page.evaluate(
    async (args) => {
      await import('/app.js');
      window.mount(args);
    },
    { url: server.url, token: bucketToken, ref },
  );
  const shows = (version) =>
    page.waitForFunction((version) => window.commits.some((c) => c.version === version), version);
  await page.waitForFunction(() => window.commits.some((c) => c.value === null && c.state === 'online'));

  // Twenty versions written elsewhere, each waited for, so that none is superseded unseen.
  const writer = connect(server.url, { token: bucketToken, transports: ['websocket'] });
  for (let version = 1; version <= 20; version++) {
    const written = await writer.blob(ref).set(String(version * 10), version > 1 ? { version: version - 1 } : {});
    assert.deepEqual(written, { success: true, version });
    await shows(version);
  }
  // One through the hook.
  await page.click('#increment');
  await shows(21);

  const commits = await page.evaluate(() => window.commits);
  for (let i = 1; i < commits.length; i++) {
    assert.notDeepEqual(commits[i], commits[i - 1], `commit ${i} showed nothing new: ${JSON.stringify(commits)}`);
  }
  for (let version = 1; version <= 21; version++) {
    const showing = commits.filter((c) => c.version === version);
    assert.equal(showing.length, 1, `version ${version}: ${JSON.stringify(showing)}`);
  }
  assert.deepEqual(commits.at(-1), { value: '201', version: 21, state: 'online' });

  // Unmounted, it watches no more: a change that another watcher of the page sees commits
  // nothing.
  await page.evaluate(() => {
    window.app.root.unmount();
    window.app.unmountedAt = window.commits.length;
  });
  assert.deepEqual(await writer.blob(ref).set('220', { version: 21 }), { success: true, version: 22 });
  const committed = await page.evaluate(
    (ref) =>
      new Promise((resolve) => {
        const stop = window.app.client.blob(ref).watch((value) => {
          if (value?.version !== 22) return;
          stop();
          resolve(window.commits.length - window.app.unmountedAt);
        });
      }),
    ref,
  );
  assert.equal(committed, 0);
  writer.close();
});
