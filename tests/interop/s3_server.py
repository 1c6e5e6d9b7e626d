"""moto's S3 server, deciding one request at a time.

moto checks `If-Match` / `If-None-Match` on PutObject and then writes, on several threads and
without a lock between the two, so two conditional PUTs of one key can both succeed there.
Real S3 decides them atomically; a lock around each request gives moto the same guarantee,
which the several-node tests rely on.

Usage: s3_server.py HOST PORT (PORT 0: a free one). Prints "Running on http://HOST:PORT" to
stderr, as moto_server does.
"""

import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def serialised(app):
    lock = threading.Lock()

    def handle(environ, start_response):
        with lock:
            # moto answers with complete bodies: the whole answer is made under the lock.
            return list(app(environ, start_response))

    return handle


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        host,
        port,
        serialised(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
