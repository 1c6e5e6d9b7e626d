// What a blob is to an app, whichever protocol carries it: read, compare-and-swap, update with
// retries, and watch. The protocols (Socket.IO, HTTP) only provide a `Transport`.

import { type Data, toBytes } from './bytes.js';

/** A blob's current value. */
export interface Value {
  /** The version that holds `data`: 1 for the first write, one more for each write after. */
  version: number;
  /** The blob's bytes. */
  data: Uint8Array;
}

/**
 * The answer to a compare-and-swap: committed, or refused with the current blob (`data` is
 * `null` when it has none: a blob deleted over HTTP keeps its version).
 */
export type SetResult =
  | { success: true; version: number }
  | { success: false; version: number; data: Uint8Array | null };

/** What a protocol provides for one bucket. */
export interface Transport {
  /** The blob (`null`: none), or `'unchanged'` when it is at `known`. */
  read(ref: string, known?: number): Promise<Value | null | 'unchanged'>;
  /** Compare-and-swap; `version` undefined: create only. */
  write(ref: string, data: Uint8Array, version?: number): Promise<SetResult>;
  /**
   * Calls `changed` with a version (or undefined: look again) whenever the blob may have
   * changed, and once on every (re)connection; returns a function that stops.
   */
  follow(ref: string, changed: (version?: number) => void): () => void;
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

  /**
   * @param transport - The protocol that carries the blob (Socket.IO or HTTP).
   * @param ref - 64 hexadecimal characters naming the blob in the token's bucket.
   * @throws TypeError when `ref` is not 64 hexadecimal characters.
   */
  constructor(transport: Transport, ref: string) {
    if (!/^[0-9a-fA-F]{64}$/.test(ref)) {
      throw new TypeError('a ref is 64 hexadecimal characters');
    }
    this.ref = ref.toLowerCase();
    this.#transport = transport;
  }

  /**
   * The current value, or `null` when there is none.
   * @throws `BlobsError` when the server answers with an error; another `Error` when
   * the connection is refused or lost.
   */
  async get(): Promise<Value | null> {
    const read = await this.#transport.read(this.ref);
    return read === 'unchanged' ? null : read;
  }

  /**
   * Writes `data` if the blob is still at `version` (omit it to create a blob that does not
   * exist). A refusal carries the current blob, to rebase on.
   * @param data - Text (stored as UTF-8) or bytes.
   * @param options - `version`: the version this write replaces.
   * @returns Committed with the new version, or refused with the current version and data.
   * @throws `BlobsError` when the server answers with an error (a read-only token, data
   * too large); another `Error` when the connection is refused, or lost while the write was
   * out (its outcome is then unknown).
   */
  set(data: Data, options: { version?: number } = {}): Promise<SetResult> {
    return this.#transport.write(this.ref, toBytes(data), options.version);
  }

  /**
   * Reads the blob, applies `fn` to its bytes (`null` when there is none) and writes the
   * result with compare-and-swap; on a conflict, applies `fn` again to the data the server
   * returned, as Firebase transactions do.
   * @param fn - The new data from the current bytes; may be called more than once.
   * @param options - `retries`: conflicts to retry after before giving up (default 100).
   * @returns What was written: its version and bytes.
   * @throws `BlobsError` when the server answers with an error; another `Error` when it still
   * conflicts after `options.retries` retries, or when the connection is lost during a write
   * (the outcome is then unknown: read the blob again before deciding to retry).
   */
  async update(
    fn: (current: Uint8Array | null) => Data,
    options: UpdateOptions = {},
  ): Promise<Value> {
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
   * @returns A function that stops watching.
   */
  watch(callback: (value: Value | null) => void): () => void {
    let seen = 0;
    let delivered = false;
    let deleted = false;
    let running = false;
    let again = false;
    let stopped = false;
    let retry: ReturnType<typeof setTimeout> | undefined;
    let pause = RETRY[0];
    const look = async () => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        do {
          again = false;
          let read: Value | null | 'unchanged';
          try {
            read = await this.#transport.read(this.ref, seen || undefined);
            pause = RETRY[0];
          } catch {
            // Refused (a rate limit) or cut off: look again after a pause, doubling while it
            // fails (a new connection also looks again).
            if (!stopped && retry === undefined) {
              retry = setTimeout(() => {
                retry = undefined;
                void look();
              }, pause);
              pause = Math.min(pause * 2, RETRY[1]);
            }
            break;
          }
          if (stopped || read === 'unchanged') continue;
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
        } while (again && !stopped);
      } finally {
        running = false;
      }
    };
    const unfollow = this.#transport.follow(this.ref, (version) => {
      if (version === undefined || version > seen || !delivered) void look();
    });
    return () => {
      stopped = true;
      clearTimeout(retry);
      unfollow();
    };
  }
}
