/**
 * A cache in a file, for Node: `import { fileCache } from 'blobs-client/file-cache'`.
 *
 * @packageDocumentation
 */

import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';

import { blake3Hex } from './blake3.js';
import { fromBase64, toBase64, toBytes } from './bytes.js';
import type { CacheBackend, CacheOptions, CacheProvider, CacheRecord } from './cache.js';
import { maxBytesOf } from './cache.js';

/**
 * A cache in `dir`: one JSON file per server and bucket (`blobs-<hash of both>.json`),
 * replaced whole and synced on every change, so it survives a restart of the process or of
 * the machine. Meant for small caches: each change rewrites the file.
 */
export function fileCache(dir: string, options: CacheOptions = {}): CacheProvider {
  return {
    maxBytes: maxBytesOf(options),
    async open(scope): Promise<CacheBackend> {
      await mkdir(dir, { recursive: true });
      const path = join(dir, `blobs-${blake3Hex(toBytes(scope.name)).slice(0, 32)}.json`);
      const records = new Map<string, CacheRecord>();
      let last = Promise.resolve();
      // One replacement at a time, each of the whole file as it is after this change.
      const save = () => {
        const text = JSON.stringify({ scope: scope.name, records: [...records] }, encode);
        last = last.then(() => replace(path, text));
        return last;
      };
      return {
        async load() {
          for (const [key, record] of await read(path, scope.name)) records.set(key, record);
          return [...records];
        },
        write(puts, deletes) {
          for (const key of deletes) records.delete(key);
          for (const [key, record] of puts) records.set(key, record);
          return save();
        },
        clear() {
          records.clear();
          return save();
        },
        close() {},
      };
    },
  };
}

async function read(path: string, scope: string): Promise<[string, CacheRecord][]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  let file;
  try {
    file = JSON.parse(text, decode);
  } catch (error) {
    // Set aside for a person to look at, and started over.
    await rename(path, `${path}.damaged`);
    throw new Error(`the cache file ${path} does not parse (${error}): set aside as ${path}.damaged`);
  }
  // Another scope's (a hash collision): started over.
  return file?.scope === scope && Array.isArray(file.records) ? file.records : [];
}

/** Writes a temporary file, syncs it, and renames it over `path`, then syncs the folder. */
async function replace(path: string, text: string) {
  const temporary = `${path}.tmp`;
  const file = await open(temporary, 'w');
  try {
    await file.writeFile(text);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
  const folder = await open(join(path, '..'), 'r');
  try {
    await folder.sync();
  } finally {
    await folder.close();
  }
}

function encode(_key: string, value: unknown) {
  return value instanceof Uint8Array ? { $bytes: toBase64(value) } : value;
}

function decode(_key: string, value: unknown) {
  const bytes = (value as { $bytes?: unknown } | null)?.$bytes;
  return typeof bytes === 'string' ? fromBase64(bytes) : value;
}
