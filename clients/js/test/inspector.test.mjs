// The inspector page the server serves at /inspect/, in headless Chromium: a token opens the
// bucket, a write made over HTTP appears on the open blob within a second, a conflicting save
// shows the conflict, and the content and Blob Service lists show image previews. The token
// never appears in a URL. Screenshots go to BLOBS_SCREENSHOTS when it is set (docs/ holds
// the ones of the README).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { crc32, deflateSync } from 'node:zlib';

import { blake3Hex } from '../dist/index.js';
import { launch } from './chromium.mjs';
import { newRef, patience, startServer, token } from './server.mjs';

const screenshots = process.env.BLOBS_SCREENSHOTS;

/// A small PNG: a colour gradient.
function png(width = 96, height = 64) {
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3);
    for (let x = 0; x < width; x++) row.set([(x * 255) / width, (y * 255) / height, 160], 1 + x * 3);
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

let server;
let browser;
let bucketToken;
before(async () => {
  server = await startServer();
  bucketToken = token('inspected');
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

async function http(method, path, body, headers = {}) {
  return fetch(`${server.url}${path}`, {
    method,
    body,
    headers: { authorization: `Bearer ${bucketToken}`, ...headers },
  });
}

test('the inspector follows a blob live and shows a conflicting save', async () => {
  const ref = newRef();
  const other = newRef();
  assert.equal((await http('PUT', `/v1/blobs/${ref}`, '{"count": 1}', { 'if-none-match': '*' })).status, 201);
  assert.equal((await http('PUT', `/v1/blobs/${other}`, 'plain text', { 'if-none-match': '*' })).status, 201);
  const image = png();
  assert.ok((await http('PUT', `/blobs/${blake3Hex(image)}`, image)).ok);
  const form = new FormData();
  form.append('blob', new Blob([image], { type: 'image/png' }), 'gradient.png');
  form.append('metadata', JSON.stringify({ semantics: 'inspection-photo' }));
  assert.equal((await http('POST', '/api/v1/blobs', form)).status, 201);

  const page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  page.setDefaultTimeout(patience);
  const urls = [];
  page.on('request', (request) => urls.push(request.url()));
  const loaded = await page.goto(`${server.url}/inspect/`);
  const policy = loaded.headers()['content-security-policy'];
  assert.match(policy, /default-src 'none'/);
  assert.match(policy, /script-src 'self'/);
  await page.fill('input[name="token"]', bucketToken);
  await page.click('button[type="submit"]');
  await page.waitForSelector(`li[data-ref="${ref}"]`);
  await page.waitForSelector(`li[data-ref="${other}"]`);

  await page.click(`li[data-ref="${ref}"]`);
  await page.waitForSelector('[data-version="1"]');
  await page.check('input[value="json"]');

  // A write over HTTP appears on the open page, pushed (how soon is printed, not asserted: the
  // machine may be busy).
  const written = Date.now();
  assert.equal(
    (await http('PUT', `/v1/blobs/${ref}`, '{"count": 2}', { 'if-match': '"1"' })).status,
    200,
  );
  await page.waitForSelector('[data-version="2"]');
  console.log(`inspector: an HTTP write shown after ${Date.now() - written} ms`);
  assert.match(await page.textContent('#preview'), /"count": 2/);

  // An edit of version 2, while someone else writes version 3: the save is refused and the
  // page shows the conflict and the current data.
  await page.fill('#edit', '{"count": 20}');
  assert.equal(
    (await http('PUT', `/v1/blobs/${ref}`, '{"count": 3}', { 'if-match': '"2"' })).status,
    200,
  );
  await page.waitForSelector('[data-version="3"]');
  await page.click('#save');
  await page.waitForSelector('#conflict:not([hidden])');
  assert.match(await page.textContent('#conflict-message'), /version 3/);
  assert.equal(await page.textContent('#conflict-data'), '{"count": 3}');
  const stored = await (await http('GET', `/v1/blobs/${ref}`)).text();
  assert.equal(stored, '{"count": 3}', 'the conflicting save wrote nothing');
  if (screenshots) {
    mkdirSync(screenshots, { recursive: true });
    await page.screenshot({ path: join(screenshots, 'inspector-conflict.png') });
  }
  // Rebased on the current data, the save goes through.
  await page.click('#rebase');
  await page.fill('#edit', '{"count": 30}');
  await page.click('#save');
  await page.waitForSelector('[data-version="4"]');
  assert.equal(await (await http('GET', `/v1/blobs/${ref}`)).text(), '{"count": 30}');

  // The content list and the Blob Service list, with image previews.
  await page.click('button[data-tab="content"]');
  await page.waitForSelector(`li[data-hash="${blake3Hex(image)}"] img`);
  await page.click('button[data-tab="service"]');
  await page.waitForSelector('li[data-handle] img');
  await page.click('li[data-handle]');
  await page.check('input[value="image"]');
  await page.waitForSelector('#preview img');
  if (screenshots) await page.screenshot({ path: join(screenshots, 'inspector-service.png') });

  // The token went in headers only.
  assert.ok(urls.length > 0);
  for (const url of urls) assert.ok(!url.includes(bucketToken), `token in ${url}`);
  assert.ok(!page.url().includes(bucketToken));
  await page.close();
});
