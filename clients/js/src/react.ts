/**
 * React bindings: `import { BlobsProvider, useBlob } from 'blobs-client/react'`.
 *
 * ```jsx
 * const client = connect(url, { token, cache: indexedDbCache() });
 * client.operation('increment', (bytes, by) => String(Number(text(bytes ?? new Uint8Array())) + by));
 *
 * function Counter({ counterRef }) {
 *   const { value, status, update } = useBlob(counterRef);
 *   return <button onClick={() => update('increment', 1)}>{value ? text(value) : 0} ({status.state})</button>;
 * }
 * root.render(<BlobsProvider client={client}><Counter counterRef={ref} /></BlobsProvider>);
 * ```
 *
 * @packageDocumentation
 */

import {
  createContext,
  createElement,
  type ReactNode,
  useCallback,
  useContext,
  useMemo,
  useSyncExternalStore,
} from 'react';

import type { SetResult, Value } from './blob.js';
import type { Data } from './bytes.js';
import type { SocketClient } from './index.js';
import type { Operation, Status } from './local.js';

const ClientContext = createContext<SocketClient | null>(null);

/** Gives `useBlob` in `children` its client. */
export function BlobsProvider(props: { client: SocketClient; children?: ReactNode }) {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/** What `useBlob` gives a component. */
export interface BlobState {
  /** The blob's bytes: `undefined` until known, `null` when there is no blob. */
  value: Uint8Array | null | undefined;
  /** The version `value` is (or, with writes pending, applies them to). */
  version: number | undefined;
  /** Shown from the cache: the server has not been heard on this blob yet. */
  cached: boolean;
  /** This client's writes of the blob not yet committed. */
  pending: number;
  /** The client's status: online, offline or syncing; all its pending writes; its last error. */
  status: Status;
  /** `blob.update`: a registered operation's name and its arguments, or a function. */
  update: (operation: string | Operation, ...args: unknown[]) => Promise<Value>;
  /** `blob.set`. */
  set: (data: Data, options?: { version?: number }) => Promise<SetResult>;
}

/**
 * The blob `ref`, kept current: the component renders again once per change it shows (each
 * version, and each write of this client as it is made), and stops watching on unmount.
 * @param client - The client; by default, the one of the nearest `BlobsProvider`.
 */
export function useBlob(ref: string, client?: SocketClient): BlobState {
  const provided = useContext(ClientContext);
  const chosen = client ?? provided;
  if (!chosen) throw new Error('useBlob needs a client: a BlobsProvider above, or as its argument');
  const blob = useMemo(() => chosen.blob(ref), [chosen, ref]);
  // The last value watched, kept per blob so that a snapshot changes only with it.
  const store = useMemo(() => {
    let current: Value | null | undefined;
    return {
      subscribe: (changed: () => void) =>
        blob.watch((value) => {
          current = value;
          changed();
        }),
      snapshot: () => current,
    };
  }, [blob]);
  const value = useSyncExternalStore(store.subscribe, store.snapshot);
  const status = useSyncExternalStore(
    useCallback((changed: () => void) => chosen.on('status', changed), [chosen]),
    () => chosen.status,
  );
  const update = useCallback(
    (operation: string | Operation, ...args: unknown[]) =>
      typeof operation === 'string' ? blob.update(operation, ...args) : blob.update(operation),
    [blob],
  );
  const set = useCallback((data: Data, options?: { version?: number }) => blob.set(data, options), [blob]);
  return {
    value: value === undefined ? undefined : (value?.data ?? null),
    version: value?.version,
    cached: value?.cached === true,
    pending: value?.pending ?? 0,
    status,
    update,
    set,
  };
}
