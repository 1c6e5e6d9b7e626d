// Blobs client: versioned blobs with compare-and-swap and live changes, for browsers and Node.
//
//   import { connect } from 'blobs-client';
//   const client = connect('https://blobs.example.com', { token });
//   const counter = client.blob(ref);
//   await counter.update((bytes) => String(Number(text(bytes ?? new Uint8Array())) + 1));
//   const stop = counter.watch((value) => console.log(value?.version));

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
 * @deprecated Use {@link BlobHandle}: `Blob` shadows the DOM's global `Blob` where it is
 * imported.
 */
export const Blob = BlobHandle;
/** @deprecated Use {@link BlobHandle}. */
export type Blob = BlobHandle;

/// Content named by its BLAKE3 hash.
export interface ContentStore {
  /// Stores `data` and resolves to its hash.
  put(data: Data): Promise<string>;
  /// The bytes named `hash`, verified against it.
  get(hash: string): Promise<Uint8Array>;
}

export interface Client {
  /// One blob of the token's bucket.
  blob(ref: string): BlobHandle;
  readonly content: ContentStore;
  close(): void;
}

/// A client over Socket.IO: one connection for every blob it reads, writes and watches, which
/// reconnects by itself.
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

/// A client over HTTP alone (fetch, and the Server-Sent Events change stream), with the same
/// blob interface.
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
