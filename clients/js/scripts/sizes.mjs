// The library's size in an app's bundle, minified and gzipped: the core alone, and the core
// with the IndexedDB cache and the React hook (React itself, the app's own, left out).
// `npm run sizes` prints the table that the library's README shows (a test checks it is the
// current one).
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const root = fileURLToPath(new URL('..', import.meta.url));

/// What each measured app imports.
export const APPS = {
  'core: `connect`, blobs, watch, content': `import { connect } from './dist/index.js'; globalThis.app = connect;`,
  'core + `indexedDbCache` + `blobs-client/react`': `
    import { connect, indexedDbCache } from './dist/index.js';
    import { BlobsProvider, useBlob } from './dist/react.js';
    globalThis.app = [connect, indexedDbCache, BlobsProvider, useBlob];`,
};

/// The README's table of sizes, measured now.
export async function sizes() {
  const rows = ['| bundle | minified | minified + gzip |', '|---|---|---|'];
  for (const [name, contents] of Object.entries(APPS)) {
    const result = await build({
      stdin: { contents, resolveDir: root, loader: 'js' },
      bundle: true,
      minify: true,
      format: 'esm',
      platform: 'browser',
      external: ['react'],
      write: false,
      logLevel: 'silent',
    });
    const bytes = result.outputFiles[0].contents;
    const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
    rows.push(`| ${name} | ${kb(bytes.length)} | ${kb(gzipSync(bytes, { level: 9 }).length)} |`);
  }
  return rows.join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) console.log(await sizes());
