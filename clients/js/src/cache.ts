// Where a client keeps what it knows while offline: the last values it read, content by hash,
// and the writes it has yet to make. The client decides what goes in and what is evicted (see
// `local.ts`); a backend only stores records, durably, for one server and bucket.

/** A blob's last value read from (or written to) the server. */
export interface ValueRecord {
  kind: 'value';
  ref: string;
  /** 0 for a blob the server said does not exist. */
  version: number;
  /** `null`: the blob does not exist (or was deleted). */
  data: Uint8Array | null;
  /** The BLAKE3 hash of `data`, checked when the record is loaded. */
  hash: string | null;
}

/** Content of the bucket's content store, named by its BLAKE3 hash (checked when read). */
export interface ContentRecord {
  kind: 'content';
  hash: string;
  data: Uint8Array;
}

/**
 * A write the client has yet to see committed: a named operation (`op` and its `args`) or a
 * strict `set` (`data` in place of `version`). `writer` and `seq` are its write id, which the
 * server remembers it by (`seq` also orders the queue); `attempt` is the write last sent (or
 * about to be), kept so that after a lost answer or a reload the same write is sent again.
 */
export interface IntentRecord {
  kind: 'intent';
  seq: number;
  writer: string;
  ref: string;
  op?: string;
  args?: unknown[];
  data?: Uint8Array;
  version?: number;
  attempt?: { base?: number; data: Uint8Array };
}

export type CacheRecord = ValueRecord | ContentRecord | IntentRecord;

/** The records of one server and bucket, stored durably. */
export interface CacheBackend {
  /** Every record stored, by key. */
  load(): Promise<[string, CacheRecord][]>;
  /** Stores `puts` and removes `deletes`, all or none, durably before it resolves. */
  write(puts: [string, CacheRecord][], deletes: string[]): Promise<void>;
  /** Removes every record. */
  clear(): Promise<void>;
  close(): void;
}

/** Which server and bucket a cache holds. Never shared between two of them. */
export interface CacheScope {
  /** The server's origin, e.g. `https://blobs.example.com`. */
  server: string;
  /** The bucket the token grants. */
  bucket: string;
  /** `server` and `bucket` in one name, to name a database or file by. */
  name: string;
}

/** A kind of cache: `memoryCache()`, `indexedDbCache()`, or `fileCache(dir)` in Node. */
export interface CacheProvider {
  /** Bytes the cache may hold, values, content and pending writes together. */
  readonly maxBytes: number;
  /** The backend of one server and bucket. */
  open(scope: CacheScope): Promise<CacheBackend>;
}

/** Options of every cache. */
export interface CacheOptions {
  /**
   * Bytes the cache may hold (default 8 MiB): values, content and pending writes. Past it, the
   * values and content used least recently are evicted; pending writes and the values they
   * apply to never are, and a write that would not fit is refused.
   */
  maxBytes?: number;
}

/** The default of {@link CacheOptions.maxBytes}. */
export const DEFAULT_MAX_BYTES = 8 * 1024 * 1024;

/** `options.maxBytes`, checked, or its default. */
export function maxBytesOf(options: CacheOptions): number {
  const bytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new TypeError('maxBytes is a whole number of bytes');
  }
  return bytes;
}

/**
 * A cache in memory: it survives reconnects, not a reload. One `memoryCache()` given to
 * several clients keeps each server and bucket apart.
 */
export function memoryCache(options: CacheOptions = {}): CacheProvider {
  const scopes = new Map<string, Map<string, CacheRecord>>();
  return {
    maxBytes: maxBytesOf(options),
    async open(scope) {
      let records = scopes.get(scope.name);
      if (!records) {
        records = new Map();
        scopes.set(scope.name, records);
      }
      const stored = records;
      return {
        async load() {
          return [...stored].map(([key, record]) => [key, structuredClone(record)]);
        },
        async write(puts, deletes) {
          for (const key of deletes) stored.delete(key);
          for (const [key, record] of puts) stored.set(key, structuredClone(record));
        },
        async clear() {
          stored.clear();
        },
        close() {},
      };
    },
  };
}

/**
 * A cache in the browser's IndexedDB: one database per server and bucket (named
 * `blobs-client <server> <bucket>`), which survives reloads for as long as the browser keeps
 * the site's storage.
 */
export function indexedDbCache(options: CacheOptions = {}): CacheProvider {
  return {
    maxBytes: maxBytesOf(options),
    async open(scope) {
      const db = await request(
        (() => {
          const opening = indexedDB.open(`blobs-client ${scope.server} ${scope.bucket}`, 1);
          opening.onupgradeneeded = () => opening.result.createObjectStore(STORE);
          return opening;
        })(),
      );
      const transaction = (mode: IDBTransactionMode) =>
        db.transaction(STORE, mode, { durability: 'strict' });
      return {
        async load() {
          const store = transaction('readonly').objectStore(STORE);
          const [keys, records] = await Promise.all([
            request(store.getAllKeys()),
            request(store.getAll()),
          ]);
          return keys.map((key, i) => [String(key), records[i] as CacheRecord]);
        },
        write(puts, deletes) {
          const tx = transaction('readwrite');
          const store = tx.objectStore(STORE);
          for (const key of deletes) store.delete(key);
          for (const [key, record] of puts) store.put(record, key);
          return done(tx);
        },
        clear() {
          const tx = transaction('readwrite');
          tx.objectStore(STORE).clear();
          return done(tx);
        },
        close() {
          db.close();
        },
      };
    },
  };
}

const STORE = 'records';

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}
