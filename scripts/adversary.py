#!/usr/bin/env python3
"""Attacks a release build of the Blobs server and measures what each attack costs it.

The script starts `target/release/blobs` on 127.0.0.1 (a free port, a fresh storage
directory, every limit at its default unless an attack says otherwise), runs the attacks one
after the other, each against a server started for it (on the same storage, unless it needs an
empty one), and reads the server's resident memory (`VmRSS` in /proc/<pid>/status, in MB of
2^20 bytes) before and after each one. Each attack has a name, for `--only`:

- `heads`: 2,000 unauthenticated Engine.IO handshakes carrying 360 KB request heads (200
  connections at a time, each kept open until its batch is done).
- `small-heads`: 2,000 handshakes with normal heads, which open sessions that never send
  CONNECT.
- `slow`: a half-sent request head, a connection that sends nothing, and a keep-alive
  connection that goes idle after one request: seconds until the server closes each.
- `subscribe`: a 20 MB `POST /api/v1/events/subscribe` body.
- `listings`: four parallel `GET /v1/blobs?limit=1000` listings of 300 blobs of 768 KiB (also
  the peak, `VmHWM`, reset before the attack).
- `stalled`: 20 Socket.IO WebSocket clients that each ask for thirty 768 KiB blobs (about
  1 MiB of base64 per reply) and then read nothing, with a 4 KiB receive buffer; whether and
  when the server drops them.
- `binary`: 300 WebSockets each send `451-1["now",{"_placeholder":true,"num":0},"<1.9 MB>"]`
  (a binary event whose attachment never comes) and answer pings: after a Socket.IO CONNECT
  with a token; then without CONNECT (Engine.IO sessions only); then the same bytes as a text
  event (`421[...]`), without CONNECT. How many are still open 12 s later, and RSS.
- `watch`: 300 sockets each `watch` 1,000 distinct refs (with an ack); RSS once all are
  acknowledged, and 5 s after every socket disconnected.
- `streams`: with `MAX_CONNECTIONS=300 MAX_CONNECTIONS_PER_IP=10`, one address (127.0.0.1)
  opens up to 300 streams, SSE change streams (`GET /v1/blobs/{ref}/events`) and Blob Service
  metadata streams (`POST /api/v1/events/subscribe`) in turn; then a second address
  (127.0.0.2) tries a Socket.IO handshake, `GET /v1/blobs` and `/healthz`; how many streams
  are still open 20 s later.
- `secrets`: servers started with `TOKEN_SECRET=" "`, with `PREVIOUS_TOKEN_SECRETS="<old>, "`
  and with `"<alpha>, <beta>"` (each of them 20 bytes or more): whether each starts (exit code), and which tokens it accepts
  (signed with `" "`, with `beta`).
- `disk`: one token makes as many Blob Service uploads of one small content (records) as it
  can for 5 s, then uploads 16 distinct 64 MiB files (`POST /api/v1/blobs`, which names the
  content's hash itself); records per second and their RSS, bytes stored.
- `bursts`: the official socket.io-client (tests/interop/burst-trials.mjs, `npm ci` there first)
  sends `ref`, then bursts of 100, 150 and 200 `get` with acks, 6 trials each on fresh
  connections; how many trials the server disconnected.
- `sendq`: 100 sockets with an 8 KiB receive buffer (`SO_RCVBUF`) read nothing, in one bucket,
  while another sends 40 `blob-upload` of 1,024 small new contents each (announced as
  `blob-available` to the bucket's sockets); the kernel send queue of the server's
  connections (/proc/net/tcp `tx_queue`, Send-Q), RSS, seconds until the server closes those
  sockets (at most 70 s), and the `blob-available` packets an idle, reading socket of the
  bucket gets per `blob-upload`.
- `listing-cpu`: server CPU time (utime + stime, /proc/<pid>/stat) of one
  `GET /v1/blobs?limit=1000` over 300 blobs of 768 KiB, and another bucket's client's `get`
  latency (p50, p90; 50 a second) alone and while 8 loops of those listings run.

It prints one Markdown table and exits 0 (1 if the server could not be started or an attack
failed to run). Standard library only (Python 3.11+, Linux; Node.js for `bursts`). A full run
takes about 12 minutes on two cores, and stops at 15. To rerun:

    cargo build --release && scripts/adversary.py

Options: `--binary PATH` (default target/release/blobs next to this script's repository), for
instance a build of an earlier version, to compare the two on one machine; `--only a,b` runs
only the attacks named (e.g. `--only binary,watch`), in the order above.
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque

SECRET = "adversary-secret"
BUCKET = "adversary"
HOST = "127.0.0.1"
BLOB_BYTES = 786_432
BLOB_COUNT = 300
OVERALL_DEADLINE = 15 * 60  # seconds: the whole run, whatever happens


# ---------------------------------------------------------------------------------------------
# The server and its memory


class Server:
    """The server under attack. `settings` are environment variables added to (or replacing)
    the defaults below; with `must_serve=False` a server that exits at start, or never logs
    its address, is no error: `port` is then None and `exit_code()` says how it ended."""

    def __init__(self, binary, storage, settings=None, must_serve=True):
        self.storage = storage
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "TOKEN_SECRET": SECRET,
            "HOST": HOST,
            "PORT": "0",
            "STORAGE": self.storage,
            "RUST_LOG": "info",
            **(settings or {}),
        }
        self.proc = subprocess.Popen(
            [binary],
            cwd=self.storage,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        self.log = deque(maxlen=200)
        self.port = None
        self.stalled_drops = 0  # "client stopped reading: dropping it" log lines
        self.problems = []  # WARN and ERROR log lines
        found = threading.Event()

        def drain():
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                self.log.append(line)
                if "client stopped reading" in line:
                    self.stalled_drops += 1
                if " WARN " in line or " ERROR " in line:
                    self.problems.append(line)
                if self.port is None and "addr=127.0.0.1:" in line:
                    rest = line.split("addr=127.0.0.1:", 1)[1]
                    digits = ""
                    for ch in rest:
                        if not ch.isdigit():
                            break
                        digits += ch
                    if digits:
                        self.port = int(digits)
                        found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        if (not found.wait(30) or self.port is None) and must_serve:
            self.stop()
            raise RuntimeError("the server did not log its address:\n" + "\n".join(self.log))

    def exit_code(self, wait=5.0):
        """The exit code once the process has ended (waiting up to `wait` s), else None."""
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    def alive(self):
        return self.proc.poll() is None

    def status(self, key):
        """A field of /proc/<pid>/status in MB (2^20 bytes), or None."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def rss(self):
        return self.status("VmRSS")

    def hwm(self):
        return self.status("VmHWM")

    def cpu_seconds(self):
        """User and system CPU time the server has used (/proc/<pid>/stat), or None."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # Fields 14 and 15 of the file (utime, stime); the split starts at field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def send_queue(self):
        """Bytes in the kernel's send queues of the server's TCP connections: written by the
        server, not yet taken by the peer (`tx_queue` of /proc/net/tcp, what `ss` shows as
        Send-Q), summed over every socket on the server's port."""
        total = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        parts = line.split()
                        if parts[3] == "0A":  # listening
                            continue
                        if int(parts[1].rsplit(":", 1)[1], 16) == self.port:
                            total += int(parts[4].split(":")[0], 16)
            except OSError:
                pass
        return total

    def reset_hwm(self):
        """Resets VmHWM to the current RSS (Linux: "5" to clear_refs); False if refused."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def connections(self):
        """Client ports of the TCP connections the server holds open (has a descriptor for)."""
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{self.pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
        except OSError:
            return set()
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        parts = line.split()
                        local, remote, inode = parts[1], parts[2], int(parts[9])
                        if inode in inodes and int(local.rsplit(":", 1)[1], 16) == self.port:
                            ports.add(int(remote.rsplit(":", 1)[1], 16))
            except OSError:
                pass
        return ports

    def stop(self):
        """SIGTERM, then SIGKILL after 20 s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def mint(bucket, secret=SECRET):
    """An HS256 JWT of {bucket, iat}, as the server's own `token` binary mints."""

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = b64(
        json.dumps({"bucket": bucket, "iat": int(time.time())}, separators=(",", ":")).encode()
    )
    signing_input = header + b"." + claims
    signature = b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def mb(value):
    return "n/a" if value is None else f"{value:.1f}"


def growth(before, after):
    return "n/a" if before is None or after is None else f"{after - before:+.1f}"


# ---------------------------------------------------------------------------------------------
# Raw HTTP helpers


def connect(port, timeout=10.0, rcvbuf=None, source=None):
    """A TCP connection to the server; `source`: the local address to connect from (another
    loopback address, such as 127.0.0.2, is another client address to the server)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source is not None:
        s.bind((source, 0))
    s.settimeout(timeout)
    s.connect((HOST, port))
    return s


def read_status(s):
    """The status code of the response on `s`, or what happened instead."""
    buf = b""
    try:
        while b"\r\n" not in buf and len(buf) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        return "timeout" if not buf else "partial"
    except ConnectionResetError:
        if not buf:
            return "reset"
    except OSError as e:
        if not buf:
            return type(e).__name__
    if not buf:
        return "closed"
    line = buf.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith("HTTP/"):
        return parts[1]
    return "garbage"


def wait_closed(s, limit):
    """Seconds until the peer closes `s` (EOF or reset), reading and discarding what comes."""
    start = time.monotonic()
    s.settimeout(1.0)
    got = b""
    while time.monotonic() - start < limit:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - start, got
        if not chunk:
            return time.monotonic() - start, got
        got += chunk[:256]
    return None, got


def hold_batches(port, total, batch, one):
    """Runs `one(socket)` on `total` connections, `batch` at a time in threads; every socket
    of a batch stays open until the whole batch has answered. Returns the outcome counts and
    the highest RSS sampled while a batch was held open (filled in by `sample`)."""
    outcomes = Counter()
    held_rss = []
    for first in range(0, total, batch):
        n = min(batch, total - first)
        socks = [None] * n
        results = [None] * n

        def worker(i):
            try:
                socks[i] = connect(port, timeout=15)
                results[i] = one(socks[i])
            except ConnectionRefusedError:
                results[i] = "refused"
            except socket.timeout:
                results[i] = "timeout"
            except OSError as e:
                results[i] = type(e).__name__

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        held_rss.append(SERVER.rss())
        for i in range(n):
            outcomes[results[i] or "unfinished"] += 1
            if socks[i] is not None:
                try:
                    socks[i].close()
                except OSError:
                    pass
    return outcomes, max((r for r in held_rss if r is not None), default=None)


def counts(outcomes):
    return ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# The attacks; each returns (name, result, before, after)


def attack_big_heads(port):
    pad = b"a" * 10_000
    head = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n"
    head += b"".join(b"X-Pad-%d: " % i + pad + b"\r\n" for i in range(36)) + b"\r\n"

    def one(s):
        try:
            s.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading the rest
        return read_status(s)

    before = SERVER.rss()
    outcomes, held = hold_batches(port, 2000, 200, one)
    after = max(x for x in (held, SERVER.rss()) if x is not None)
    return (
        "2,000 unauthenticated handshakes carrying 360 KB heads",
        counts(outcomes),
        before,
        after,
    )


def attack_small_heads(port):
    head = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"

    def one(s):
        s.sendall(head)
        return read_status(s)

    before = SERVER.rss()
    outcomes, held = hold_batches(port, 2000, 200, one)
    after = max(x for x in (held, SERVER.rss()) if x is not None)
    result = counts(outcomes)
    # The sessions never send CONNECT: CONNECT_TIMEOUT (5 s) closes them.
    time.sleep(6)
    result += f"; RSS {mb(SERVER.rss())} MB once they timed out"
    return ("2,000 polling handshakes with normal heads (never CONNECT)", result, before, after)


def attack_slow_heads(port):
    out = {}

    def half():
        s = connect(port)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        out["half-sent head"] = wait_closed(s, 90)
        s.close()

    def idle():
        s = connect(port)
        out["nothing sent"] = wait_closed(s, 90)
        s.close()

    def keep_alive():
        s = connect(port)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                out["idle after a request"] = (None, b"closed before answering")
                return
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        seconds, _ = wait_closed(s, 90)
        out["idle after a request"] = (seconds, status.encode())
        s.close()

    before = SERVER.rss()
    threads = [threading.Thread(target=f, daemon=True) for f in (half, idle, keep_alive)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    after = SERVER.rss()
    parts = []
    for name in ("half-sent head", "nothing sent", "idle after a request"):
        seconds, got = out.get(name, (None, b""))
        if seconds is None:
            parts.append(f"{name}: still open after 90 s")
        else:
            note = ""
            if name != "idle after a request" and got:
                note = " (answered " + got.split(b"\r\n", 1)[0].decode("latin-1") + ")"
            parts.append(f"{name}: closed after {seconds:.1f} s{note}")
    return ("Slow or idle connections", "; ".join(parts), before, after)


def attack_subscribe_body(port, token):
    prefix = b'{"subscriptions":['
    n = (20_000_000 - len(prefix) - len(b"{}]}")) // 3
    body = prefix + b"{}," * n + b"{}]}"
    head = (
        "POST /api/v1/events/subscribe HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    before = SERVER.rss()
    s = connect(port, timeout=40)
    sent = {"bytes": 0}

    def send():
        try:
            s.sendall(head)
            view = memoryview(body)
            for off in range(0, len(body), 1 << 16):
                s.sendall(view[off : off + (1 << 16)])
                sent["bytes"] = off + len(view[off : off + (1 << 16)])
        except OSError:
            pass  # broken pipe or reset once the server has answered

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    status = read_status(s)
    after = SERVER.rss()
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
    sender.join(10)
    result = f"{status} after {sent['bytes'] / 1e6:.1f} MB of 20 MB sent"
    return ("20 MB subscribe body", result, before, after)


def create_blobs(port, token, refs):
    failures = Counter()
    statuses = Counter()
    lock = threading.Lock()
    pending = list(refs)

    def worker():
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while True:
            with lock:
                if not pending:
                    break
                r = pending.pop()
            data = os.urandom(BLOB_BYTES)
            status = None
            for headers in ({}, {"If-None-Match": "*"}):
                hdrs = {"Authorization": f"Bearer {token}",
                        "Content-Type": "application/octet-stream", **headers}
                try:
                    conn.request("PUT", f"/v1/blobs/{r}", body=data, headers=hdrs)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                except (OSError, http.client.HTTPException) as e:
                    status = type(e).__name__
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=60)
                if isinstance(status, int) and 200 <= status < 300:
                    break
            with lock:
                statuses[status] += 1
                if not (isinstance(status, int) and 200 <= status < 300):
                    failures[status] += 1
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return statuses, failures


def attack_listings(port, token, created):
    time.sleep(1)
    before = SERVER.rss()
    reset = SERVER.reset_hwm()
    hwm_before = SERVER.hwm()
    results = [None] * 4

    def lister(i):
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            auth = {"Authorization": f"Bearer {token}"}
            conn.request("GET", "/v1/blobs?limit=1000", headers=auth)
            resp = conn.getresponse()
            body = resp.read()
            entries = len(json.loads(body).get("blobs", [])) if resp.status == 200 else None
            results[i] = (resp.status, entries)
            conn.close()
        except (OSError, http.client.HTTPException, ValueError) as e:
            results[i] = (type(e).__name__, None)

    threads = [threading.Thread(target=lister, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    after = SERVER.rss()
    hwm_after = SERVER.hwm()
    answers = Counter()
    for status, entries in (r or ("unfinished", None) for r in results):
        answers[f"{status} with {entries} entries" if entries is not None else str(status)] += 1
    result = f"{created}; listings: {counts(answers)}"
    hwm = (hwm_before, hwm_after, reset)
    return ("Four parallel listings of 300 blobs of 768 KiB", result, before, after, hwm)


class WebSocket:
    """Just enough of a WebSocket client for Engine.IO text packets."""

    def __init__(self, port, rcvbuf=None, source=None):
        self.s = connect(port, timeout=10, rcvbuf=rcvbuf, source=source)
        self.buf = b""
        # Held for each write: a pong sent by a reading thread must not land inside a frame
        # another thread is writing.
        self.writing = threading.Lock()
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise RuntimeError(f"WebSocket upgrade refused: {status.decode('latin-1')}")

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_text(self):
        while True:
            b0, b1 = self._take(2)
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if length == 126:
                length = int.from_bytes(self._take(2), "big")
            elif length == 127:
                length = int.from_bytes(self._take(8), "big")
            if b1 & 0x80:
                self._take(4)  # servers do not mask; tolerate it anyway
            payload = self._take(length)
            if opcode == 0x8:
                raise ConnectionError("WebSocket closed by the server")
            if opcode == 0x1:
                return payload.decode("utf-8", "replace")

    def take_frames(self):
        """The whole frames already read (`(opcode, payload)`), leaving a partial one."""
        frames = []
        buf, at = self.buf, 0
        while len(buf) - at >= 2:
            opcode, length, i = buf[at] & 0x0F, buf[at + 1] & 0x7F, at + 2
            if length == 126:
                if len(buf) - at < 4:
                    break
                length, i = int.from_bytes(buf[at + 2 : at + 4], "big"), at + 4
            elif length == 127:
                if len(buf) - at < 10:
                    break
                length, i = int.from_bytes(buf[at + 2 : at + 10], "big"), at + 10
            if buf[at + 1] & 0x80:
                i += 4
            if len(buf) < i + length:
                break
            frames.append((opcode, buf[i : i + length]))
            at = i + length
        self.buf = buf[at:]
        return frames

    @staticmethod
    def frame(text):
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        elif n < 65536:
            head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
        # Masked as one big integer: fast enough for megabyte frames.
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        return head + mask + masked

    def send_text(self, text):
        self.send_frames(self.frame(text))

    def send_frames(self, data):
        """Writes whole frames (from `frame`) in one go."""
        with self.writing:
            self.s.sendall(data)


def socketio_connect(port, token, rcvbuf=None, source=None):
    ws = WebSocket(port, rcvbuf=rcvbuf, source=source)
    opened = ws.recv_text()
    if not opened.startswith("0"):
        raise RuntimeError(f"expected the Engine.IO open packet, got {opened[:80]!r}")
    ws.send_text("40" + json.dumps({"token": token}))
    while True:
        packet = ws.recv_text()
        if packet.startswith("40"):
            return ws
        if packet.startswith("44"):
            raise RuntimeError(f"connect_error: {packet[:200]}")
        if packet == "2":
            ws.send_text("3")


def attack_stalled_sockets(port, token, refs):
    time.sleep(1)
    before = SERVER.rss()
    sockets = []
    errors = Counter()
    for k in range(20):
        try:
            ws = socketio_connect(port, token, rcvbuf=4096)
        except (OSError, RuntimeError) as e:
            errors[str(e)[:80]] += 1
            continue
        frames = []
        for i in range(30):
            r = refs[(30 * k + i) % len(refs)]
            frames.append(ws.frame(f'42{2 * i}["ref","{r}"]'))
            frames.append(ws.frame(f'42{2 * i + 1}["get",{{}}]'))
        try:
            ws.s.sendall(b"".join(frames))
        except OSError as e:
            errors[type(e).__name__] += 1
            continue
        sockets.append(ws)
    drops_before = SERVER.stalled_drops
    start = time.monotonic()
    time.sleep(5)
    after = SERVER.rss()
    ports = {ws.s.getsockname()[1]: ws for ws in sockets}
    closed_at = {}
    peak = after
    all_dropped_at = None
    while time.monotonic() - start < 65 and len(closed_at) < len(ports):
        held = SERVER.connections()
        now = time.monotonic() - start
        if all_dropped_at is None and SERVER.stalled_drops - drops_before >= len(sockets):
            all_dropped_at = now
        for p in ports:
            if p not in held and p not in closed_at:
                closed_at[p] = now
        rss = SERVER.rss()
        if rss is not None and (peak is None or rss > peak):
            peak = rss
        time.sleep(0.5)
    waited = time.monotonic() - start
    end_rss = SERVER.rss()
    dropped = SERVER.stalled_drops - drops_before
    # Read again what the server still has for each socket: a closed one ends with EOF.
    received = 0
    eofs = 0
    for ws in sockets:
        ws.s.settimeout(2.0)
        got = len(ws.buf)
        try:
            while got < 64 << 20:
                chunk = ws.s.recv(1 << 16)
                if not chunk:
                    eofs += 1
                    break
                got += len(chunk)
        except socket.timeout:
            pass
        except OSError:
            eofs += 1
        received += got
        ws.s.close()
    time.sleep(2)
    closed_rss = SERVER.rss()
    n = len(ports)
    if len(closed_at) == n:
        times = sorted(closed_at.values())
        closed = (
            f"the server closed all {n} connections "
            f"{times[0]:.0f}-{times[-1]:.0f} s after the requests"
        )
    else:
        closed = (
            f"the server still held {n - len(closed_at)} of {n} connections open "
            f"{waited:.0f} s after the requests"
        )
    result = (
        f"{len(sockets)} sockets stalled with 30 `get` each; the server logged "
        f"{dropped} \"client stopped reading\" drops"
        + (f" (all by {all_dropped_at:.0f} s)" if all_dropped_at is not None else "")
        + f"; {closed} "
        f"(RSS {mb(end_rss)} MB then, peak {mb(peak)} MB); reading again, each socket got "
        f"{received / 2**20 / max(1, len(sockets)):.1f} MiB on average and {eofs} of "
        f"{len(sockets)} then EOF; RSS {mb(closed_rss)} MB once the clients closed"
    )
    if errors:
        result += f"; setup errors: {counts(errors)}"
    return ("20 stalled sockets each asking for thirty 768 KiB replies", result, before, after)


class Crowd:
    """Many WebSockets read in one thread, as live clients would read them: each ping is
    answered, each other text packet handed to `on_text(ws, text)`, and the moment the server
    closed each socket is noted (seconds after the crowd was made, in `closed`)."""

    def __init__(self, sockets, on_text=None):
        self.sockets = list(sockets)
        self.on_text = on_text
        self.closed = {}
        self.made = time.monotonic()
        self._stop = threading.Event()
        self._thread = None

    def open_count(self):
        return len(self.sockets) - len(self.closed)

    def _handle(self, ws):
        """Handles the whole frames read so far; False once the server closed the socket."""
        for opcode, payload in ws.take_frames():
            if opcode == 0x8:
                return False
            if opcode != 0x1:
                continue
            text = payload.decode("utf-8", "replace")
            if text == "2":
                try:
                    ws.send_text("3")
                except OSError:
                    return False
            elif self.on_text is not None:
                self.on_text(ws, text)
        return True

    def _pump(self, deadline):
        selector = selectors.DefaultSelector()
        for ws in self.sockets:
            if ws in self.closed:
                continue
            if self._handle(ws):
                selector.register(ws.s, selectors.EVENT_READ, ws)
            else:
                self.closed[ws] = time.monotonic() - self.made
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if not selector.get_map():
                time.sleep(0.2)
                continue
            for key, _ in selector.select(timeout=0.2):
                ws = key.data
                try:
                    chunk = ws.s.recv(1 << 16)
                except socket.timeout:
                    continue
                except OSError:
                    chunk = b""
                ws.buf += chunk
                if not chunk or not self._handle(ws):
                    self.closed[ws] = time.monotonic() - self.made
                    selector.unregister(ws.s)
        selector.close()

    def run(self, seconds):
        """Reads for `seconds` in this thread."""
        self._pump(time.monotonic() + seconds)

    def start(self):
        """Reads in a thread of its own until `stop`."""
        self._thread = threading.Thread(target=self._pump, args=(None,), daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def close_all(self):
        for ws in self.sockets:
            try:
                ws.s.close()
            except OSError:
                pass


def open_many(n, opener, workers=8):
    """Runs `opener(i)` for i in range(n) on `workers` threads; returns what the calls
    returned (in no particular order) and the counts of what they raised."""
    opened, errors = [], Counter()
    lock = threading.Lock()
    todo = iter(range(n))

    def worker():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                ws = opener(i)
            except (OSError, RuntimeError) as e:
                with lock:
                    errors[f"{type(e).__name__}: {str(e)[:60]}"] += 1
                continue
            with lock:
                opened.append(ws)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return opened, errors


def engineio_open(port, rcvbuf=None, source=None):
    """A WebSocket Engine.IO session that has not sent the Socket.IO CONNECT."""
    ws = WebSocket(port, rcvbuf=rcvbuf, source=source)
    opened = ws.recv_text()
    if not opened.startswith("0"):
        raise RuntimeError(f"expected the Engine.IO open packet, got {opened[:80]!r}")
    return ws


def local_ports(sockets):
    """The client ports of these WebSockets (taken while they are open)."""
    return {ws.s.getsockname()[1] for ws in sockets}


def server_holds(ports):
    """How many of these client ports' connections the server still holds open."""
    return len(ports & SERVER.connections())


def wait_released(ports, limit):
    """Waits until the server holds none of these connections (at most `limit` s)."""
    deadline = time.monotonic() + limit
    while server_holds(ports) and time.monotonic() < deadline:
        time.sleep(0.2)


def http_status(port, method, path, token=None, body=None, source=None, timeout=15):
    """The status of one request on a connection of its own (or what happened instead)."""
    try:
        s = connect(port, timeout=timeout, source=source)
    except OSError as e:
        return type(e).__name__
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    try:
        s.sendall(head.encode() + b"\r\n" + (body or b""))
        return read_status(s)
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()


# BLAKE3 (the content hash), for inputs of one 64-byte block: the standard library has none.
B3_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
         0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
B3_SCHEDULE = []  # the message word order of each of the 7 rounds
_order = list(range(16))
for _ in range(7):
    B3_SCHEDULE.append(tuple(_order))
    _order = [_order[i] for i in (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)]


def blake3_block(data):
    """The BLAKE3 hash (hex) of at most 64 bytes: one chunk of one block, the root."""
    if len(data) > 64:
        raise ValueError("blake3_block takes at most 64 bytes")
    M = 0xFFFFFFFF
    m = struct.unpack("<16I", data.ljust(64, b"\0"))
    v0, v1, v2, v3, v4, v5, v6, v7 = B3_IV
    v8, v9, v10, v11 = B3_IV[:4]
    v12, v13, v14, v15 = 0, 0, len(data), 1 | 2 | 8  # CHUNK_START | CHUNK_END | ROOT
    for s in B3_SCHEDULE:
        w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15 = (m[i] for i in s)
        v0 = (v0 + v4 + w0) & M; v12 ^= v0; v12 = (v12 >> 16 | v12 << 16) & M
        v8 = (v8 + v12) & M; v4 ^= v8; v4 = (v4 >> 12 | v4 << 20) & M
        v0 = (v0 + v4 + w1) & M; v12 ^= v0; v12 = (v12 >> 8 | v12 << 24) & M
        v8 = (v8 + v12) & M; v4 ^= v8; v4 = (v4 >> 7 | v4 << 25) & M
        v1 = (v1 + v5 + w2) & M; v13 ^= v1; v13 = (v13 >> 16 | v13 << 16) & M
        v9 = (v9 + v13) & M; v5 ^= v9; v5 = (v5 >> 12 | v5 << 20) & M
        v1 = (v1 + v5 + w3) & M; v13 ^= v1; v13 = (v13 >> 8 | v13 << 24) & M
        v9 = (v9 + v13) & M; v5 ^= v9; v5 = (v5 >> 7 | v5 << 25) & M
        v2 = (v2 + v6 + w4) & M; v14 ^= v2; v14 = (v14 >> 16 | v14 << 16) & M
        v10 = (v10 + v14) & M; v6 ^= v10; v6 = (v6 >> 12 | v6 << 20) & M
        v2 = (v2 + v6 + w5) & M; v14 ^= v2; v14 = (v14 >> 8 | v14 << 24) & M
        v10 = (v10 + v14) & M; v6 ^= v10; v6 = (v6 >> 7 | v6 << 25) & M
        v3 = (v3 + v7 + w6) & M; v15 ^= v3; v15 = (v15 >> 16 | v15 << 16) & M
        v11 = (v11 + v15) & M; v7 ^= v11; v7 = (v7 >> 12 | v7 << 20) & M
        v3 = (v3 + v7 + w7) & M; v15 ^= v3; v15 = (v15 >> 8 | v15 << 24) & M
        v11 = (v11 + v15) & M; v7 ^= v11; v7 = (v7 >> 7 | v7 << 25) & M
        v0 = (v0 + v5 + w8) & M; v15 ^= v0; v15 = (v15 >> 16 | v15 << 16) & M
        v10 = (v10 + v15) & M; v5 ^= v10; v5 = (v5 >> 12 | v5 << 20) & M
        v0 = (v0 + v5 + w9) & M; v15 ^= v0; v15 = (v15 >> 8 | v15 << 24) & M
        v10 = (v10 + v15) & M; v5 ^= v10; v5 = (v5 >> 7 | v5 << 25) & M
        v1 = (v1 + v6 + w10) & M; v12 ^= v1; v12 = (v12 >> 16 | v12 << 16) & M
        v11 = (v11 + v12) & M; v6 ^= v11; v6 = (v6 >> 12 | v6 << 20) & M
        v1 = (v1 + v6 + w11) & M; v12 ^= v1; v12 = (v12 >> 8 | v12 << 24) & M
        v11 = (v11 + v12) & M; v6 ^= v11; v6 = (v6 >> 7 | v6 << 25) & M
        v2 = (v2 + v7 + w12) & M; v13 ^= v2; v13 = (v13 >> 16 | v13 << 16) & M
        v8 = (v8 + v13) & M; v7 ^= v8; v7 = (v7 >> 12 | v7 << 20) & M
        v2 = (v2 + v7 + w13) & M; v13 ^= v2; v13 = (v13 >> 8 | v13 << 24) & M
        v8 = (v8 + v13) & M; v7 ^= v8; v7 = (v7 >> 7 | v7 << 25) & M
        v3 = (v3 + v4 + w14) & M; v14 ^= v3; v14 = (v14 >> 16 | v14 << 16) & M
        v9 = (v9 + v14) & M; v4 ^= v9; v4 = (v4 >> 12 | v4 << 20) & M
        v3 = (v3 + v4 + w15) & M; v14 ^= v3; v14 = (v14 >> 8 | v14 << 24) & M
        v9 = (v9 + v14) & M; v4 ^= v9; v4 = (v4 >> 7 | v4 << 25) & M
    out = (v0 ^ v8, v1 ^ v9, v2 ^ v10, v3 ^ v11, v4 ^ v12, v5 ^ v13, v6 ^ v14, v7 ^ v15)
    return struct.pack("<8I", *out).hex()


# ---------------------------------------------------------------------------------------------
# The attacks of the second round


BINARY_SOCKETS = 300
BINARY_STRING = 1_900_000  # characters of the string after the placeholder
BINARY_WAIT = 12  # seconds


def attack_binary(port, token, mode):
    """`mode`: "connect" (CONNECT with a token first), "pending" (no CONNECT) or "text" (no
    CONNECT, the same bytes as a plain text event)."""
    kind = "421" if mode == "text" else "451-1"
    packet = kind + '["now",{"_placeholder":true,"num":0},"' + "a" * BINARY_STRING + '"]'
    frame = WebSocket.frame(packet)  # one frame, sent on every socket

    def open_one(i):
        ws = socketio_connect(port, token) if mode == "connect" else engineio_open(port)
        try:
            ws.s.sendall(frame)
        except OSError as e:
            ws.s.close()
            raise RuntimeError("closed while sending") from e
        return ws

    time.sleep(1)
    before = SERVER.rss()
    sockets, errors = open_many(BINARY_SOCKETS, open_one)
    ports = local_ports(sockets)
    crowd = Crowd(sockets)
    crowd.run(BINARY_WAIT)
    after = SERVER.rss()
    held = server_holds(ports)
    crowd.close_all()
    wait_released(ports, 10)
    released = SERVER.rss()
    who = {
        "connect": "after CONNECT with a token",
        "pending": "without CONNECT",
        "text": "without CONNECT, as a text event",
    }[mode]
    name = (
        f"{BINARY_SOCKETS} sockets, {who}: "
        + ("`451-1[\"now\",{placeholder},\"<1.9 MB>\"]`, attachment never sent"
           if mode != "text" else "`421[\"now\",{placeholder},\"<1.9 MB>\"]`")
    )
    result = (
        f"{len(sockets)} sent it; {BINARY_WAIT} s later {crowd.open_count()} still open "
        f"(the server held {held}); RSS {mb(released)} MB once the clients closed"
    )
    if errors:
        result += f"; refused: {counts(errors)}"
    return (name, result, before, after)


WATCH_SOCKETS = 300
WATCH_REFS = 1000


def attack_watch(port, token):
    def open_one(i):
        ws = socketio_connect(port, token)
        refs = [os.urandom(32).hex() for _ in range(WATCH_REFS)]
        ws.send_text("420" + json.dumps(["watch", {"refs": refs}]))
        return ws

    acks = Counter()

    def on_text(ws, text):
        if text.startswith("430"):
            acks[text[3:80]] += 1

    time.sleep(1)
    before = SERVER.rss()
    started = time.monotonic()
    sockets, errors = open_many(WATCH_SOCKETS, open_one)
    ports = local_ports(sockets)
    crowd = Crowd(sockets, on_text)
    while sum(acks.values()) < len(sockets) and time.monotonic() - started < 90:
        crowd.run(0.5)
    took = time.monotonic() - started
    during = SERVER.rss()
    crowd.close_all()
    wait_released(ports, 15)
    time.sleep(5)
    left = SERVER.rss()
    result = (
        f"acks in {took:.1f} s: {counts(acks) or 'none'}; RSS {mb(left)} MB 5 s after all "
        f"disconnected ({growth(before, left)} MB)"
    )
    if errors:
        result += f"; refused: {counts(errors)}"
    name = f"{WATCH_SOCKETS} sockets each `watch` {WATCH_REFS:,} distinct refs"
    return (name, result, before, during)


STREAMS_SETTINGS = {"MAX_CONNECTIONS": "300", "MAX_CONNECTIONS_PER_IP": "10"}
STREAMS_WAIT = 20  # seconds the streams are held before counting those still open


def attack_streams(port, token):
    r = hashlib.sha256(b"streams").hexdigest()
    body = b'{"subscriptions":[{}]}'
    requests = {
        "SSE": (f"GET /v1/blobs/{r}/events HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode(),
        "NDJSON": (f"POST /api/v1/events/subscribe HTTP/1.1\r\nHost: {HOST}\r\n"
                   f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body,
    }
    time.sleep(1)
    before = SERVER.rss()
    streams, answers = [], Counter()
    for i in range(300):
        kind = "SSE" if i % 2 == 0 else "NDJSON"
        try:
            s = connect(port, timeout=10)
            s.sendall(requests[kind])
            status = read_status(s)
        except OSError as e:
            answers[f"{kind} {type(e).__name__}"] += 1
            continue
        answers[f"{kind} {status}"] += 1
        if status == "200":
            streams.append(s)
        else:
            s.close()
    opened = time.monotonic()
    after = SERVER.rss()
    other = "127.0.0.2"
    try:
        ws = socketio_connect(port, token, source=other)
        handshake = "connected"
        ws.s.close()
    except (OSError, RuntimeError) as e:
        handshake = str(e)[:80]
    http = http_status(port, "GET", "/v1/blobs?limit=1", token, source=other)
    health = http_status(port, "GET", "/healthz", source=other)
    time.sleep(max(0.0, STREAMS_WAIT - (time.monotonic() - opened)))
    held = SERVER.connections()
    still = sum(1 for s in streams if s.getsockname()[1] in held)
    for s in streams:
        s.close()
    result = (
        f"one address: {counts(answers)}; then from {other}: Socket.IO {handshake}, "
        f"`GET /v1/blobs` {http}, `/healthz` {health}; {still} of {len(streams)} streams "
        f"still open {STREAMS_WAIT} s later"
    )
    name = ("One address opens 300 SSE and NDJSON streams (`MAX_CONNECTIONS=300`, "
            "`MAX_CONNECTIONS_PER_IP=10`)")
    return (name, result, before, after)


def attack_secrets(binary):
    """Servers started with whitespace in their secrets, each on an empty directory."""
    parts = []

    def probe(settings, tokens):
        storage = tempfile.mkdtemp(prefix="blobs-adversary-secrets-")
        server = Server(binary, storage, settings, must_serve=False)
        try:
            if server.port is None:
                code = server.exit_code(10)
                last = next((line for line in reversed(server.log) if line.strip()), "")
                return f"did not start (exit code {code}: {last.strip()[:120]!r})"
            seen = []
            for label, secret in tokens:
                status = http_status(server.port, "GET", "/v1/blobs?limit=1", mint(BUCKET, secret))
                seen.append(f"a token signed with {label}: {status}")
            return "served; " + ", ".join(seen)
        finally:
            server.stop()
            shutil.rmtree(storage, ignore_errors=True)

    parts.append('`TOKEN_SECRET=" "`: ' + probe({"TOKEN_SECRET": " "}, [('" "', " ")]))
    # Previous secrets long enough for any minimum, so what is tested is the list's parsing.
    old, alpha, beta = "adversary-old-secret", "adversary-alpha-secret", "adversary-beta-secret"
    parts.append(
        f'`PREVIOUS_TOKEN_SECRETS="{old}, "`: '
        + probe({"PREVIOUS_TOKEN_SECRETS": f"{old}, "}, [('" "', " "), (old, old)])
    )
    parts.append(
        f'`PREVIOUS_TOKEN_SECRETS="{alpha}, {beta}"`: '
        + probe({"PREVIOUS_TOKEN_SECRETS": f"{alpha}, {beta}"}, [(beta, beta)])
    )
    return ("Whitespace secrets", "; ".join(parts), None, None)


DISK_UPLOADS = 16
DISK_UPLOAD_BYTES = 64 * 1024 * 1024
RECORD_SECONDS = 5
RECORD_CLIENTS = 8  # connections making records at once


def stored_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def service_upload(conn, token, parts):
    """`POST /api/v1/blobs` (multipart: `metadata`, then `blob` made of `parts`): the status,
    or the name of what went wrong (then `conn` must be replaced)."""
    boundary = "adversary" + os.urandom(8).hex()
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
        '{"semantics":"adversary"}\r\n'
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"blob\"; filename=\"x.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + sum(len(p) for p in parts) + len(tail)
    try:
        conn.putrequest("POST", "/api/v1/blobs")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        try:
            for part in (head, *parts, tail):
                conn.send(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer says why
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__


def attack_disk(port, token):
    storage = SERVER.storage
    lock = threading.Lock()
    time.sleep(1)
    before = SERVER.rss()

    # Records first, on a server that has allocated little yet: their RSS is theirs. One small
    # content for all, so each upload adds a record and nothing else.
    records = Counter()
    same = os.urandom(16)
    stop = time.monotonic() + RECORD_SECONDS

    def recorder():
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while time.monotonic() < stop:
            status = service_upload(conn, token, [same])
            if not isinstance(status, int) or status >= 300:
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            with lock:
                records[status] += 1
        conn.close()

    threads = [threading.Thread(target=recorder, daemon=True) for _ in range(RECORD_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    time.sleep(1)
    mid = SERVER.rss()
    made = records.get(201, 0)

    big = memoryview(bytearray(os.urandom(DISK_UPLOAD_BYTES)))
    bytes_before = stored_bytes(storage)
    uploads = Counter()
    todo = iter(range(DISK_UPLOADS))

    def uploader():
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                break
            # Distinct content: the first 8 bytes differ.
            status = service_upload(conn, token, [i.to_bytes(8, "big"), big[8:]])
            if not isinstance(status, int) or status >= 300:
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=120)
            with lock:
                uploads[status] += 1
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=uploader, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    upload_secs = time.monotonic() - started
    stored = stored_bytes(storage) - bytes_before
    after = SERVER.rss()
    result = (
        f"Blob Service uploads of one small content for {RECORD_SECONDS} s: {counts(records)}, "
        f"{made / RECORD_SECONDS:,.0f} records/s, RSS {growth(before, mid)} MB"
        + (f" ({(mid - before) * 2**20 / made:,.0f} B a record)" if made and mid and before else "")
        + f"; then {DISK_UPLOADS} uploads of 64 MiB distinct content (`POST /api/v1/blobs`): "
        f"{counts(uploads)} in {upload_secs:.1f} s, {stored / 2**20:,.0f} MiB stored"
    )
    return ("One token fills the record index and the disk", result, before, after)


BURST_SIZES = "100,150,200"
BURST_TRIALS = 6


def attack_bursts(port, token, repo):
    script = os.path.join(repo, "tests", "interop", "burst-trials.mjs")
    if not os.path.isdir(os.path.join(repo, "tests", "interop", "node_modules")):
        raise RuntimeError("tests/interop/node_modules missing: run `npm ci` there")
    r = hashlib.sha256(b"bursts").hexdigest()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("PUT", f"/v1/blobs/{r}", body=os.urandom(4096),
                 headers={"Authorization": f"Bearer {token}",
                          "Content-Type": "application/octet-stream"})
    conn.getresponse().read()
    conn.close()
    time.sleep(1)
    before = SERVER.rss()
    drops_before = SERVER.stalled_drops
    env = {**os.environ, "BLOBS_URL": f"http://{HOST}:{port}", "BLOBS_TOKEN": token,
           "BLOBS_REF": r}
    done = subprocess.run(["node", script, BURST_SIZES, str(BURST_TRIALS)], env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"burst-trials.mjs exited {done.returncode}: {done.stderr.strip()[-200:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    after = SERVER.rss()
    parts = []
    for size, row in report.items():
        reasons = ", ".join(f"{k} {v}" for k, v in row["reasons"].items())
        parts.append(
            f"{size}: {row['disconnected']} of {row['trials']} disconnected"
            + (f" ({reasons})" if reasons else "")
            + f", {row['answered']} answered, {row['errors']} error acks,"
            f" {row['unanswered']} unanswered"
        )
    result = (
        "; ".join(parts)
        + f"; the server logged {SERVER.stalled_drops - drops_before} \"client stopped reading\""
    )
    name = (f"Official client: `ref`, then bursts of {BURST_SIZES.replace(',', '/')} `get` "
            f"with acks, {BURST_TRIALS} trials each")
    return (name, result, before, after)


SENDQ_SINKS = 100
SENDQ_EVENTS = 40
SENDQ_ENTRIES = 1024
SENDQ_WAIT = 70  # seconds
SENDQ_DRAINED = 1 << 20  # bytes: a kernel send queue below this counts as drained


def attack_sendq(port, token):
    started = time.monotonic()
    frames = []
    for e in range(SENDQ_EVENTS):
        entries = []
        for i in range(SENDQ_ENTRIES):
            data = b"adversary" + (e * SENDQ_ENTRIES + i).to_bytes(4, "big") + os.urandom(3)
            entries.append({"hash": blake3_block(data),
                            "data_b64": base64.b64encode(data).decode()})
        frames.append(WebSocket.frame(f"42{e}" + json.dumps(["blob-upload", {"blobs": entries}])))
    print(f"  {SENDQ_EVENTS * SENDQ_ENTRIES} hashes in {time.monotonic() - started:.0f} s",
          file=sys.stderr, flush=True)
    time.sleep(1)
    before = SERVER.rss()
    sinks, errors = open_many(SENDQ_SINKS, lambda i: socketio_connect(port, token, rcvbuf=8192))
    reader = socketio_connect(port, token)
    attacker = socketio_connect(port, token)
    seen = {"available": 0, "acks": 0, "accepted": 0, "last_ack": None, "at_first_ack": None}

    def on_text(ws, text):
        if ws is reader and text.startswith('42["blob-available"'):
            seen["available"] += 1
        elif ws is attacker and text.startswith("43"):
            seen["acks"] += 1
            seen["last_ack"] = time.monotonic()
            if seen["at_first_ack"] is None:
                seen["at_first_ack"] = seen["available"]
            try:
                reply = json.loads(text[2:].lstrip("0123456789"))[0]
                seen["accepted"] += len(reply.get("accepted", []))
            except (ValueError, IndexError, AttributeError):
                pass

    crowd = Crowd([reader, attacker], on_text).start()
    drops_before = SERVER.stalled_drops
    attacker.send_frames(b"".join(frames))
    sent = time.monotonic()
    sink_ports = local_ports(sinks)
    closed_at = {}
    peak_q, peak_q_at, peak_rss, drained_at = 0, 0.0, before, None
    # Until the bound, or until every sink is closed and the kernel has let go of its queue
    # (a closed socket's unsent bytes stay in the kernel until they are sent or reset).
    while time.monotonic() - sent < SENDQ_WAIT:
        now = time.monotonic() - sent
        queue = SERVER.send_queue()
        if queue > peak_q:
            peak_q, peak_q_at = queue, now
        if len(closed_at) == len(sink_ports) and queue < SENDQ_DRAINED:
            drained_at = now
            break
        rss = SERVER.rss()
        if rss is not None and rss > peak_rss:
            peak_rss = rss
        held = SERVER.connections()
        for p in sink_ports - held - closed_at.keys():
            closed_at[p] = now
        time.sleep(0.5)
    after = SERVER.rss()
    end_q, ended = SERVER.send_queue(), time.monotonic() - sent
    crowd.stop()
    for ws in [*sinks, reader, attacker]:
        ws.s.close()
    n = len(sink_ports)
    if len(closed_at) == n:
        times = sorted(closed_at.values())
        closed = f"all {n} closed {times[0]:.0f}-{times[-1]:.0f} s after the uploads"
    else:
        closed = f"{n - len(closed_at)} of {n} still open {SENDQ_WAIT} s after the uploads"
    waited = time.monotonic() - sent
    if seen["last_ack"] is None:
        acked = f"no ack within {waited:.0f} s"
    else:
        acked = (f"{seen['acks']} of {SENDQ_EVENTS} acks within {waited:.0f} s (the last at "
                 f"{seen['last_ack'] - sent:.0f} s), {seen['accepted']:,} contents accepted")
    per_upload = "" if seen["at_first_ack"] is None else (
        f", {seen['at_first_ack']:,} of them before the first ack")
    result = (
        f"{acked}; the idle reader got {seen['available']:,} `blob-available`{per_upload}; "
        f"kernel send queue peak {peak_q / 2**20:,.1f} MiB at {peak_q_at:.0f} s, "
        + (f"under 1 MiB at {drained_at:.0f} s" if drained_at is not None
           else f"{end_q / 2**20:,.1f} MiB at {ended:.0f} s")
        + f"; sinks: {closed}; "
        f"{SERVER.stalled_drops - drops_before} \"client stopped reading\"; "
        f"RSS peak {mb(peak_rss)} MB"
    )
    if errors:
        result += f"; refused: {counts(errors)}"
    name = (f"{SENDQ_SINKS} sockets with an 8 KiB receive buffer read nothing while "
            f"{SENDQ_EVENTS} `blob-upload` of {SENDQ_ENTRIES:,} entries are sent")
    return (name, result, before, after)


LISTING_LOOPS = 8
GETS = 250
GET_PACE = 0.02  # seconds between two `get`: 50/s, under the default rate limit


def attack_listing_cpu(port, token):
    bystander = mint("bystander")
    r = hashlib.sha256(b"bystander").hexdigest()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("PUT", f"/v1/blobs/{r}", body=os.urandom(1024),
                 headers={"Authorization": f"Bearer {bystander}",
                          "Content-Type": "application/octet-stream"})
    conn.getresponse().read()
    conn.close()
    ws = socketio_connect(port, bystander)
    ids = iter(range(1, 1 << 30))

    def call(event, arg):
        n = next(ids)
        ws.send_text(f"42{n}" + json.dumps([event, arg]))
        while True:
            text = ws.recv_text()
            if text == "2":
                ws.send_text("3")
            elif text.startswith(f"43{n}["):
                return text

    def latencies():
        out = []
        for _ in range(GETS):
            t0 = time.monotonic()
            call("get", {})
            out.append((time.monotonic() - t0) * 1000)
            time.sleep(max(0.0, GET_PACE - (time.monotonic() - t0)))
        return out

    def listing(conn):
        conn.request("GET", "/v1/blobs?limit=1000", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status

    call("ref", r)
    time.sleep(1)
    before = SERVER.rss()
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    cpu0 = SERVER.cpu_seconds()
    single = Counter(listing(conn) for _ in range(5))
    cpu = (SERVER.cpu_seconds() - cpu0) / 5
    conn.close()
    idle = latencies()
    stop = threading.Event()
    loops = Counter()
    lock = threading.Lock()

    def loop():
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while not stop.is_set():
            try:
                status = listing(conn)
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            with lock:
                loops[status] += 1
        conn.close()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(LISTING_LOOPS)]
    for t in threads:
        t.start()
    time.sleep(1)
    busy = latencies()
    stop.set()
    for t in threads:
        t.join(60)
    after = SERVER.rss()
    ws.s.close()

    def p(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    result = (
        f"one listing ({counts(single)}): {cpu:.2f} s of server CPU; another client's `get` "
        f"p50 {p(idle, 0.5):.1f} ms (p90 {p(idle, 0.9):.1f}) alone, {p(busy, 0.5):.1f} ms "
        f"(p90 {p(busy, 0.9):.1f}) during {LISTING_LOOPS} listing loops ({counts(loops)})"
    )
    name = f"Listing CPU: `GET /v1/blobs?limit=1000` over {BLOB_COUNT} blobs of 768 KiB"
    return (name, result, before, after)


# ---------------------------------------------------------------------------------------------

# Every attack by the name `--only` knows it by, in the order of a full run.
ATTACKS = (
    "heads", "small-heads", "slow", "subscribe", "listings", "stalled",
    "binary", "watch", "streams", "secrets", "disk", "bursts", "sendq", "listing-cpu",
)


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(
        description="Attacks a release build of the Blobs server; prints a Markdown table.")
    parser.add_argument("--binary", default=os.path.join(repo, "target", "release", "blobs"),
                        help="the server binary (default: target/release/blobs of this repository)")
    parser.add_argument("--only", default=",".join(ATTACKS),
                        help="comma-separated attacks to run, of: " + ", ".join(ATTACKS))
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ATTACKS]
    if unknown or not chosen:
        parser.error(f"unknown attack {', '.join(unknown)}: choose from {', '.join(ATTACKS)}")
    if not os.access(binary, os.X_OK):
        print(f"{binary} not found: run `cargo build --release` first", file=sys.stderr)
        return 1

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def overall_timeout(signum, frame):
        raise TimeoutError(f"the run took more than {OVERALL_DEADLINE} s")

    signal.signal(signal.SIGALRM, overall_timeout)
    signal.alarm(OVERALL_DEADLINE)

    root = tempfile.mkdtemp(prefix="blobs-adversary-")
    storage = os.path.join(root, "shared")
    os.mkdir(storage)
    exit_codes = []

    def fresh_server(settings=None, own_storage=False):
        """Each attack meets a server of its own (on the same storage, or with `own_storage`
        on an empty one of its own), so what one attack left in the allocator does not hide or
        inflate the next one's growth."""
        global SERVER
        if SERVER is not None:
            exit_codes.append(SERVER.stop())
        where = tempfile.mkdtemp(dir=root, prefix="own-") if own_storage else storage
        SERVER = Server(binary, where, settings)
        print(f"server pid {SERVER.pid} on {HOST}:{SERVER.port}, RSS {mb(SERVER.rss())} MB",
              file=sys.stderr)
        return SERVER.port

    token = mint(BUCKET)

    rows = []
    peaks = []
    hwm_row = None
    failed = False
    refs = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(BLOB_COUNT)]
    created = None

    def blobs_created():
        """Creates the blobs the listings and stalled sockets read, once per run."""
        nonlocal created
        if created is None:
            print(f"creating {BLOB_COUNT} blobs of {BLOB_BYTES} bytes ...", file=sys.stderr,
                  flush=True)
            statuses, failures = create_blobs(fresh_server(), token, refs)
            made = sum(statuses.values()) - sum(failures.values())
            created = f"{made} blobs created ({counts(statuses)})"
        return created

    def run(label, attack, *args):
        nonlocal failed
        print(f"attack: {label} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        start_rss = SERVER.rss() if SERVER is not None else None
        try:
            row = attack(*args)
        except Exception as e:  # one attack failing must not hide the others' figures
            failed = True
            row = (label, f"could not run: {type(e).__name__}: {e}", None, None)
        if SERVER is not None and not SERVER.alive():
            failed = True
            row = (row[0], row[1] + f"; SERVER EXITED ({SERVER.proc.returncode})", *row[2:])
        took = time.monotonic() - started
        print(f"  done in {took:.0f} s: {row[1]}", file=sys.stderr, flush=True)
        rows.append(row)
        # The server is fresh: its peak (VmHWM) since start is the attack's peak.
        peaks.append((start_rss, SERVER.hwm()) if row[2] is not None else (None, None))
        return row

    # Each attack, by name: how to run it (after the attacks before it in ATTACKS).
    def heads():
        run("heads", attack_big_heads, fresh_server())

    def small_heads():
        run("small-heads", attack_small_heads, fresh_server())

    def slow():
        run("slow", attack_slow_heads, fresh_server())

    def subscribe():
        run("subscribe", attack_subscribe_body, fresh_server(), token)

    def listings():
        nonlocal hwm_row
        made = blobs_created()
        row = run("listings", attack_listings, fresh_server(), token, made)
        if len(row) == 5:
            hwm_row = row[4]
            rows[-1] = row[:4]

    def stalled():
        blobs_created()
        run("stalled", attack_stalled_sockets, fresh_server(), token, refs)

    def binary_packets():
        for mode in ("connect", "pending", "text"):
            run(f"binary ({mode})", attack_binary, fresh_server(), token, mode)

    def watch():
        run("watch", attack_watch, fresh_server(), token)

    def streams():
        run("streams", attack_streams, fresh_server(STREAMS_SETTINGS), token)

    def secrets():
        run("secrets", attack_secrets, binary)

    def disk():
        run("disk", attack_disk, fresh_server(own_storage=True), token)

    def bursts():
        run("bursts", attack_bursts, fresh_server(), token, repo)

    def sendq():
        run("sendq", attack_sendq, fresh_server(own_storage=True), token)

    def listing_cpu():
        blobs_created()
        run("listing-cpu", attack_listing_cpu, fresh_server(), token)

    steps = {
        "heads": heads, "small-heads": small_heads, "slow": slow, "subscribe": subscribe,
        "listings": listings, "stalled": stalled, "binary": binary_packets, "watch": watch,
        "streams": streams, "secrets": secrets, "disk": disk, "bursts": bursts,
        "sendq": sendq, "listing-cpu": listing_cpu,
    }
    run_started = time.monotonic()
    try:
        for name in ATTACKS:
            if name in chosen:
                steps[name]()
    except TimeoutError as e:
        failed = True
        rows.append(("(run aborted)", str(e), None, None))
    finally:
        signal.alarm(0)
        if SERVER is not None:
            exit_codes.append(SERVER.stop())
        shutil.rmtree(root, ignore_errors=True)

    print("| attack | result | RSS before (MB) | after (MB) | growth (MB) | peak growth (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    for (name, result, before, after), (start, peak) in zip(rows, peaks + [(None, None)] * len(rows)):
        print(
            f"| {name} | {result} | {mb(before)} | {mb(after)} | {growth(before, after)} "
            f"| {growth(start, peak)} |"
        )
    if hwm_row is not None:
        hwm_before, hwm_after, reset = hwm_row
        note = "reset to RSS before the listings" if reset else "not reset: includes earlier peaks"
        print()
        print(
            f"Listings, peak resident memory (VmHWM, {note}): {mb(hwm_before)} MB before, "
            f"{mb(hwm_after)} MB after, growth {growth(hwm_before, hwm_after)} MB."
        )
    print()
    load = os.getloadavg()
    print(f"Run: {time.monotonic() - run_started:.0f} s; load average at the end "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs.")
    print(f"Server exit codes after SIGTERM: {sorted(set(c for c in exit_codes if c is not None))}")
    if SERVER is not None and SERVER.problems:
        print(f"Server WARN/ERROR log lines: {len(SERVER.problems)}, the last:")
        for line in SERVER.problems[-5:]:
            print(f"    {line}")
    return 1 if failed else 0


SERVER = None

if __name__ == "__main__":
    sys.exit(main())
