// What a client with a cache knows and owes: the last value the server gave of each blob it
// read, content by hash, and the writes it has yet to make (intents), all kept in the cache;
// and the loop that makes those writes, in order per blob, once connected.
//
// Exactly once rests on write ids: every intent has one (this client's writer name, and the
// intent's place in its queue), sent with each of its attempts, and the server answers an id
// it remembers as committed with the version that write made instead of applying it again.
// An attempt is kept in the cache before it is sent, so after a lost answer, or a reload, the
// same attempt is sent again and the server's answer settles it.

import { blake3Hex } from './blake3.js';
import type { SetResult, Value } from './blob.js';
import { type Data, sameBytes, toBytes } from './bytes.js';
import type {
  CacheBackend,
  CacheProvider,
  CacheRecord,
  CacheScope,
  IntentRecord,
  ValueRecord,
} from './cache.js';
import { BlobsError, type SocketTransport, verified } from './socket.js';

/** A named operation: the new data from the current (`null`: no blob) and the arguments. */
export type Operation = (current: Uint8Array | null, ...args: any[]) => Data;

/** What a UI can show of a client. */
export interface Status {
  /** Connected with nothing to send, not connected, or connected and sending queued writes. */
  state: 'online' | 'offline' | 'syncing';
  /** Writes made but not yet seen committed by the server. */
  pending: number;
  /** The last error: a refused connection, or a queued write that failed. */
  lastError: Error | null;
}

/** A queued strict `set` whose version was stale when it was sent: nothing was written. */
export interface Conflict {
  ref: string;
  /** What the set would have written. */
  data: Uint8Array;
  /** The version it named (undefined: create only). */
  version: number | undefined;
  /** The server's blob when it was refused (`data` null: none). */
  current: { version: number; data: Uint8Array | null };
}

/** A queued write that was given up, and why. */
export interface Failure {
  ref: string;
  error: Error;
}

/** The events of a client: `on(event, listener)`. */
export interface ClientEvents {
  status: Status;
  conflict: Conflict;
  failed: Failure;
}

/** A read while offline of what the cache does not hold. */
export class OfflineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OfflineError';
  }
}

interface Intent extends IntentRecord {
  /** Kept in the cache: a named operation or a set; an anonymous function lives in memory. */
  durable: boolean;
  fn?: Operation;
  settle?: { resolve: (value: any) => void; reject: (error: Error) => void };
  /** Its attempt was made here and has not gone out yet: no earlier send of it can exist. */
  firstSend: boolean;
  /** Its attempt is out, waiting for the server's answer. */
  sending: boolean;
}

interface Known {
  version: number;
  data: Uint8Array | null;
  used: number;
}

/** Bytes a record costs beyond its data. */
const OVERHEAD = 128;
/** Waits before a write refused for a passing reason (a rate limit, shutdown) is sent again. */
const RETRY = [500, 30_000];

/** Why the sync loop of a ref stopped. */
type Stopped = 'idle' | 'blocked' | 'lost';

/**
 * The status of a Socket.IO client and its events; with a cache, also its values, content and
 * queued writes.
 */
export class Local {
  readonly ready: Promise<void>;
  readonly #transport: SocketTransport;
  readonly #provider: CacheProvider | undefined;
  #backend: CacheBackend | undefined;
  readonly #values = new Map<string, Known>();
  readonly #contents = new Map<string, { data: Uint8Array; used: number }>();
  /** The writes yet to be made, per ref, in the order they were made. */
  readonly #queues = new Map<string, Intent[]>();
  /** How many writes `#queues` holds, and their bytes. */
  #pending = 0;
  #queuedBytes = 0;
  /** Refs read from the server by this client: their values are not "cached" any more. */
  readonly #fresh = new Set<string>();
  /** What `view` gave, per ref, until that ref changes: a long queue is applied once. */
  readonly #views = new Map<string, Memo>();
  /** Called with `true` when the cache was cleared (look again), `false` when the view changed. */
  readonly #watchers = new Map<string, Set<(reset: boolean) => void>>();
  /** Refs whose watchers are told at the end of this turn, once however often they changed. */
  readonly #told = new Set<string>();
  readonly #running = new Set<string>();
  readonly #ops = new Map<string, Operation>();
  readonly #listeners: { [K in keyof ClientEvents]: Set<(event: ClientEvents[K]) => void> } = {
    status: new Set(),
    conflict: new Set(),
    failed: new Set(),
  };
  #bytes = 0;
  #clock = 0;
  #seq = 0;
  #lastError: Error | null = null;
  #status: Status;
  /** Whether the connection is known to be down (failed or lost since it was last up). */
  #down = false;
  #saving: Promise<void> = Promise.resolve();
  #closed = false;
  /** This client's writer name: new for each client, kept by each of its intents. */
  readonly #writer = randomName();

  constructor(transport: SocketTransport, provider: CacheProvider | undefined, scope: CacheScope | undefined) {
    this.#transport = transport;
    this.#provider = provider;
    const socket = transport.socket;
    socket.on('connect', () => {
      this.#down = false;
      this.#changed();
      this.#kickAll();
    });
    socket.on('disconnect', (reason: string) => {
      this.#down = true;
      if (reason === 'io server disconnect') {
        this.#lastError = new BlobsError('the server closed the connection (an expired or revoked token?)');
      }
      this.#changed();
    });
    socket.on('connect_error', (error: Error) => {
      this.#down = true;
      if (!socket.active) this.#lastError = error;
      this.#changed();
    });
    this.#status = this.#current();
    this.ready = provider && scope ? this.#load(provider, scope) : Promise.resolve();
  }

  /** Whether a cache was given. */
  get caching(): boolean {
    return this.#provider !== undefined;
  }

  /** The status, the same object until it changes. */
  get status(): Status {
    return this.#status;
  }

  #current(): Status {
    const pending = this.#pending;
    const state = !this.#transport.socket.connected ? 'offline' : pending ? 'syncing' : 'online';
    return { state, pending, lastError: this.#lastError };
  }

  on<K extends keyof ClientEvents>(event: K, listener: (event: ClientEvents[K]) => void): () => void {
    const listeners = this.#listeners[event] as Set<typeof listener>;
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  #emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]) {
    for (const listener of this.#listeners[event] as Set<(event: ClientEvents[K]) => void>) {
      listener(value);
    }
  }

  /** Emits `status` if it changed. */
  #changed() {
    const status = this.#current();
    const was = this.#status;
    const same =
      status.state === was.state &&
      status.pending === was.pending &&
      status.lastError?.message === was.lastError?.message;
    if (same) return;
    this.#status = status;
    this.#emit('status', status);
  }

  /** Registers a named operation, and sends the queued writes that waited for it. */
  operation(name: string, fn: Operation) {
    if (typeof name !== 'string' || name === '' || typeof fn !== 'function') {
      throw new TypeError('an operation is a name and a function');
    }
    this.#ops.set(name, fn);
    this.#kickAll();
  }

  /** The operation registered under `name`. */
  op(name: string): Operation {
    const fn = this.#ops.get(name);
    if (!fn) throw new TypeError(`no operation named ${JSON.stringify(name)}: register it with client.operation()`);
    return fn;
  }

  async #load(provider: CacheProvider, scope: CacheScope) {
    try {
      this.#backend = await provider.open(scope);
    } catch (error) {
      // No cache to be had (storage refused, blocked): go on in memory alone, and say so.
      this.#lastError = error as Error;
      this.#changed();
      return;
    }
    try {
      const damaged: string[] = [];
      for (const [key, record] of await this.#backend.load()) {
        if (!this.#take(record)) damaged.push(key);
      }
      for (const queue of this.#queues.values()) queue.sort((a, b) => a.seq - b.seq);
      if (damaged.length) this.#save([], damaged);
      this.#evict();
    } catch (error) {
      // What it held is lost (a damaged cache): start from nothing, and say so.
      this.#lastError = error as Error;
    }
    for (const ref of this.#watchers.keys()) this.#touched(ref);
    this.#changed();
    this.#kickAll();
  }

  /** Takes in one record the cache held; `false` when it is damaged (and left out). */
  #take(record: CacheRecord): boolean {
    const bytes = (data: unknown): data is Uint8Array => data instanceof Uint8Array;
    if (record.kind === 'value') {
      const intact =
        typeof record.ref === 'string' &&
        Number.isSafeInteger(record.version) &&
        (record.data === null || (bytes(record.data) && blake3Hex(record.data) === record.hash));
      if (!intact) return false;
      this.#values.set(record.ref, { version: record.version, data: record.data, used: 0 });
      this.#bytes += valueBytes(record.data);
    } else if (record.kind === 'content') {
      if (!bytes(record.data) || typeof record.hash !== 'string') return false;
      this.#contents.set(record.hash, { data: record.data, used: 0 });
      this.#bytes += contentBytes(record.data);
    } else if (record.kind === 'intent') {
      const intact =
        typeof record.ref === 'string' &&
        typeof record.writer === 'string' &&
        Number.isSafeInteger(record.seq) &&
        (record.op === undefined ? bytes(record.data) : Array.isArray(record.args ?? [])) &&
        (record.attempt === undefined || bytes(record.attempt.data));
      if (!intact) return false;
      this.#enter({ ...record, durable: true, firstSend: false, sending: false });
      this.#seq = Math.max(this.#seq, record.seq);
    } else {
      return false;
    }
    return true;
  }

  /** Queues a change of the cache's records, in order, and resolves once it is stored. */
  #save(puts: [string, CacheRecord][], deletes: string[]): Promise<void> {
    const backend = this.#backend;
    if (!backend) return Promise.resolve();
    this.#saving = this.#saving.then(() =>
      backend.write(puts, deletes).catch((error: Error) => {
        this.#lastError = error;
        this.#changed();
      }),
    );
    return this.#saving;
  }

  /** Resolves whether the server can be asked now: connected, or connected at first try. */
  async online(): Promise<boolean> {
    const socket = this.#transport.socket;
    if (socket.connected) return true;
    if (this.#down || !socket.active) return false;
    return new Promise((resolve) => {
      const settle = (up: boolean) => () => {
        socket.off('connect', yes);
        socket.off('connect_error', no);
        resolve(up);
      };
      const yes = settle(true);
      const no = settle(false);
      socket.once('connect', yes);
      socket.once('connect_error', no);
    });
  }

  // --- values ---

  /** What the app sees of `ref`: the server's last value with the queued writes applied. */
  view(ref: string): Value | null | undefined {
    return this.#memo(ref).view;
  }

  #memo(ref: string): Memo {
    let memo = this.#views.get(ref);
    if (!memo) {
      memo = this.#viewOver(ref, this.#values.get(ref));
      this.#views.set(ref, memo);
    }
    return memo;
  }

  /** `view`, over `known` as the server's value, and the data its first pending write makes. */
  #viewOver(ref: string, known: { version: number; data: Uint8Array | null } | undefined): Memo {
    let data = known ? known.data : null;
    let pending = 0;
    let head: Uint8Array | null | undefined;
    for (const intent of this.#queued(ref)) {
      pending++;
      try {
        data = this.#applied(intent, data) ?? data;
      } catch {
        // Failed here, it fails when sent too, and is reported then.
      }
      if (pending === 1) head = data;
    }
    return { view: this.#shown(ref, known?.version, data, pending), head };
  }

  #shown(ref: string, version: number | undefined, data: Uint8Array | null, pending: number) {
    if (version === undefined && !pending) return undefined;
    if (data === null) return null;
    const value: Value = { version: version ?? 0, data };
    if (!this.#fresh.has(ref)) value.cached = true;
    if (pending) value.pending = pending;
    return value;
  }

  /** What `intent` writes over `data`; undefined when its operation is not registered yet. */
  #applied(intent: Intent, data: Uint8Array | null): Uint8Array | undefined {
    if (intent.op === undefined && !intent.fn) return intent.data;
    const fn = intent.fn ?? this.#ops.get(intent.op!);
    return fn ? toBytes(fn(data, ...(intent.args ?? []))) : undefined;
  }

  /** The view of `ref` changed: computed again when asked, and its watchers told. */
  #touched(ref: string) {
    this.#views.delete(ref);
    if (!this.#watchers.has(ref)) return;
    if (!this.#told.size) {
      queueMicrotask(() => {
        const refs = [...this.#told];
        this.#told.clear();
        for (const told of refs) for (const listener of this.#watchers.get(told) ?? []) listener(false);
      });
    }
    this.#told.add(ref);
  }

  /**
   * Takes in what the server said of `ref` (`null`: no such blob). Its first answer replaces
   * what the cache held whatever the versions (the server may have been restored from a
   * backup); after that, only a newer version does, as answers may cross.
   */
  confirm(ref: string, value: Value | null) {
    const first = !this.#fresh.has(ref);
    this.#fresh.add(ref);
    const known = this.#values.get(ref);
    const newer = value
      ? first || !known || value.version > known.version || (known.data === null && value.version >= known.version)
      : first || !known || known.data !== null;
    if (newer) {
      const next = value ?? { version: known?.version ?? 0, data: null };
      this.#keepValue(ref, next.version, next.data);
    } else if (known) {
      known.used = ++this.#clock;
    }
    if (newer || first) this.#touched(ref);
  }

  /** The server said `ref` is still at the version this client knows. */
  confirmUnchanged(ref: string) {
    if (this.#fresh.has(ref)) return;
    this.#fresh.add(ref);
    this.#touched(ref);
  }

  /** The version of `ref` this client knows, if any. */
  knownVersion(ref: string): number | undefined {
    return this.#values.get(ref)?.version || undefined;
  }

  #keepValue(ref: string, version: number, data: Uint8Array | null) {
    const old = this.#values.get(ref);
    if (old) this.#bytes -= valueBytes(old.data);
    this.#values.set(ref, { version, data, used: ++this.#clock });
    this.#bytes += valueBytes(data);
    const record: ValueRecord = { kind: 'value', ref, version, data, hash: data && blake3Hex(data) };
    void this.#save([[valueKey(ref), record]], []);
    this.#evict();
  }

  /**
   * Calls `listener(false)` whenever the view of `ref` may have changed, and
   * `listener(true)` when the cache was cleared (what the watch knows is gone: read again).
   */
  listen(ref: string, listener: (reset: boolean) => void): () => void {
    let set = this.#watchers.get(ref);
    if (!set) {
      set = new Set();
      this.#watchers.set(ref, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
      if (!set.size) this.#watchers.delete(ref);
    };
  }

  /** Reads `ref`: from the server when it can be asked, from the cache otherwise. */
  async get(ref: string): Promise<Value | null> {
    await this.ready;
    let read: Value | null | undefined;
    if (this.#transport.socket.connected || (this.view(ref) === undefined && (await this.online()))) {
      try {
        read = await this.#read(ref);
      } catch (error) {
        if (error instanceof BlobsError) throw error;
        // Cut off: what the cache holds will do.
      }
    }
    let view = this.view(ref);
    // A value too large to keep is shown as read.
    if (view === undefined && read !== undefined) view = read && this.#viewOver(ref, read).view;
    if (view === undefined) {
      throw new OfflineError(`offline, and blob ${ref} is not in the local cache`);
    }
    const known = this.#values.get(ref);
    if (known) known.used = ++this.#clock;
    return view;
  }

  // --- content ---

  /** Content by hash: from the cache when it holds it (checked), from the server otherwise. */
  async content(hash: string, fetch: () => Promise<Uint8Array>): Promise<Uint8Array> {
    await this.ready;
    const cached = this.#contents.get(hash);
    if (cached) {
      try {
        verified(cached.data, hash);
        cached.used = ++this.#clock;
        return cached.data;
      } catch {
        this.#dropContent(hash);
      }
    }
    if (!(await this.online())) {
      throw new OfflineError(`offline, and content ${hash} is not in the local cache`);
    }
    const bytes = await fetch();
    this.keepContent(hash, bytes);
    return bytes;
  }

  /** Keeps content the server has (verified against `hash` by the caller). */
  keepContent(hash: string, data: Uint8Array) {
    if (!this.caching || this.#contents.has(hash)) return;
    this.#contents.set(hash, { data, used: ++this.#clock });
    this.#bytes += contentBytes(data);
    void this.#save([[contentKey(hash), { kind: 'content', hash, data }]], []);
    this.#evict();
  }

  #dropContent(hash: string) {
    const content = this.#contents.get(hash);
    if (!content) return;
    this.#contents.delete(hash);
    this.#bytes -= contentBytes(content.data);
    void this.#save([], [contentKey(hash)]);
  }

  /** Evicts the values and content used least recently until the cache fits its bound. */
  #evict() {
    const max = this.#provider?.maxBytes ?? Infinity;
    if (this.#bytes <= max) return;
    // Never what a pending write applies to, nor what is watched.
    const pinned = new Set([...this.#queues.keys(), ...this.#watchers.keys()]);
    const candidates: [number, () => void][] = [];
    for (const [ref, known] of this.#values) {
      if (!pinned.has(ref)) candidates.push([known.used, () => this.#dropValue(ref)]);
    }
    for (const [hash, content] of this.#contents) {
      candidates.push([content.used, () => this.#dropContent(hash)]);
    }
    candidates.sort((a, b) => a[0] - b[0]);
    for (const [, drop] of candidates) {
      if (this.#bytes <= max) break;
      drop();
    }
  }

  #dropValue(ref: string) {
    const known = this.#values.get(ref);
    if (!known) return;
    this.#values.delete(ref);
    this.#fresh.delete(ref);
    this.#views.delete(ref);
    this.#bytes -= valueBytes(known.data);
    void this.#save([], [valueKey(ref)]);
  }

  /**
   * Forgets everything: values, content, and the queued writes, which reject, except those
   * out and waiting for their answer, which settle with it (kept in memory alone).
   */
  async clear() {
    await this.ready;
    const dropped = this.#intents().filter((intent) => !intent.sending);
    for (const intent of dropped) this.#leave(intent);
    for (const intent of this.#intents()) intent.durable = false;
    this.#values.clear();
    this.#contents.clear();
    this.#fresh.clear();
    this.#views.clear();
    this.#bytes = this.#queuedBytes;
    const backend = this.#backend;
    this.#saving = this.#saving.then(() => backend?.clear());
    await this.#saving;
    for (const intent of dropped) intent.settle?.reject(new Error(dropReason(intent, 'the cache was cleared')));
    for (const listeners of this.#watchers.values()) for (const listener of listeners) listener(true);
    this.#changed();
  }

  /**
   * Closes: the queued writes' promises reject (those kept in the cache are made by the next
   * client on it), and once the cache has stored what it was given, it is closed.
   */
  async close() {
    this.#closed = true;
    for (const intent of this.#intents()) {
      const kept = intent.durable && this.#backend ? '; it stays in the cache for the next client' : '';
      intent.settle?.reject(new Error(dropReason(intent, 'the client was closed') + kept));
      delete intent.settle;
    }
    await this.ready;
    await this.#saving;
    this.#backend?.close();
  }

  // --- queued writes ---

  /**
   * Queues a write of `ref`, applies it to the view at once, and resolves with the answer of
   * the server once it is made: a named operation (`op`, `args`), an anonymous one (`fn`,
   * kept in memory only), or a strict set (`data`, `version`).
   */
  async enqueue(
    ref: string,
    write: { op: string; args: unknown[] } | { fn: Operation } | { data: Uint8Array; version?: number },
  ): Promise<any> {
    await this.ready;
    if (this.#closed) throw new Error('the client is closed');
    const intent: Intent = {
      kind: 'intent',
      seq: ++this.#seq,
      writer: this.#writer,
      ref,
      durable: !('fn' in write),
      firstSend: false,
      sending: false,
    };
    if ('op' in write) {
      this.op(write.op);
      intent.op = write.op;
      // Stored as JSON, so that it reads back the same from every cache.
      intent.args = JSON.parse(JSON.stringify(write.args));
    } else if ('fn' in write) {
      intent.fn = write.fn;
    } else {
      intent.data = write.data;
      if (write.version !== undefined) intent.version = write.version;
    }
    // Applied once now, so that a function that throws fails its caller.
    const before = this.#memo(ref);
    const after = this.#applied(intent, before.view?.data ?? null)!;
    const pinned = this.#pinnedBytes() + intentBytes(intent);
    const max = this.#provider?.maxBytes ?? Infinity;
    if (pinned > max) {
      throw new BlobsError(`the local cache cannot hold another pending write (${pinned} of ${max} bytes)`);
    }
    const answer = new Promise((resolve, reject) => {
      intent.settle = { resolve, reject };
    });
    this.#enter(intent);
    if (intent.durable) void this.#save([[intentKey(intent), record(intent)]], []);
    this.#evict();
    this.#touched(ref);
    // The view grows by this write alone.
    const pending = (before.view?.pending ?? 0) + 1;
    const version = before.view?.version ?? this.#values.get(ref)?.version;
    const head = pending > 1 ? before.head : after;
    this.#views.set(ref, { view: this.#shown(ref, version, after, pending), head });
    this.#changed();
    this.#kick(ref);
    return answer;
  }

  /** Bytes that cannot be evicted: queued writes and the values they apply to. */
  #pinnedBytes(): number {
    let bytes = this.#queuedBytes;
    for (const ref of this.#queues.keys()) bytes += valueBytes(this.#values.get(ref)?.data ?? null);
    return bytes;
  }

  /** The queued writes of `ref`, first first. */
  #queued(ref: string): Intent[] {
    return this.#queues.get(ref) ?? [];
  }

  /** Every queued write. */
  #intents(): Intent[] {
    return [...this.#queues.values()].flat();
  }

  /** Queues `intent` after the writes of its ref, and counts it. */
  #enter(intent: Intent) {
    const queue = this.#queues.get(intent.ref);
    if (queue) queue.push(intent);
    else this.#queues.set(intent.ref, [intent]);
    this.#pending++;
    this.#count(intent, 1);
  }

  /** Takes `intent` off its ref's queue, and out of the counts. */
  #leave(intent: Intent) {
    const queue = this.#queued(intent.ref);
    const at = queue.indexOf(intent);
    if (at < 0) return;
    queue.splice(at, 1);
    if (!queue.length) this.#queues.delete(intent.ref);
    this.#pending--;
    this.#count(intent, -1);
  }

  /** Adds (`1`) or takes away (`-1`) the bytes of `intent`. */
  #count(intent: IntentRecord, sign: 1 | -1) {
    const bytes = sign * intentBytes(intent);
    this.#bytes += bytes;
    this.#queuedBytes += bytes;
  }

  #kickAll() {
    for (const ref of this.#queues.keys()) this.#kick(ref);
  }

  /** Starts sending the queued writes of `ref`, unless that is under way or offline. */
  #kick(ref: string) {
    if (!this.#transport.socket.connected || this.#running.has(ref)) return;
    this.#running.add(ref);
    void this.#sync(ref).then((stopped) => {
      this.#running.delete(ref);
      // Lost, then connected again while stopping: the new connection's start was missed.
      if (stopped === 'lost') this.#kick(ref);
    });
  }

  /** Sends the queued writes of `ref` one at a time, in order, while connected. */
  async #sync(ref: string): Promise<Stopped> {
    await this.ready;
    let refusals = 0;
    let conflicts = 0;
    while (this.#transport.socket.connected) {
      const intent = this.#queued(ref)[0];
      if (!intent) return 'idle';
      const fn = intent.fn ?? (intent.op === undefined ? undefined : this.#ops.get(intent.op));
      if (intent.op !== undefined && !fn) return 'blocked'; // until operation() registers it
      try {
        if (!intent.attempt) {
          const known = this.#values.get(ref);
          const base = known && this.#fresh.has(ref) ? known : await this.#read(ref);
          await this.#attempt(intent, fn, base?.version || undefined, base?.data ?? null);
        }
        if (this.#closed) return 'idle';
        // Dropped while its attempt was stored (the cache cleared): never sent.
        if (this.#queued(ref)[0] !== intent) continue;
        const { base, data } = intent.attempt!;
        const first = intent.firstSend;
        intent.firstSend = false;
        const id = { writer: intent.writer, seq: intent.seq };
        let result: SetResult;
        intent.sending = true;
        try {
          result = await this.#transport.write(ref, data, base, id);
        } finally {
          intent.sending = false;
        }
        refusals = 0;
        if (result.success) {
          this.#landed(intent, result.version, data);
          if (this.#lastError instanceof BlobsError) this.#lastError = null;
          this.#changed();
          intent.settle?.resolve(fn ? { version: result.version, data } : result);
          continue;
        }
        if (result.unknown && !first) {
          this.#fail(intent, new BlobsError(
            `a write to ${ref} was sent before and its answer lost, and the server no longer ` +
              'remembers whether it committed: it is not sent again',
          ));
          continue;
        }
        if (result.data !== null) this.confirm(ref, { version: result.version, data: result.data });
        if (!fn) {
          this.#finish(intent);
          this.#emit('conflict', {
            ref,
            data,
            version: base,
            current: { version: result.version, data: result.data },
          });
          intent.settle?.resolve(result);
          continue;
        }
        await this.#attempt(intent, fn, result.version, result.data);
        // Others keep winning: let them, a little.
        if (++conflicts % 100 === 0) await pause(RETRY[0]);
      } catch (error) {
        if (error instanceof AppError) {
          this.#fail(intent, error.cause as Error);
          continue;
        }
        if (!(error instanceof BlobsError)) {
          if (!this.#transport.socket.connected) return 'lost'; // the next connection goes on
          this.#fail(intent, error as Error); // not the connection's doing: it would fail again
          continue;
        }
        this.#lastError = error;
        this.#changed();
        if (/^(Invalid|Read-only)/.test(error.message)) {
          this.#fail(intent, error);
        } else if (/^Token (expired|revoked)/.test(error.message)) {
          return 'lost'; // kept for a client with a valid token
        } else {
          // A rate limit, shutdown, a full disk or quota: the same write, later.
          await pause(Math.min(RETRY[0] * 2 ** refusals++, RETRY[1]));
        }
      }
    }
    return 'lost';
  }

  async #read(ref: string): Promise<Value | null> {
    const read = await this.#transport.read(ref);
    const value = read === 'unchanged' ? null : read;
    this.confirm(ref, value);
    return value;
  }

  /** Makes the next attempt of `intent` on top of `(base, data)` and stores it before it goes. */
  async #attempt(intent: Intent, fn: Operation | undefined, base: number | undefined, data: Uint8Array | null) {
    let next: Uint8Array;
    if (fn) {
      try {
        next = toBytes(fn(data, ...(intent.args ?? [])));
      } catch (error) {
        throw new AppError(error);
      }
    } else {
      next = intent.data!;
      base = intent.version;
    }
    // Dropped meanwhile (the cache cleared): neither counted nor stored again.
    const queued = this.#queued(intent.ref)[0] === intent;
    if (queued) this.#count(intent, -1);
    intent.attempt = base === undefined ? { data: next } : { base, data: next };
    intent.firstSend = true;
    if (!queued) return;
    this.#count(intent, 1);
    if (intent.durable) await this.#save([[intentKey(intent), record(intent)]], []);
  }

  /**
   * Takes a committed write off the queue. When it wrote what the view assumed, the view
   * stays, one write less pending, and only the next write is applied again: a long queue is
   * not applied again for each write it makes.
   */
  #landed(intent: Intent, version: number, data: Uint8Array) {
    const ref = intent.ref;
    const memo = this.#views.get(ref);
    this.#finish(intent);
    this.confirm(ref, { version, data });
    const assumed = memo?.view && memo.head && sameBytes(memo.head, data);
    if (!assumed || this.#values.get(ref)?.version !== version) return;
    const next = this.#queued(ref)[0];
    let head: Uint8Array | undefined;
    try {
      head = next && this.#applied(next, data);
    } catch {
      return; // computed again when asked
    }
    const pending = (memo.view!.pending ?? 1) - 1;
    this.#views.set(ref, { view: this.#shown(ref, version, memo.view!.data, pending), head });
  }

  /** Takes a write off the queue. */
  #finish(intent: Intent) {
    this.#leave(intent);
    if (intent.durable) void this.#save([], [intentKey(intent)]);
    this.#touched(intent.ref);
    this.#changed();
  }

  /** Gives a write up, saying why. */
  #fail(intent: Intent, error: Error) {
    this.#finish(intent);
    this.#lastError = error;
    this.#changed();
    this.#emit('failed', { ref: intent.ref, error });
    intent.settle?.reject(error);
  }
}

/** Why a queued write's promise rejects without an answer. */
function dropReason(intent: Intent, what: string): string {
  return intent.attempt && !intent.firstSend
    ? `${what} while this write's outcome was unknown: it may have been made`
    : `${what} before this write was sent`;
}

/** What `view` gave of a ref, and the data its first pending write makes (if one is). */
interface Memo {
  view: Value | null | undefined;
  head?: Uint8Array | null;
}


/** An exception of the app's own function. */
class AppError extends Error {
  constructor(cause: unknown) {
    super('the operation threw', { cause });
  }
}

function pause(ms: number) {
  return new Promise((wake) => setTimeout(wake, ms));
}

/** 128 random bits, base64url: a writer's name, which the server remembers its writes by. */
function randomName(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');
}

function record(intent: Intent): IntentRecord {
  const { durable: _durable, fn: _fn, settle: _settle, firstSend: _first, ...stored } = intent;
  return stored;
}

const valueKey = (ref: string) => `v:${ref}`;
const contentKey = (hash: string) => `c:${hash}`;
const intentKey = (intent: IntentRecord) => `q:${String(intent.seq).padStart(16, '0')}`;

const valueBytes = (data: Uint8Array | null) => OVERHEAD + (data?.length ?? 0);
const contentBytes = (data: Uint8Array) => OVERHEAD + data.length;
function intentBytes(intent: IntentRecord): number {
  return (
    OVERHEAD +
    (intent.data?.length ?? 0) +
    (intent.attempt?.data.length ?? 0) +
    (intent.args ? JSON.stringify(intent.args).length : 0)
  );
}
