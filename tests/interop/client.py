"""Drives a Blobs server with the python-socketio client (a second independent implementation).

Usage: BLOBS_URL=... BLOBS_TOKEN=... python client.py websocket|polling
Exits 0 and prints "ok" when every check passed.
"""

import os
import secrets
import sys
import threading

import socketio

URL = os.environ["BLOBS_URL"]
TOKEN = os.environ["BLOBS_TOKEN"]
TRANSPORT = sys.argv[1] if len(sys.argv) > 1 else "websocket"


def connect():
    client = socketio.Client(reconnection=False)
    client.connect(URL, auth={"token": TOKEN}, transports=[TRANSPORT], wait_timeout=10)
    return client


def main():
    # The refusal is checked over WebSocket only: after a refused handshake on long-polling,
    # python-socketio's own disconnect waits for its pending poll until the next ping (25 s).
    # The JavaScript scenario checks the refusal on both transports.
    refused = socketio.Client(reconnection=False)
    denial = []
    refused.on("connect_error", denial.append)
    try:
        refused.connect(URL, auth={"token": "garbage"}, transports=["websocket"], wait_timeout=10)
        raise AssertionError("a bad token must be refused")
    except socketio.exceptions.ConnectionError:
        pass
    assert denial == [{"message": "Access denied"}], denial

    ref = secrets.token_hex(32)
    writer = connect()
    watcher = connect()
    changed = threading.Event()
    watcher.on("changed", lambda *args: changed.set() if not args else None)

    assert writer.call("ref", ref, timeout=10) is None
    assert watcher.call("ref", ref, timeout=10) is None
    assert writer.call("get", {}, timeout=10) is None
    assert writer.call("set", {"data": "aGk="}, timeout=10) == {"success": True, "version": 1}
    assert changed.wait(10), "the watcher hears changed"
    assert watcher.call("get", {"known": 1}, timeout=10) == {"version": 1}
    assert watcher.call("set", {"data": "eA==", "version": 9}, timeout=10) == {
        "success": False,
        "data": "aGk=",
        "version": 1,
    }
    assert "error" in writer.call("get", None, timeout=10)
    assert isinstance(writer.call("now", timeout=10)["timestamp"], int)

    writer.disconnect()
    watcher.disconnect()
    print(f"ok {TRANSPORT}")


if __name__ == "__main__":
    main()
