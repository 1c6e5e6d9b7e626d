// Honest bursts with the official socket.io-client: apps that reconnect and re-read many refs
// at once, and pages that open many watches at once, within the documented EVENT_BURST (200).
// Every event of such a burst is answered, none with an error, and the socket stays connected;
// past the burst the excess gets `{ error }` acks on a socket that stays usable.
// Usage: BLOBS_URL=... BLOBS_TOKEN=... node bursts.mjs websocket|polling
// Exits 0 and prints "ok <transport>" when every check passed.
import assert from 'node:assert/strict';
import { call, connect, deadline, newRef, transport } from './scenario.mjs';

deadline('bursts.mjs');

// A socket must not be dropped while it answers: any disconnect fails the scenario.
function keep(socket) {
  socket.on('disconnect', (reason) => {
    console.error(`disconnected during a burst: ${reason}`);
    process.exit(1);
  });
  return socket;
}

// Closes sockets the scenario is done with (a close of its own is no drop).
function done(...sockets) {
  for (const socket of sockets) {
    socket.off('disconnect');
    socket.close();
  }
}

// The app's data: 150 blobs, some of them large (64 KiB of base64 each).
const writer = keep(await connect());
const refs = Array.from({ length: 150 }, newRef);
const large = 'QUJD'.repeat(16 * 1024);
for (const [i, ref] of refs.entries()) {
  const data = i % 10 === 0 ? large : Buffer.from(`note ${i}`).toString('base64');
  assert.deepEqual(await call(writer, 'set', { ref, data }), [{ success: true, version: 1 }]);
}
done(writer);

// A reconnect re-reads every ref at once, several trials in a row on fresh sockets.
for (let trial = 0; trial < 6; trial++) {
  const app = keep(await connect());
  const size = [100, 150, 150, 200, 200, 200][trial];
  const reads = Array.from({ length: size }, (_, i) => call(app, 'get', { ref: refs[i % refs.length] }));
  const answers = await Promise.all(reads);
  for (const [i, [answer]] of answers.entries()) {
    assert.equal(answer?.error, undefined, `read ${i} of a burst of ${size}: ${JSON.stringify(answer)}`);
    assert.equal(answer.version, 1);
  }
  done(app);
}

// A page opens many watches at once (one event per ref, as a naive app would), then hears a
// change of each of a few.
const page = keep(await connect());
const watches = await Promise.all(refs.map((ref) => call(page, 'watch', { refs: [ref] })));
for (const [answer] of watches) assert.equal(answer?.error, undefined, JSON.stringify(answer));
const heard = new Promise((resolve) => {
  const seen = new Set();
  page.on('changed', (change) => {
    seen.add(change.ref);
    if (seen.size === 3) resolve(seen);
  });
});
const other = keep(await connect());
for (const ref of refs.slice(0, 3)) {
  assert.deepEqual(await call(other, 'set', { ref, data: 'Mg==', version: 1 }), [{ success: true, version: 2 }]);
}
assert.equal((await heard).size, 3);

// Past the burst: the excess is refused with `{ error }`, and the socket stays usable.
const eager = keep(await connect());
const flood = await Promise.all(Array.from({ length: 300 }, () => call(eager, 'now')));
const refused = flood.filter(([answer]) => answer?.error);
assert.ok(refused.length > 0 && refused.length <= 100, `${refused.length} refused`);
for (const [answer] of refused) assert.match(answer.error, /Rate limit exceeded|Too many pending requests/);
await new Promise((resolve) => setTimeout(resolve, 1_500)); // the rate refills
const [after] = await call(eager, 'get', { ref: refs[3] });
assert.equal(after.version, 1);

done(page, other, eager);
console.log(`ok ${transport}`);
