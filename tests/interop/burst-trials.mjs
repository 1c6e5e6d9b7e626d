// Bursts of `get` with acknowledgements from the official socket.io-client, as an app that
// reconnects and reads many blobs again at once: each trial opens a fresh connection, sends
// `ref`, then a burst of `get` without waiting between them, and notes how the trial ended.
// Usage: BLOBS_URL=... BLOBS_TOKEN=... BLOBS_REF=<ref> node burst-trials.mjs [sizes] [trials] [transport]
// (sizes comma-separated, 100,150,200 by default; 6 trials each; transport websocket, polling
// or upgrade, the client's default: long-polling first, then upgraded to a WebSocket)
// Prints one JSON line, by burst size: { trials, disconnected, reasons, answered, errors,
// unanswered, ms } (`errors`: acks carrying `{ error }`; `ms`: each trial's duration).
import { io } from 'socket.io-client';

const url = process.env.BLOBS_URL;
const token = process.env.BLOBS_TOKEN;
const ref = process.env.BLOBS_REF;
const sizes = (process.argv[2] ?? '100,150,200').split(',').map(Number);
const trials = Number(process.argv[3] ?? 6);
const transport = process.argv[4] ?? 'upgrade';
const transports = transport === 'upgrade' ? ['polling', 'websocket'] : [transport];

// Longest wait for a trial's acks before it is counted as unanswered.
const TRIAL_MS = 10_000;

setTimeout(() => {
  console.error('bursts timed out');
  process.exit(1);
}, 240_000).unref();

function connect() {
  const socket = io(url, { transports, reconnection: false, forceNew: true, auth: { token } });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(err);
    });
  });
}

// One trial: resolves with how it ended once every `get` was answered, the server
// disconnected the client, or TRIAL_MS passed.
async function trial(size) {
  const started = Date.now();
  const socket = await connect();
  const outcome = { disconnected: null, answered: 0, errors: 0, unanswered: size };
  let onDisconnect;
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, TRIAL_MS);
    const finish = () => {
      clearTimeout(timer);
      resolve();
    };
    onDisconnect = (reason) => {
      outcome.disconnected = reason;
      finish();
    };
    socket.on('disconnect', onDisconnect);
    socket.emit('ref', ref, () => {
      for (let i = 0; i < size; i += 1) {
        socket.emit('get', {}, (reply) => {
          outcome.unanswered -= 1;
          if (reply && typeof reply === 'object' && 'error' in reply) outcome.errors += 1;
          else outcome.answered += 1;
          if (outcome.unanswered === 0) finish();
        });
      }
    });
  });
  // Our own close is no disconnect by the server.
  socket.off('disconnect', onDisconnect);
  socket.close();
  outcome.ms = Date.now() - started;
  return outcome;
}

const report = {};
for (const size of sizes) {
  const row = { trials, disconnected: 0, reasons: {}, answered: 0, errors: 0, unanswered: 0, ms: [] };
  for (let t = 0; t < trials; t += 1) {
    let outcome;
    try {
      outcome = await trial(size);
    } catch (err) {
      outcome = { disconnected: `connect_error: ${err.message}`, answered: 0, errors: 0, unanswered: size, ms: 0 };
    }
    if (outcome.disconnected !== null) {
      row.disconnected += 1;
      row.reasons[outcome.disconnected] = (row.reasons[outcome.disconnected] ?? 0) + 1;
    }
    row.answered += outcome.answered;
    row.errors += outcome.errors;
    row.unanswered += outcome.unanswered;
    row.ms.push(outcome.ms);
  }
  report[size] = row;
}
console.log(JSON.stringify(report));
process.exit(0);
