// Bytes as the protocols carry them: base64 over Socket.IO, raw over HTTP. Apps give and get
// strings or Uint8Arrays; base64 is the library's business.

/** What an app may store: text (UTF-8) or bytes. */
export type Data = string | Uint8Array;

/**
 * `data` as bytes: text encoded as UTF-8, bytes as they are.
 * @throws TypeError for anything else (a number, an object, a promise, `null`).
 */
export function toBytes(data: Data): Uint8Array {
  if (typeof data === 'string') return new TextEncoder().encode(data);
  if (data instanceof Uint8Array) return data;
  throw new TypeError(`a blob's data is text or a Uint8Array, not ${describe(data)}`);
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  return value.constructor?.name ?? 'an object';
}

/** `bytes` in base64, as the Socket.IO protocol carries them. */
export function toBase64(bytes: Uint8Array): string {
  let binary = '';
  // In slices: String.fromCharCode takes its arguments on the stack.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/**
 * The bytes that the base64 `text` encodes.
 * @throws DOMException (`InvalidCharacterError`) when `text` is not valid base64.
 */
export function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Whether `a` and `b` hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/** The bytes as UTF-8 text. */
export function text(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}
