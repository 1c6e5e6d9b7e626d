// BLAKE3 (hash mode, 32-byte output), the name of content in Blobs. Written from the BLAKE3
// specification's reference design, so the library needs no dependency but socket.io-client.
// The server checks every hash it is given, and the tests compare this one with it.

const IV = new Uint32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);
const PERMUTATION = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
const CHUNK_START = 1;
const CHUNK_END = 2;
const PARENT = 4;
const ROOT = 8;
const BLOCK_LEN = 64;
const CHUNK_LEN = 1024;

function g(s: Uint32Array, a: number, b: number, c: number, d: number, x: number, y: number) {
  s[a] = s[a] + s[b] + x;
  s[d] = rotr(s[d] ^ s[a], 16);
  s[c] = s[c] + s[d];
  s[b] = rotr(s[b] ^ s[c], 12);
  s[a] = s[a] + s[b] + y;
  s[d] = rotr(s[d] ^ s[a], 8);
  s[c] = s[c] + s[d];
  s[b] = rotr(s[b] ^ s[c], 7);
}

function rotr(x: number, n: number): number {
  return (x >>> n) | (x << (32 - n));
}

/** The 16 output words of compressing one block. */
function compress(
  cv: Uint32Array,
  block: Uint32Array,
  counter: number,
  blockLen: number,
  flags: number,
): Uint32Array {
  const s = new Uint32Array(16);
  s.set(cv, 0);
  s.set(IV.subarray(0, 4), 8);
  s[12] = counter >>> 0;
  s[13] = Math.floor(counter / 0x1_0000_0000);
  s[14] = blockLen;
  s[15] = flags;
  let m = Uint32Array.from(block);
  for (let round = 0; round < 7; round++) {
    g(s, 0, 4, 8, 12, m[0], m[1]);
    g(s, 1, 5, 9, 13, m[2], m[3]);
    g(s, 2, 6, 10, 14, m[4], m[5]);
    g(s, 3, 7, 11, 15, m[6], m[7]);
    g(s, 0, 5, 10, 15, m[8], m[9]);
    g(s, 1, 6, 11, 12, m[10], m[11]);
    g(s, 2, 7, 8, 13, m[12], m[13]);
    g(s, 3, 4, 9, 14, m[14], m[15]);
    if (round < 6) m = Uint32Array.from(PERMUTATION, (i) => m[i]);
  }
  for (let i = 0; i < 8; i++) {
    s[i] ^= s[i + 8];
    s[i + 8] ^= cv[i];
  }
  return s;
}

/** The little-endian words of up to 64 bytes, zero-padded. */
function words(bytes: Uint8Array, start: number, end: number): Uint32Array {
  const block = new Uint32Array(16);
  for (let i = start; i < end; i++) {
    block[(i - start) >> 2] |= bytes[i] << (8 * ((i - start) & 3));
  }
  return block;
}

/** What is needed to finish a node: its compression inputs. */
interface Node {
  cv: Uint32Array;
  block: Uint32Array;
  counter: number;
  blockLen: number;
  flags: number;
}

function chainingValue(node: Node): Uint32Array {
  return compress(node.cv, node.block, node.counter, node.blockLen, node.flags).subarray(0, 8);
}

/**
 * One chunk (up to 1,024 bytes) of `input`: every block compressed but the last, which is
 * returned as the chunk's node.
 */
function chunkNode(input: Uint8Array, start: number, end: number, counter: number): Node {
  let cv = IV;
  let blockStart = start;
  let flags = CHUNK_START;
  while (end - blockStart > BLOCK_LEN) {
    cv = compress(cv, words(input, blockStart, blockStart + BLOCK_LEN), counter, BLOCK_LEN, flags)
      .slice(0, 8);
    flags = 0;
    blockStart += BLOCK_LEN;
  }
  return {
    cv,
    block: words(input, blockStart, end),
    counter,
    blockLen: end - blockStart,
    flags: flags | CHUNK_END,
  };
}

function parentNode(left: Uint32Array, right: Uint32Array): Node {
  const block = new Uint32Array(16);
  block.set(left, 0);
  block.set(right, 8);
  return { cv: IV, block, counter: 0, blockLen: BLOCK_LEN, flags: PARENT };
}

/** The BLAKE3 hash of `input`, as 64 lower-case hexadecimal characters. */
export function blake3Hex(input: Uint8Array): string {
  // The chaining values of complete subtrees, largest first (the spec's CV stack).
  const stack: Uint32Array[] = [];
  const chunks = Math.max(1, Math.ceil(input.length / CHUNK_LEN));
  let last: Node | undefined;
  for (let index = 0; index < chunks; index++) {
    const start = index * CHUNK_LEN;
    const node = chunkNode(input, start, Math.min(start + CHUNK_LEN, input.length), index);
    if (index === chunks - 1) {
      last = node;
      break;
    }
    let cv = chainingValue(node);
    // Merge while the count of chunks so far is even at this level.
    let total = index + 1;
    while ((total & 1) === 0) {
      cv = chainingValue(parentNode(stack.pop()!, cv));
      total >>= 1;
    }
    stack.push(cv);
  }
  let node = last!;
  while (stack.length > 0) {
    node = parentNode(stack.pop()!, chainingValue(node));
  }
  const out = compress(node.cv, node.block, 0, node.blockLen, node.flags | ROOT);
  let hex = '';
  for (let i = 0; i < 8; i++) {
    for (let b = 0; b < 4; b++) {
      hex += ((out[i] >>> (8 * b)) & 0xff).toString(16).padStart(2, '0');
    }
  }
  return hex;
}
