/**
 * Blobs client: versioned blobs with compare-and-swap and live changes, for browsers and Node.
 *
 * ```js
 * import { connect, text } from 'blobs-client';
 * const client = connect('https://blobs.example.com', { token });
 * const counter = client.blob(ref);
 * await counter.update((bytes) => String(Number(text(bytes ?? new Uint8Array())) + 1));
 * const stop = counter.watch((value) => console.log(value?.version));
 * ```
 *
 * @packageDocumentation
 */

import { BlobHandle } from './blob.js';
import { type Data } from './bytes.js';
import { HttpTransport } from './http.js';
import { type ConnectOptions, SocketTransport } from './socket.js';

export { BlobHandle } from './blob.js';
export type { SetResult, UpdateOptions, Value } from './blob.js';
export { blake3Hex } from './blake3.js';
export { fromBase64, text, toBase64, toBytes } from './bytes.js';
export type { Data } from './bytes.js';
export { BlobsError } from './socket.js';
export type { ConnectOptions } from './socket.js';

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
   */
  close(): void;
}

/**
 * A client over Socket.IO: one connection for every blob it reads, writes and watches, which
 * reconnects by itself.
 * @param url - The server's address, e.g. `https://blobs.example.com`.
 * @param options - The bucket token, and optionally the Socket.IO transports.
 * @returns The client, with its Socket.IO `socket` (for its connection events).
 */
export function connect(url: string, options: ConnectOptions): Client & { readonly socket: SocketTransport['socket'] } {
  const transport = new SocketTransport(url, options);
  return {
    socket: transport.socket,
    blob: (ref) => new BlobHandle(transport, ref),
    content: {
      put: (data) => transport.putContent(data),
      get: (hash) => transport.getContent(hash),
    },
    close: () => transport.socket.close(),
  };
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
