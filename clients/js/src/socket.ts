// Blobs over Socket.IO: one connection for every blob of the bucket (`get`/`set` naming their
// `ref`, `watch` with `changed { ref, version }`), and the content-addressed flow.

import { io, type Socket } from 'socket.io-client';

import { blake3Hex } from './blake3.js';
import { type Data, fromBase64, toBase64, toBytes } from './bytes.js';
import type { SetResult, Transport, Value, WriteId } from './blob.js';

/** The refs one `watch` names at most (the server's limit per event). */
const WATCH_BATCH = 1000;

/** Content up to this size goes inline (`blob-upload`); larger goes to a direct upload URL. */
const INLINE_LIMIT = 512 * 1024;

/** An `{ error }` answer of the server. */
export class BlobsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BlobsError';
  }
}

interface Pending {
  reject: (error: Error) => void;
  /**
   * Whether the call went out on the connection (a call made while disconnected waits in the
   * client's buffer and goes out on the next one).
   */
  sent: boolean;
}

/** Options of `connect`. */
export interface ConnectOptions {
  /** The bucket token. */
  token: string;
  /** Socket.IO transports, e.g. `['websocket']`; default: long-polling, then WebSocket. */
  transports?: ('polling' | 'websocket')[];
  /**
   * The largest blob the server takes, in bytes: its `MAX_DATA_BYTES` (default 786,432). A
   * larger write is refused here, as the server would refuse it.
   */
  maxDataBytes?: number;
}

/** The default of {@link ConnectOptions.maxDataBytes}: the server's default `MAX_DATA_BYTES`. */
const MAX_DATA_BYTES = 786_432;

/**
 * Blobs over one Socket.IO connection, which reconnects by itself: the `Transport` of
 * `connect`.
 */
export class SocketTransport implements Transport {
  /** The Socket.IO socket, for its connection events (`connect`, `disconnect`, `connect_error`). */
  readonly socket: Socket;
  readonly #pending = new Set<Pending>();
  readonly #follows = new Map<string, Set<(version?: number) => void>>();
  readonly #maxData: number;
  #failure: Error | undefined;

  constructor(url: string, options: ConnectOptions) {
    this.#maxData = options.maxDataBytes ?? MAX_DATA_BYTES;
    this.socket = io(url, {
      auth: { token: options.token },
      transports: options.transports ?? ['polling', 'websocket'],
      forceNew: true,
    });
    this.socket.on('connect', () => {
      for (const pending of this.#pending) pending.sent = true;
      void this.#resubscribe();
    });
    this.socket.on('disconnect', () => {
      // What was sent may or may not have been done: its caller must look again.
      for (const pending of this.#pending) {
        if (pending.sent) {
          this.#pending.delete(pending);
          pending.reject(new Error('connection lost: the outcome of this call is unknown'));
        }
      }
    });
    this.socket.on('connect_error', (error: Error) => {
      // A refused handshake is final (the client does not retry it): every call fails.
      if (!this.socket.active) {
        this.#failure = error;
        for (const pending of this.#pending) pending.reject(error);
        this.#pending.clear();
      }
    });
    this.socket.on('changed', (change?: { ref?: unknown; version?: unknown }) => {
      if (typeof change?.ref !== 'string') return;
      const version = typeof change.version === 'number' ? change.version : undefined;
      for (const changed of this.#follows.get(change.ref) ?? []) changed(version);
    });
  }

  /**
   * Sends `event` with `arg` and resolves to the answer.
   * @throws `BlobsError` for an `{ error }` answer; another `Error` when the handshake was
   * refused, or when the connection was lost after the event went out.
   */
  call(event: string, arg: unknown): Promise<any> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (!this.socket.active) {
      // Nothing would send it: closed by the app (`close`, `socket.disconnect`) or the server.
      return Promise.reject(new Error('not connected, and not reconnecting: the connection was closed'));
    }
    return new Promise((resolve, reject) => {
      const pending: Pending = { reject, sent: this.socket.connected };
      this.#pending.add(pending);
      this.socket.emit(event, arg, (reply: any) => {
        if (!this.#pending.delete(pending)) return;
        if (reply && typeof reply === 'object' && typeof reply.error === 'string') {
          reject(new BlobsError(reply.error));
        } else {
          resolve(reply);
        }
      });
    });
  }

  async read(ref: string, known?: number): Promise<Value | null | 'unchanged'> {
    const reply = await this.call('get', known ? { ref, known } : { ref });
    if (reply === null) return null;
    if (known !== undefined && reply.version === known && !('data' in reply)) return 'unchanged';
    return { version: reply.version, data: reply.data ? fromBase64(reply.data) : new Uint8Array() };
  }

  async write(ref: string, data: Uint8Array, version?: number, id?: WriteId): Promise<SetResult> {
    if (data.length > this.#maxData) {
      // Sent, it would be refused, or past the transport's limit close the connection.
      throw new BlobsError(`Invalid data: ${data.length} bytes, more than the ${this.#maxData} the server takes`);
    }
    const arg: Record<string, unknown> = { ref, data: toBase64(data) };
    if (version !== undefined) arg.version = version;
    if (id !== undefined) Object.assign(arg, id);
    const reply = await this.call('set', arg);
    if (reply.success) return { success: true, version: reply.version };
    return {
      success: false,
      version: reply.version,
      data: typeof reply.data === 'string' ? fromBase64(reply.data) : null,
      ...(reply.unknown === true && { unknown: true }),
    };
  }

  get closed(): boolean {
    return !this.socket.active;
  }

  /** The refused handshake that ended this client, if one did. */
  get failure(): Error | undefined {
    return this.#failure;
  }

  follow(ref: string, changed: (version?: number) => void): () => void {
    let callbacks = this.#follows.get(ref);
    const first = !callbacks;
    if (!callbacks) {
      callbacks = new Set();
      this.#follows.set(ref, callbacks);
    }
    callbacks.add(changed);
    if (this.socket.connected) {
      // Watched before it is read, so no change falls in between.
      const watched = first ? this.call('watch', { refs: [ref] }) : Promise.resolve();
      watched.then(() => changed(), () => {});
    }
    return () => {
      const set = this.#follows.get(ref);
      if (!set?.delete(changed) || set.size > 0) return;
      this.#follows.delete(ref);
      if (this.socket.connected) this.call('unwatch', { refs: [ref] }).catch(() => {});
    };
  }

  /** On every connection: watch every followed ref again, then let each catch up. */
  async #resubscribe() {
    const refs = [...this.#follows.keys()];
    try {
      for (let i = 0; i < refs.length; i += WATCH_BATCH) {
        await this.call('watch', { refs: refs.slice(i, i + WATCH_BATCH) });
      }
    } catch {
      return; // lost again: the next connection tries again
    }
    for (const ref of refs) for (const changed of this.#follows.get(ref) ?? []) changed();
  }

  /**
   * Stores content and resolves to its hash: inline when small, through a direct upload URL
   * when large.
   */
  async putContent(data: Data): Promise<string> {
    const bytes = toBytes(data);
    const hash = blake3Hex(bytes);
    if (bytes.length <= INLINE_LIMIT) {
      const reply = await this.call('blob-upload', { blobs: [{ hash, data_b64: toBase64(bytes) }] });
      if (reply.accepted?.includes(hash)) return hash;
      throw new BlobsError(reply.rejected?.[0]?.reason ?? 'content refused');
    }
    const granted = await this.call('request-upload', { hash, size: bytes.length });
    if (granted.reason === 'already present') return hash;
    if (!granted.url) throw new BlobsError(granted.reason ?? 'upload refused');
    const put = await fetch(granted.url, { method: 'PUT', body: bytes as Uint8Array<ArrayBuffer> });
    if (!put.ok) throw new BlobsError(`direct upload failed: ${put.status}`);
    const confirmed = await this.call('blob-uploaded', { hash });
    if (confirmed.reason) throw new BlobsError(confirmed.reason);
    return hash;
  }

  /** The content named `hash`, checked against it. */
  async getContent(hash: string): Promise<Uint8Array> {
    const reply = await this.call('blob-request', { hashes: [hash], redirect: true });
    let bytes: Uint8Array | undefined;
    const inline = reply.blobs?.find((b: { hash: string }) => b.hash === hash);
    const redirect = reply.redirects?.find((r: { hash: string }) => r.hash === hash);
    if (inline) {
      bytes = fromBase64(inline.data_b64);
    } else if (redirect) {
      const got = await fetch(redirect.url);
      if (!got.ok) throw new BlobsError(`direct download failed: ${got.status}`);
      bytes = new Uint8Array(await got.arrayBuffer());
    } else {
      throw new BlobsError(`no content ${hash}`);
    }
    return verified(bytes, hash);
  }
}

/** `bytes` if they hash to `hash`; an error otherwise. */
export function verified(bytes: Uint8Array, hash: string): Uint8Array {
  const actual = blake3Hex(bytes);
  if (actual !== hash) throw new BlobsError(`content ${hash} hashes to ${actual}`);
  return bytes;
}
