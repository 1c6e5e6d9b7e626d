// What the official-client scenarios share: the server and token from the environment, the
// transport from the command line, a deadline, and connect/call helpers.
import { randomBytes } from 'node:crypto';
import { io } from 'socket.io-client';

export const url = process.env.BLOBS_URL;
export const token = process.env.BLOBS_TOKEN;
export const transport = process.argv[2] ?? 'websocket';
const options = { transports: [transport], reconnection: false, forceNew: true, auth: { token } };

// How long a scenario may take, in milliseconds: the test's patience (BLOBS_PATIENCE_MS),
// generous because the machine may be busy. Past it the scenario fails rather than hangs, and
// names the last wait it began.
const patience = Number(process.env.BLOBS_PATIENCE_MS ?? 300_000);
// The last wait the scenario began, for the message if time runs out.
let waiting = 'the first step';

export function deadline(script) {
  setTimeout(() => {
    console.error(`${script} ${transport}: not done within ${patience / 1000} s; the last wait begun: ${waiting}`);
    process.exit(1);
  }, patience).unref();
}

export const newRef = () => randomBytes(32).toString('hex');

export function connect() {
  waiting = 'a connection';
  const socket = io(url, options);
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

// Emits `event` with `args` and resolves with the ack's arguments.
export function call(socket, event, ...args) {
  waiting = `the ack of ${event}`;
  return new Promise((resolve) => socket.emit(event, ...args, (...ack) => resolve(ack)));
}
