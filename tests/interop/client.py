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
# The test's patience in seconds (BLOBS_PATIENCE_MS), for each wait: generous, because the
# machine may be busy; past it the scenario fails, naming what it waited for, rather than hangs.
PATIENCE = float(os.environ.get("BLOBS_PATIENCE_MS", "300000")) / 1000


def connect():
    client = socketio.Client(reconnection=False)
    client.connect(URL, auth={"token": TOKEN}, transports=[TRANSPORT], wait_timeout=PATIENCE)
    return client


def call(client, event, data=None):
    """The ack of `event` with `data`, within PATIENCE."""
    try:
        return client.call(event, data, timeout=PATIENCE)
    except socketio.exceptions.TimeoutError:
        raise AssertionError(f"no ack of {event} within {PATIENCE:.0f} s") from None


def main():
    # The refusal is checked over WebSocket only: after a refused handshake on long-polling,
    # python-socketio's own disconnect waits for its pending poll until the next ping (25 s).
    # The JavaScript scenario checks the refusal on both transports.
    refused = socketio.Client(reconnection=False)
    denial = []
    refused.on("connect_error", denial.append)
    try:
        refused.connect(
            URL, auth={"token": "garbage"}, transports=["websocket"], wait_timeout=PATIENCE
        )
        raise AssertionError("a bad token must be refused")
    except socketio.exceptions.ConnectionError:
        pass
    assert denial == [{"message": "Access denied"}], denial

    ref = secrets.token_hex(32)
    writer = connect()
    watcher = connect()
    changed = threading.Event()
    watcher.on("changed", lambda *args: changed.set() if not args else None)

    assert call(writer, "ref", ref) is None
    assert call(watcher, "ref", ref) is None
    assert call(writer, "get", {}) is None
    assert call(writer, "set", {"data": "aGk="}) == {"success": True, "version": 1}
    assert changed.wait(PATIENCE), f"the watcher hears changed within {PATIENCE:.0f} s"
    assert call(watcher, "get", {"known": 1}) == {"version": 1}
    assert call(watcher, "set", {"data": "eA==", "version": 9}) == {
        "success": False,
        "data": "aGk=",
        "version": 1,
    }
    assert "error" in call(writer, "get")
    assert isinstance(call(writer, "now")["timestamp"], int)

    writer.disconnect()
    watcher.disconnect()
    print(f"ok {TRANSPORT}")


if __name__ == "__main__":
    main()
