// What a blob is to an app, whichever protocol carries it: read, compare-and-swap, update with
// retries, and watch. The protocols (Socket.IO, HTTP) only provide a `Transport`.

import { type Data, sameBytes, toBytes } from './bytes.js';
import type { Local, Operation } from './local.js';

/** A blob's current value. */
export interface Value {
  /**
   * The version that holds `data`: 1 for the first write, one more for each write after.
   * With writes pending, the version they apply to.
   */
  version: number;
  /** The blob's bytes (with a cache: with the pending writes applied). */
  data: Uint8Array;
  /** From the local cache: the server has not been heard on this blob since the client began. */
  cached?: true;
  /** How many writes of this client are applied to `data` but not yet committed. */
  pending?: number;
}

/**
 * The answer to a compare-and-swap: committed, or refused with the current blob (`data` is
 * `null` when it has none: a blob deleted over HTTP keeps its version). `unknown` on a refusal
 * of a write sent with a write id: the blob no longer remembers writers as far back as the
 * version it named, so an earlier send of that write may have committed.
 */
export type SetResult =
  | { success: true; version: number }
  | { success: false; version: number; data: Uint8Array | null; unknown?: true };

/**
 * Who wrote, and the write's place in the writer's order: a writer sends its writes of one
 * blob in increasing `seq`, each once the one before is answered, and the server does each
 * once however often it is sent.
 */
export interface WriteId {
  writer: string;
  seq: number;
}

/** What a protocol provides for one bucket. */
export interface Transport {
  /** The blob (`null`: none), or `'unchanged'` when it is at `known`. */
  read(ref: string, known?: number): Promise<Value | null | 'unchanged'>;
  /**
   * Compare-and-swap; `version` undefined: create only. `id`: the write id, which makes the
   * write one the server does once however often it is sent (Socket.IO only).
   */
  write(ref: string, data: Uint8Array, version?: number, id?: WriteId): Promise<SetResult>;
  /**
   * Calls `changed` with a version (or undefined: look again) whenever the blob may have
   * changed, and once on every (re)connection; returns a function that stops.
   */
  follow(ref: string, changed: (version?: number) => void): () => void;
  /** Whether nothing will be sent any more: closed by the app or, for good, by the server. */
  readonly closed: boolean;
}

/** Options of {@link BlobHandle.update}. */
export interface UpdateOptions {
  /** Conflicts to retry after before giving up (default 100). */
  retries?: number;
}

/** Waits, in milliseconds, before a watch reads again after a failed read: first, and longest. */
const RETRY = [100, 5000];

/**
 * One blob of the token's bucket, named by its ref: a handle that reads, writes and watches
 * it through the client's connection (it holds no data itself). Get one with
 * `client.blob(ref)`.
 */
export class BlobHandle {
  /** The blob's ref: 64 lower-case hexadecimal characters. */
  readonly ref: string;
  readonly #transport: Transport;
  readonly #local: Local | undefined;
  /** The local state, when the client has a cache. */
  readonly #cache: Local | undefined;

  /**
   * @param transport - The protocol that carries the blob (Socket.IO or HTTP).
   * @param ref - 64 hexadecimal characters naming the blob in the token's bucket.
   * @param local - The client's operations, and its cache if it has one (Socket.IO only).
   * @throws TypeError when `ref` is not 64 hexadecimal characters.
   */
  constructor(transport: Transport, ref: string, local?: Local) {
    if (!/^[0-9a-fA-F]{64}$/.test(ref)) {
      throw new TypeError('a ref is 64 hexadecimal characters');
    }
    this.ref = ref.toLowerCase();
    this.#transport = transport;
    this.#local = local;
    this.#cache = local?.caching ? local : undefined;
  }

  /**
   * The current value, or `null` when there is none. With a cache, while offline: the cached
   * value (marked `cached`), with this client's pending writes applied.
   * @throws `BlobsError` when the server answers with an error; `OfflineError` when offline
   * and the cache does not hold the blob; another `Error` when the connection is refused or
   * lost (without a cache).
   */
  async get(): Promise<Value | null> {
    if (this.#cache) return this.#cache.get(this.ref);
    const read = await this.#transport.read(this.ref);
    return read === 'unchanged' ? null : read;
  }

  /**
   * Writes `data` if the blob is still at `version` (omit it to create a blob that does not
   * exist). A refusal carries the current blob, to rebase on.
   * @param data - Text (stored as UTF-8) or bytes.
   * @param options - `version`: the version this write replaces.
   * With a cache, the write is queued (kept in the cache, shown at once by `watch` and `get`)
   * and made once connected, after this client's earlier writes of the blob; a refusal is
   * also reported by the client's `conflict` event, and nothing is written.
   * @returns Committed with the new version, or refused with the current version and data.
   * @throws `BlobsError` when the server answers with an error (a read-only token, data
   * too large); another `Error` when the connection is refused, or lost while the write was
   * out (its outcome is then unknown; with a cache, it is sent again and made once).
   */
  async set(data: Data, options: { version?: number } = {}): Promise<SetResult> {
    if (this.#cache) {
      return this.#cache.enqueue(this.ref, { data: toBytes(data), version: options.version });
    }
    return this.#transport.write(this.ref, toBytes(data), options.version);
  }

  /**
   * Reads the blob, applies `fn` to its bytes (`null` when there is none) and writes the
   * result with compare-and-swap; on a conflict, applies `fn` again to the data the server
   * returned, as Firebase transactions do.
   * With a cache, the write is queued as `set` says, and `fn` kept in memory: it is made on
   * reconnect, but not after a reload (register a named operation for that).
   * @param fn - The new data from the current bytes; may be called more than once.
   * @param options - `retries`: conflicts to retry after before giving up (default 100).
   * @returns What was written: its version and bytes.
   * @throws `BlobsError` when the server answers with an error; another `Error` when it still
   * conflicts after `options.retries` retries, or when the connection is lost during a write
   * (the outcome is then unknown: read the blob again before deciding to retry).
   */
  update(fn: (current: Uint8Array | null) => Data, options?: UpdateOptions): Promise<Value>;
  /**
   * Applies the operation registered as `operation` (`client.operation(name, fn)`) with
   * `args`, as `update(fn)` does. With a cache, the write is kept in the cache with its
   * name and arguments (JSON), so it survives a reload: it is shown at once and made once
   * connected, exactly once, after this client's earlier writes of the blob.
   * @returns What was written, once the server committed it.
   * @throws TypeError when no operation has that name.
   */
  update(operation: string, ...args: unknown[]): Promise<Value>;
  update(fn: Operation | string, ...rest: unknown[]): Promise<Value> {
    if (typeof fn === 'string') {
      if (!this.#local) throw new TypeError('named operations are registered on a Socket.IO client');
      if (this.#cache) return this.#cache.enqueue(this.ref, { op: fn, args: rest });
      const op = this.#local.op(fn);
      return this.#update((current) => op(current, ...rest));
    }
    // With a cache, an anonymous function is queued in memory: it survives reconnects, not a
    // reload (a function cannot be stored).
    if (this.#cache) return this.#cache.enqueue(this.ref, { fn });
    return this.#update(fn, rest[0] as UpdateOptions | undefined);
  }

  async #update(fn: Operation, options: UpdateOptions = {}): Promise<Value> {
    const retries = options.retries ?? 100;
    const current = await this.get();
    let version = current?.version;
    let data = current ? current.data : null;
    for (let attempt = 0; attempt <= retries; attempt++) {
      const next = toBytes(fn(data));
      const result = await this.#transport.write(this.ref, next, version);
      if (result.success) return { version: result.version, data: next };
      version = result.version;
      data = result.data;
    }
    throw new Error(`update of ${this.ref} still conflicted after ${retries} retries`);
  }

  /**
   * Calls `callback` with the current value first (`null` when there is none), then with each
   * newer version it sees, once each and in increasing order (a version superseded before it
   * could be read is skipped). Survives reconnects: it watches again and catches up.
   *
   * With a cache, the cached value comes first (marked `cached`), then the server's (the same
   * version again, no longer marked, when it had not changed), and each write of this client
   * as soon as it is made (with `pending`), then as the server commits it.
   * @returns A function that stops watching.
   */
  watch(callback: (value: Value | null) => void): () => void {
    const cache = this.#cache;
    let seen = 0;
    let delivered = false;
    let deleted = false;
    let running = false;
    let again = false;
    let stopped = false;
    let retry: ReturnType<typeof setTimeout> | undefined;
    let pause = RETRY[0];
    // Without a cache, what the server said is what the app sees.
    const heard = (read: Value | null) => {
      if (read === null) {
        // Missing: said once, first or after a delete.
        if (!delivered || (seen > 0 && !deleted)) {
          deleted = seen > 0;
          delivered = true;
          callback(null);
        }
      } else if (read.version > seen) {
        seen = read.version;
        deleted = false;
        delivered = true;
        callback(read);
      }
    };
    const look = async () => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        if (cache && !delivered) {
          // What the server says is taken in once the cache is loaded, never under it; the
          // cached version lets the server answer "unchanged".
          await cache.ready;
          seen ||= cache.knownVersion(this.ref) ?? 0;
        }
        do {
          again = false;
          let read: Value | null | 'unchanged';
          try {
            read = await this.#transport.read(this.ref, seen || undefined);
            pause = RETRY[0];
          } catch {
            // Refused (a rate limit) or cut off: look again after a pause, doubling while it
            // fails (a new connection also looks again); closed: nothing will answer.
            if (!stopped && retry === undefined && !this.#transport.closed) {
              retry = setTimeout(() => {
                retry = undefined;
                void look();
              }, pause);
              pause = Math.min(pause * 2, RETRY[1]);
            }
            break;
          }
          if (stopped) continue;
          if (!cache) {
            if (read !== 'unchanged') heard(read);
          } else if (read === 'unchanged') {
            cache.confirmUnchanged(this.ref);
          } else {
            // The server's version, even below what the cache held (restored from a backup).
            seen = read?.version ?? seen;
            delivered = true;
            cache.confirm(this.ref, read);
          }
        } while (again && !stopped);
      } finally {
        running = false;
      }
    };
    const unfollow = this.#transport.follow(this.ref, (version) => {
      if (version === undefined || version > seen || !delivered) void look();
    });
    const reset = () => {
      // The cache was cleared: what this watch knew is gone with it.
      seen = 0;
      void look();
    };
    const unlisten = cache ? this.#show(cache, callback, () => stopped, reset) : undefined;
    return () => {
      stopped = true;
      clearTimeout(retry);
      unfollow();
      unlisten?.();
    };
  }

  /**
   * Calls `callback` with what the cache shows of the blob, whenever that changes; `reset`
   * when the cache was cleared.
   */
  #show(cache: Local, callback: (value: Value | null) => void, stopped: () => boolean, reset: () => void) {
    let shown: Value | null | undefined;
    const show = () => {
      const view = cache.view(this.ref);
      if (view === undefined || stopped() || (shown !== undefined && same(shown, view))) return;
      shown = view;
      callback(view);
    };
    void cache.ready.then(show);
    return cache.listen(this.ref, (cleared) => (cleared ? reset() : show()));
  }
}

/** Whether two views show the same thing. */
function same(a: Value | null, b: Value | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.version !== b.version || a.cached !== b.cached || a.pending !== b.pending) return false;
  return sameBytes(a.data, b.data);
}
