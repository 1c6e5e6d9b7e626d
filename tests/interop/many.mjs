// Many blobs on one connection, with the official socket.io-client: `get` and `set` naming
// their `ref`, `watch`/`unwatch` and `changed { ref, version }`, the watch limit, and the
// original's events unchanged beside them.
// Usage: BLOBS_URL=... BLOBS_TOKEN=... node many.mjs websocket|polling
// Exits 0 and prints "ok <transport>" when every check passed.
import assert from 'node:assert/strict';
import { call, connect, deadline, newRef, transport } from './scenario.mjs';

deadline('many.mjs');

// Every `changed` a socket receives, in order, with its arguments.
function record(socket) {
  const seen = [];
  const waiters = [];
  socket.on('changed', (...args) => {
    seen.push(args);
    waiters.splice(0).forEach((wake) => wake());
  });
  return {
    seen,
    async next() {
      while (seen.length === 0) await new Promise((wake) => waiters.push(wake));
      return seen.shift();
    },
  };
}

const [watcher, writer, bound] = await Promise.all([connect(), connect(), connect()]);
const [r1, r2, r3] = [newRef(), newRef(), newRef()];
const changes = record(watcher);
const boundChanges = record(bound);

assert.deepEqual(await call(watcher, 'watch', { refs: [r1, r2, r3] }), [{ watching: 3 }]);
assert.deepEqual(await call(watcher, 'watch', { refs: [r1] }), [{ watching: 3 }], 'idempotent');

// Another socket writes r1 naming it: the watcher hears { ref, version }.
assert.deepEqual(await call(writer, 'set', { ref: r1, data: 'aGk=' }), [{ success: true, version: 1 }]);
assert.deepEqual(await changes.next(), [{ ref: r1, version: 1 }]);
// The watcher's own write of r2 reaches it too; a socket bound with `ref` to r2 gets the
// original's `changed` with no argument.
assert.deepEqual(await call(bound, 'ref', r2), []);
assert.deepEqual(await call(watcher, 'set', { ref: r2, data: 'MQ==' }), [{ success: true, version: 1 }]);
assert.deepEqual(await changes.next(), [{ ref: r2, version: 1 }]);
assert.deepEqual(await boundChanges.next(), []);
// A stale write naming its ref gets the current blob, as the original's `set` does.
assert.deepEqual(await call(writer, 'set', { ref: r2, data: 'Mg==', version: 7 }), [
  { success: false, data: 'MQ==', version: 1 },
]);
// `get` naming a ref, with and without `known`; a blob never written is null.
assert.deepEqual(await call(watcher, 'get', { ref: r1 }), [{ data: 'aGk=', version: 1 }]);
assert.deepEqual(await call(watcher, 'get', { ref: r1, known: 1 }), [{ version: 1 }]);
assert.deepEqual(await call(watcher, 'get', { ref: r3 }), [null]);
assert.deepEqual(await call(watcher, 'get', { ref: 'nope' }), [
  { error: 'Invalid reference: expected 64 hexadecimal characters or null' },
]);
// Without a `ref`, `get` still needs the original's subscription.
assert.deepEqual(await call(watcher, 'get', {}), [{ error: 'Reference is not provided' }]);

// After `unwatch`, r1's changes no longer come; r3's still do, in order.
assert.deepEqual(await call(watcher, 'unwatch', { refs: [r1] }), [{ watching: 2 }]);
assert.deepEqual(await call(writer, 'set', { ref: r1, data: 'Mw==', version: 1 }), [
  { success: true, version: 2 },
]);
assert.deepEqual(await call(writer, 'set', { ref: r3, data: 'NA==' }), [{ success: true, version: 1 }]);
assert.deepEqual(await changes.next(), [{ ref: r3, version: 1 }]);
assert.equal(changes.seen.length, 0, 'nothing of r1 after unwatch');

// The limit: 1,000 refs per connection; a watch past it is refused whole.
const many = Array.from({ length: 998 }, newRef);
assert.deepEqual(await call(watcher, 'watch', { refs: many }), [{ watching: 1000 }]);
assert.deepEqual(await call(watcher, 'watch', { refs: [newRef()] }), [
  { error: 'Too many watched refs: at most 1000 per connection' },
]);
assert.deepEqual(await call(watcher, 'watch', { refs: 'x' }), [
  { error: 'Invalid refs: expected a list of at most 1000 refs of 64 hexadecimal characters' },
]);
assert.equal(watcher.connected, true, 'errors leave the socket connected');

for (const socket of [watcher, writer, bound]) socket.close();
console.log(`ok ${transport}`);
