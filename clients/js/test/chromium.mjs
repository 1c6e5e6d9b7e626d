// Headless Chromium (Debian's, driven by playwright-core) for the library's browser tests, and
// pages served from the test server's own origin, as an app behind the same host would be.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

import { patience } from './server.mjs';

const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

/// The library's browser bundle, as `npm run build` writes it.
export const bundle = readFileSync(new URL('../dist/blobs-client.browser.js', import.meta.url), 'utf8');

/// Starts Chromium.
export function launch() {
  assert.ok(existsSync(chromiumPath), `${chromiumPath} is missing: the test command installs it`);
  return chromium.launch({
    executablePath: chromiumPath,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      // The page is routed by the test, so Chromium takes it for a public one and would block
      // its WebSocket to loopback.
      '--disable-features=LocalNetworkAccessChecks',
    ],
  });
}

/// A page of `context` (a browser or a browser context) at `<url>/<name>.html`, which serves
/// `scripts` (path → JavaScript) beside it without asking the server: the page loads, and
/// reloads, while the server is down.
export async function open(context, url, name, scripts = { '/blobs-client.js': bundle }) {
  const page = await context.newPage();
  page.setDefaultTimeout(patience);
  page.on('pageerror', (error) => console.error(`${name}: ${error.stack ?? error}`));
  await page.route(`${url}/${name}.html`, (route) =>
    route.fulfill({ contentType: 'text/html', body: `<!doctype html><title>${name}</title><div id="root"></div>` }),
  );
  for (const [path, body] of Object.entries(scripts)) {
    await page.route(`${url}${path}`, (route) => route.fulfill({ contentType: 'text/javascript', body }));
  }
  await page.goto(`${url}/${name}.html`);
  return page;
}
