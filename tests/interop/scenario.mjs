// What the official-client scenarios share: the server and token from the environment, the
// transport from the command line, a deadline, and connect/call helpers.
import { randomBytes } from 'node:crypto';
import { io } from 'socket.io-client';

export const url = process.env.BLOBS_URL;
export const token = process.env.BLOBS_TOKEN;
export const transport = process.argv[2] ?? 'websocket';
const options = { transports: [transport], reconnection: false, forceNew: true, auth: { token } };

// The scenario fails, rather than hangs, after `ms` (below the test's own limit, and generous:
// the machine may be busy).
export function deadline(ms) {
  setTimeout(() => {
    console.error('scenario timed out');
    process.exit(1);
  }, ms).unref();
}

export const newRef = () => randomBytes(32).toString('hex');

export function connect() {
  const socket = io(url, options);
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

// Emits `event` with `args` and resolves with the ack's arguments.
export function call(socket, event, ...args) {
  return new Promise((resolve) => socket.emit(event, ...args, (...ack) => resolve(ack)));
}
