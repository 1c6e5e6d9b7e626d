/**
 * Blobs client: versioned blobs with compare-and-swap and live changes, for browsers and Node.
 *
 * ```js
 * import { connect, text } from 'blobs-client';
 * const client = connect('https://blobs.example.com', { token });
 * const counter = client.blob(ref);
 * await counter.update((bytes) => String(Number(text(bytes ?? new Uint8Array())) + 1));
 * const stop = counter.watch((value) => console.log(value?.version));
 *
 * // Offline-first: a cache, and writes that survive a reload as named operations.
 * const app = connect('https://blobs.example.com', { token, cache: indexedDbCache() });
 * app.operation('increment', (bytes, by) => String(Number(text(bytes ?? new Uint8Array())) + by));
 * void app.blob(ref).update('increment', 1); // shown at once, made once when connected
 * ```
 *
 * @packageDocumentation
 */

import { BlobHandle } from './blob.js';
import { type Data, fromBase64, toBytes } from './bytes.js';
import type { CacheProvider, CacheScope } from './cache.js';
import { HttpTransport } from './http.js';
import { type ClientEvents, Local, type Operation, OfflineError, type Status } from './local.js';
import { type ConnectOptions as SocketOptions, SocketTransport } from './socket.js';

export { BlobHandle } from './blob.js';
export type { SetResult, UpdateOptions, Value } from './blob.js';
export { blake3Hex } from './blake3.js';
export { fromBase64, text, toBase64, toBytes } from './bytes.js';
export type { Data } from './bytes.js';
export { DEFAULT_MAX_BYTES, indexedDbCache, memoryCache } from './cache.js';
export type {
  CacheBackend,
  CacheOptions,
  CacheProvider,
  CacheRecord,
  CacheScope,
  ContentRecord,
  IntentRecord,
  ValueRecord,
} from './cache.js';
export { OfflineError } from './local.js';
export type { ClientEvents, Conflict, Failure, Operation, Status } from './local.js';
export { BlobsError } from './socket.js';

/**
 * The former name of {@link BlobHandle}, kept so that existing imports keep working.
 * @deprecated Use {@link BlobHandle}: this name shadows the DOM's global `Blob` where it is
 * imported.
 */
export const Blob = BlobHandle;
/**
 * The former name of {@link BlobHandle}.
 * @deprecated Use {@link BlobHandle}.
 */
export type Blob = BlobHandle;

/** Content named by its BLAKE3 hash. */
export interface ContentStore {
  /**
   * Stores `data` and resolves to its hash.
   * @returns The BLAKE3 hash of `data`, as 64 lower-case hexadecimal characters.
   */
  put(data: Data): Promise<string>;
  /**
   * The bytes named `hash`, verified against it.
   * @throws `BlobsError` when there is no such content or it does not hash to `hash`.
   */
  get(hash: string): Promise<Uint8Array>;
}

/** A connection to one bucket, as its token grants. */
export interface Client {
  /**
   * One blob of the token's bucket.
   * @param ref - 64 hexadecimal characters naming the blob.
   * @throws TypeError when `ref` is not 64 hexadecimal characters.
   */
  blob(ref: string): BlobHandle;
  /** The bucket's content store: content named by its BLAKE3 hash. */
  readonly content: ContentStore;
  /**
   * Closes the client: its Socket.IO connection, or its HTTP change streams, end, so watches
   * see no more changes.
   * @returns With a cache, a promise that resolves once the cache has stored all it was given
   * (await it before a Node process exits).
   */
  close(): void | Promise<void>;
}

/** Options of `connect`. */
export interface ConnectOptions extends SocketOptions {
  /**
   * Where to keep what the client knows for when it is offline (`indexedDbCache()`,
   * `memoryCache()`, or `fileCache(dir)` from `blobs-client/file-cache`), kept apart per
   * server and bucket. Without one, every read asks the server, and a write made offline
   * waits for the connection.
   */
  cache?: CacheProvider;
}

/** A client over Socket.IO. */
export interface SocketClient extends Client {
  /** The Socket.IO socket, for its connection events. */
  readonly socket: SocketTransport['socket'];
  /**
   * Registers an operation for `blob.update(name, ...args)`. Register every operation right
   * after `connect`: writes queued under a name wait until it is registered.
   * @param fn - The new data from the current bytes (`null`: no blob) and the arguments; it
   * may be called more than once, and should depend on nothing else.
   */
  operation(name: string, fn: Operation): void;
  /** Online, offline or syncing; the writes pending; the last error. */
  readonly status: Status;
  /**
   * Listens to `status` changes, `conflict`s of queued strict sets, and queued writes that
   * `failed` and were given up.
   * @returns A function that stops listening.
   */
  on<K extends keyof ClientEvents>(event: K, listener: (event: ClientEvents[K]) => void): () => void;
  /** Empties the cache: values, content and pending writes (whose promises reject). */
  clearCache(): Promise<void>;
}

/**
 * A client over Socket.IO: one connection for every blob it reads, writes and watches, which
 * reconnects by itself.
 * @param url - The server's address, e.g. `https://blobs.example.com`.
 * @param options - The bucket token, optionally the Socket.IO transports, and a cache.
 * @returns The client, with its Socket.IO `socket` (for its connection events).
 * @throws TypeError when a cache is given with a token that does not name its bucket.
 */
export function connect(url: string, options: ConnectOptions): SocketClient {
  const scope = options.cache && cacheScope(url, options.token);
  const transport = new SocketTransport(url, options);
  const local = new Local(transport, options.cache, scope);
  return {
    socket: transport.socket,
    blob: (ref) => new BlobHandle(transport, ref, local),
    content: {
      put: async (data) => {
        const bytes = toBytes(data);
        if (local.caching && !(await local.online())) {
          throw new OfflineError('offline: content is stored only while connected');
        }
        const hash = await transport.putContent(bytes);
        await local.ready; // kept beside what the cache holds, not under it
        local.keepContent(hash, bytes);
        return hash;
      },
      get: (hash) =>
        local.caching ? local.content(hash, () => transport.getContent(hash)) : transport.getContent(hash),
    },
    operation: (name, fn) => local.operation(name, fn),
    get status() {
      return local.status;
    },
    on: (event, listener) => local.on(event, listener),
    clearCache: () => local.clear(),
    close: () => {
      transport.socket.close();
      return local.close();
    },
  };
}

/** The server and bucket a cache belongs to: the URL's origin, the token's `bucket` claim. */
function cacheScope(url: string, token: string): CacheScope {
  const server = new URL(url, globalThis.location?.href).origin;
  let bucket: unknown;
  try {
    const payload = token.split('.')[1].replaceAll('-', '+').replaceAll('_', '/');
    bucket = JSON.parse(new TextDecoder().decode(fromBase64(payload))).bucket;
  } catch {
    // Said below.
  }
  if (typeof bucket !== 'string' || bucket === '') {
    throw new TypeError('a cache needs a bucket token: a JWT whose `bucket` names its bucket');
  }
  return { server, bucket, name: `${server} ${bucket}` };
}

/**
 * A client over HTTP alone (fetch, and the Server-Sent Events change stream), with the same
 * blob interface.
 * @param url - The server's address, e.g. `https://blobs.example.com`.
 * @param options - The bucket token.
 */
export function connectHttp(url: string, options: { token: string }): Client {
  const transport = new HttpTransport(url, options);
  return {
    blob: (ref) => new BlobHandle(transport, ref),
    content: {
      put: (data) => transport.putContent(data),
      get: (hash) => transport.getContent(hash),
    },
    close: () => transport.close(),
  };
}
