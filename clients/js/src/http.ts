// Blobs over HTTP only: `/v1/blobs/{ref}` with ETags as versions, its Server-Sent Events change
// stream (read with fetch, so the token goes in a header), and the content routes.

import { blake3Hex } from './blake3.js';
import { type Data, toBytes } from './bytes.js';
import type { SetResult, Transport, Value } from './blob.js';
import { BlobsError, verified } from './socket.js';

/** Waits between attempts to reopen a change stream: first, and longest. */
const RETRY = [250, 5000];

/**
 * Blobs over HTTP alone: fetch, and a Server-Sent Events change stream per followed blob.
 * The `Transport` of `connectHttp`.
 */
export class HttpTransport implements Transport {
  readonly #base: string;
  readonly #token: string;
  readonly #streams = new Set<AbortController>();
  #closed = false;

  constructor(url: string, options: { token: string }) {
    this.#base = url.replace(/\/+$/, '');
    this.#token = options.token;
  }

  #request(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    headers.set('authorization', `Bearer ${this.#token}`);
    return fetch(`${this.#base}${path}`, { ...init, headers });
  }

  async read(ref: string, known?: number): Promise<Value | null | 'unchanged'> {
    const headers: Record<string, string> = known ? { 'if-none-match': `"${known}"` } : {};
    const response = await this.#request(`/v1/blobs/${ref}`, { headers });
    if (response.status === 304) return 'unchanged';
    if (response.status === 404) return null;
    if (!response.ok) throw await failure(response);
    return { version: etag(response), data: new Uint8Array(await response.arrayBuffer()) };
  }

  async write(ref: string, data: Uint8Array, version?: number): Promise<SetResult> {
    const headers: Record<string, string> =
      version === undefined ? { 'if-none-match': '*' } : { 'if-match': `"${version}"` };
    const response = await this.#request(`/v1/blobs/${ref}`, { method: 'PUT', headers, body: data as Uint8Array<ArrayBuffer> });
    if (response.ok) return { success: true, version: etag(response) };
    if (response.status === 412) {
      const current = new Uint8Array(await response.arrayBuffer());
      return { success: false, version: etag(response), data: current };
    }
    throw await failure(response);
  }

  follow(ref: string, changed: (version?: number) => void): () => void {
    const stop = new AbortController();
    this.#streams.add(stop);
    void (async () => {
      let pause = RETRY[0];
      let lastId: string | undefined;
      while (!stop.signal.aborted) {
        try {
          const headers: Record<string, string> = { accept: 'text/event-stream' };
          if (lastId) headers['last-event-id'] = lastId;
          const response = await this.#request(`/v1/blobs/${ref}/events`, {
            headers,
            signal: stop.signal,
          });
          if (!response.ok || !response.body) throw await failure(response);
          pause = RETRY[0];
          changed(); // open: catch up on what happened while it was not
          for await (const id of eventIds(response.body)) {
            lastId = id;
            changed(Number(id));
          }
        } catch {
          // Closed or failed: open it again after a pause, unless stopped.
        }
        if (stop.signal.aborted) break;
        await new Promise((wake) => setTimeout(wake, pause));
        pause = Math.min(pause * 2, RETRY[1]);
      }
    })();
    return () => {
      stop.abort();
      this.#streams.delete(stop);
    };
  }

  /** Stores content (`PUT /blobs/{hash}`) and resolves to its hash. */
  async putContent(data: Data): Promise<string> {
    const bytes = toBytes(data);
    const hash = blake3Hex(bytes);
    const response = await this.#request(`/blobs/${hash}`, { method: 'PUT', body: bytes as Uint8Array<ArrayBuffer> });
    if (!response.ok) throw await failure(response);
    return hash;
  }

  /** The content named `hash` (`GET /blobs/{hash}`), checked against it. */
  async getContent(hash: string): Promise<Uint8Array> {
    const response = await this.#request(`/blobs/${hash}`);
    if (!response.ok) throw await failure(response);
    return verified(new Uint8Array(await response.arrayBuffer()), hash);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Stops every change stream. */
  close() {
    this.#closed = true;
    for (const stream of this.#streams) stream.abort();
    this.#streams.clear();
  }
}

/** The version an ETag (`"3"`) names. */
function etag(response: Response): number {
  return Number((response.headers.get('etag') ?? '').replaceAll('"', ''));
}

async function failure(response: Response): Promise<BlobsError> {
  const body = await response.json().catch(() => ({}));
  return new BlobsError(body?.error ?? `HTTP ${response.status}`);
}

/** The `id` of each event of a Server-Sent Events body. */
async function* eventIds(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  const reader = body.getReader();
  let buffer = '';
  let id: string | undefined;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, '');
      buffer = buffer.slice(end + 1);
      if (line.startsWith('id:')) id = line.slice(3).trim();
      else if (line === '' && id !== undefined) {
        yield id;
        id = undefined;
      }
    }
  }
}
