#!/usr/bin/env python3
"""Attacks a release build of the Blobs server and measures what each attack costs it.

The script starts `target/release/blobs` on 127.0.0.1 (a free port, a fresh storage
directory, every limit at its default), runs five attacks one after the other, each against a
server started for it (on the same storage), and reads the server's resident memory (`VmRSS`
in /proc/<pid>/status, in MB of 2^20 bytes) before and after each one:

1. 2,000 unauthenticated Engine.IO handshakes carrying 360 KB request heads (200 connections
   at a time, each kept open until its batch is done); then 2,000 handshakes with normal
   heads, which open sessions that never send CONNECT.
2. A half-sent request head, a connection that sends nothing, and a keep-alive connection
   that goes idle after one request: seconds until the server closes each.
3. A 20 MB `POST /api/v1/events/subscribe` body.
4. Four parallel `GET /v1/blobs?limit=1000` listings of 300 blobs of 768 KiB (also the peak,
   `VmHWM`, reset before the attack).
5. 20 Socket.IO WebSocket clients that each ask for thirty 768 KiB blobs (about 1 MiB of
   base64 per reply) and then read nothing, with a 4 KiB receive buffer; whether and when
   the server drops them.

It prints one Markdown table and exits 0 (1 if the server could not be started or an attack
failed to run). Standard library only (Python 3.11+, Linux). To rerun:

    cargo build --release && scripts/adversary.py

Options: `--binary PATH` (default target/release/blobs next to this script's repository), for
instance a build of an earlier version, to compare the two on one machine.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import resource
import shutil
import signal
import socket
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
    def __init__(self, binary, storage):
        self.storage = storage
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "TOKEN_SECRET": SECRET,
            "HOST": HOST,
            "PORT": "0",
            "STORAGE": self.storage,
            "RUST_LOG": "info",
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
        if not found.wait(30) or self.port is None:
            self.stop()
            raise RuntimeError("the server did not log its address:\n" + "\n".join(self.log))

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


def mint(bucket):
    """An HS256 JWT of {bucket, iat}, as the server's own `token` binary mints."""

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = b64(
        json.dumps({"bucket": bucket, "iat": int(time.time())}, separators=(",", ":")).encode()
    )
    signing_input = header + b"." + claims
    signature = b64(hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def mb(value):
    return "n/a" if value is None else f"{value:.1f}"


def growth(before, after):
    return "n/a" if before is None or after is None else f"{after - before:+.1f}"


# ---------------------------------------------------------------------------------------------
# Raw HTTP helpers


def connect(port, timeout=10.0, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
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

    def __init__(self, port, rcvbuf=None):
        self.s = connect(port, timeout=10, rcvbuf=rcvbuf)
        self.buf = b""
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
            raise RuntimeError(f"WebSocket upgrade refused: {status!r}")

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
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        return head + mask + masked

    def send_text(self, text):
        self.s.sendall(self.frame(text))


def socketio_connect(port, token, rcvbuf=None):
    ws = WebSocket(port, rcvbuf=rcvbuf)
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


# ---------------------------------------------------------------------------------------------


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.path.join(repo, "target", "release", "blobs")
    if len(sys.argv) == 3 and sys.argv[1] == "--binary":
        binary = os.path.abspath(sys.argv[2])
    elif len(sys.argv) != 1:
        print(__doc__)
        return 2
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

    storage = tempfile.mkdtemp(prefix="blobs-adversary-")
    exit_codes = []

    def fresh_server():
        """Each attack meets a server of its own (on the same storage), so what one attack
        left in the allocator does not hide or inflate the next one's growth."""
        global SERVER
        if SERVER is not None:
            exit_codes.append(SERVER.stop())
        SERVER = Server(binary, storage)
        print(f"server pid {SERVER.pid} on {HOST}:{SERVER.port}, RSS {mb(SERVER.rss())} MB",
              file=sys.stderr)
        return SERVER.port

    token = mint(BUCKET)

    rows = []
    peaks = []
    hwm_row = None
    failed = False
    refs = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(BLOB_COUNT)]

    def run(label, attack, *args):
        nonlocal failed
        print(f"attack: {label} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        start_rss = SERVER.rss()
        try:
            row = attack(*args)
        except Exception as e:  # one attack failing must not hide the others' figures
            failed = True
            row = (label, f"could not run: {type(e).__name__}: {e}", None, None)
        if not SERVER.alive():
            failed = True
            row = (row[0], row[1] + f"; SERVER EXITED ({SERVER.proc.returncode})", *row[2:])
        took = time.monotonic() - started
        print(f"  done in {took:.0f} s: {row[1]}", file=sys.stderr, flush=True)
        rows.append(row)
        # The server is fresh: its peak (VmHWM) since start is the attack's peak.
        peaks.append((start_rss, SERVER.hwm()))
        return row

    try:
        run("1a big heads", attack_big_heads, fresh_server())
        run("1b small heads", attack_small_heads, fresh_server())
        run("2 slow heads", attack_slow_heads, fresh_server())
        run("3 subscribe body", attack_subscribe_body, fresh_server(), token)
        print(f"creating {BLOB_COUNT} blobs of {BLOB_BYTES} bytes ...", file=sys.stderr, flush=True)
        statuses, failures = create_blobs(fresh_server(), token, refs)
        made = sum(statuses.values()) - sum(failures.values())
        created = f"{made} blobs created ({counts(statuses)})"
        row = run("4 listings", attack_listings, fresh_server(), token, created)
        if len(row) == 5:
            hwm_row = row[4]
            rows[-1] = row[:4]
        run("5 stalled sockets", attack_stalled_sockets, fresh_server(), token, refs)
    except TimeoutError as e:
        failed = True
        rows.append(("(run aborted)", str(e), None, None))
    finally:
        signal.alarm(0)
        if SERVER is not None:
            exit_codes.append(SERVER.stop())
        shutil.rmtree(storage, ignore_errors=True)

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
    print(f"Server exit codes after SIGTERM: {sorted(set(exit_codes))}")
    if SERVER.problems:
        print(f"Server WARN/ERROR log lines: {len(SERVER.problems)}, the last:")
        for line in SERVER.problems[-5:]:
            print(f"    {line}")
    return 1 if failed else 0


SERVER = None

if __name__ == "__main__":
    sys.exit(main())
