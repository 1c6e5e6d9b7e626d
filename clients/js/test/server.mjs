// The Blobs server of this build for the library's tests: BLOBS_BIN (the `blobs` binary) on a
// free loopback port with a temp storage directory; tokens from BLOBS_TOKEN_BIN (`token`).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** How long a test waits for anything (BLOBS_PATIENCE_MS): generous, because the machine
 * may be busy; past it the test fails naming what it waited for. */
export const patience = Number(process.env.BLOBS_PATIENCE_MS ?? 300_000);

const SECRET = 'client-library-test-secret';
const bin = process.env.BLOBS_BIN;
const tokenBin = process.env.BLOBS_TOKEN_BIN;
if (!bin || !tokenBin) throw new Error('set BLOBS_BIN and BLOBS_TOKEN_BIN (the test command does)');

/// A token for `bucket`, minted by the `token` binary.
export function token(bucket) {
  const out = execFileSync(tokenBin, [bucket], {
    env: { ...process.env, TOKEN_SECRET: SECRET },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  return out.toString().split('\n')[1].trim();
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/// Starts a server; `env` adds settings. `stop()` sends SIGTERM, waits for the exit and removes
/// the server's temp storage; `restart()` stops it and starts it again on the same port and
/// storage; `down()` and `up()` do each half of that.
export async function startServer(env = {}) {
  const storage = mkdtempSync(join(tmpdir(), 'blobs-client-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let child;
  const launch = async () => {
    child = spawn(bin, [], {
      env: { ...process.env, TOKEN_SECRET: SECRET, STORAGE: storage, HOST: '127.0.0.1', PORT: String(port), RUST_LOG: 'warn', ...env },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.exited = exited;
    // Ready once it answers; bounded, and failing loudly if it exits.
    const deadline = Date.now() + patience;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
      const ok = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
      if (ok) return;
      await new Promise((wake) => setTimeout(wake, 50));
    }
    throw new Error(`server did not answer /healthz within ${patience} ms`);
  };
  await launch();
  const halt = async () => {
    child.kill('SIGTERM');
    await child.exited;
  };
  return {
    url,
    storage,
    async stop() {
      await halt();
      rmSync(storage, { recursive: true, force: true });
    },
    async restart() {
      await halt();
      await launch();
    },
    down: halt,
    up: launch,
  };
}

/// A random ref.
export function newRef() {
  return [...crypto.getRandomValues(new Uint8Array(32))]
    .map((b) => b.toString(16).padStart(2, '0'))
    .join('');
}
