// The ActyxOS Blob Service documentation's example against a Blobs server, with only the host,
// port and an auth header changed: a Node.js app uploads an inspection photo with form-data
// (semantics and a retention policy), and a browser page that subscribes to the metadata
// stream with fetch and a stream reader shows the new photo through GET /api/v1/blobs/{handle}.
// Usage: BLOBS_URL=... BLOBS_TOKEN=... SCREENSHOT=out.png node actyx-docs.mjs
// Prints "ok <handle>" when the page showed the photo; exits 1 otherwise.
import assert from 'node:assert/strict';
import FormData from 'form-data';
import { chromium } from 'playwright-core';

const url = process.env.BLOBS_URL;
const token = process.env.BLOBS_TOKEN;
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

// The test's patience (BLOBS_PATIENCE_MS), generous because the machine may be busy: past it
// the scenario fails rather than hangs, and names the step it was at. Playwright's own waits
// get the same.
const patience = Number(process.env.BLOBS_PATIENCE_MS ?? 300_000);
let step = 'the start';
setTimeout(() => {
  console.error(`actyx-docs.mjs: not done within ${patience / 1000} s, at ${step}`);
  process.exit(1);
}, patience).unref();

// A 48x48 PNG checkerboard: the "photo".
const photo = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAADAAAAAwCAIAAADYYG7QAAAAUklEQVR42u3WsQ0AIAgEQCaxdiYmdgiHcQEsjQWXUJJw1fMxcpezcpbzej+AgIDagX4dvu0DAQH1A0lqICAgfcjrAALShyQ1EBCQPuR1AAG1Bh0eLsemY7EYNgAAAABJRU5ErkJggg==',
  'base64',
);

// The Node.js side of the example: a multipart upload with the blob and its metadata.
function uploadPhoto() {
  const form = new FormData();
  form.append('blob', photo, { filename: 'inspection-42.png', contentType: 'image/png' });
  form.append(
    'metadata',
    JSON.stringify({
      semantics: 'com.example.inspection-photo',
      retentionPolicy: { policy: 'keepForDuration', durationMs: 7 * 24 * 3600 * 1000 },
    }),
  );
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    form.submit(
      { host: hostname, port, path: '/api/v1/blobs', headers: { Authorization: `Bearer ${token}` } },
      (err, res) => {
        if (err) return reject(err);
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => { body += chunk; });
        res.on('end', () => {
          if (res.statusCode !== 201) return reject(new Error(`upload: ${res.statusCode} ${body}`));
          resolve(JSON.parse(body).handle);
        });
      },
    );
  });
}

// The browser side of the example: subscribe to the metadata stream, show each new photo.
const page = `<!doctype html>
<html>
<head><title>Inspection photos</title></head>
<body>
  <h1>Inspection photos</h1>
  <p id="status">waiting for photos</p>
  <img id="photo" alt="latest inspection photo" width="192" height="192" style="image-rendering: pixelated">
  <script>
    const token = ${JSON.stringify(token)};
    window.subscribed = false;
    (async () => {
      const response = await fetch('/api/v1/events/subscribe', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
        body: JSON.stringify({
          subscriptions: [{ name: 'ActyxOS-BlobService-Metadata', semantics: 'com.actyx.os.blobs.metadata' }],
        }),
      });
      window.subscribed = true;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        // One write per event; idle keep-alives are empty lines.
        for (const chunk of decoder.decode(value).split('\\n')) {
          if (!chunk.trim()) continue;
          const metadata = JSON.parse(chunk);
          if (metadata.semantics === 'com.example.inspection-photo') {
            document.getElementById('status').textContent = 'new photo ' + metadata.handle;
            document.getElementById('photo').src =
              '/api/v1/blobs/' + metadata.handle + '?access_token=' + encodeURIComponent(token);
          }
        }
      }
    })();
  </script>
</body>
</html>`;

async function main() {
  step = 'launching Chromium';
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    timeout: patience,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    step = 'opening the page';
    const tab = await browser.newPage({ viewport: { width: 480, height: 360 } });
    tab.setDefaultTimeout(patience);
    // The page is served from the server's own origin, as an app behind the same host would be.
    const pageUrl = `${url}/inspection.html`;
    await tab.route(pageUrl, (route) => route.fulfill({ contentType: 'text/html', body: page }));
    await tab.goto(pageUrl);
    step = "the page's subscription to the metadata stream";
    await tab.waitForFunction(() => window.subscribed === true);

    step = 'the upload of the photo';
    const handle = await uploadPhoto();
    step = 'the page showing the photo';
    await tab.waitForFunction(() => {
      const img = document.getElementById('photo');
      return img.complete && img.naturalWidth > 0;
    });
    const size = await tab.evaluate(() => {
      const img = document.getElementById('photo');
      return [img.naturalWidth, img.naturalHeight];
    });
    assert.deepEqual(size, [48, 48], 'the uploaded photo is what the page shows');
    assert.equal(await tab.textContent('#status'), `new photo ${handle}`);
    step = 'the screenshot';
    await tab.screenshot({ path: process.env.SCREENSHOT });
    console.log(`ok ${handle}`);
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
