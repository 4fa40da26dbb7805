"""hello: the example service shipped as a release archive (see examples/releases/build.py).

Serves its version and its configuration on the address of ``listen`` in
``$SETPOINT_ROOT/srv/app/config.ini`` (the File ``app-config`` of apps/hello):

    GET /        -> "hello <version>, workers=<n>"
    GET /health  -> 200 "ok" (the readiness probe)

SIGHUP re-reads the configuration; SIGTERM stops it cleanly.
"""

import configparser
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(os.environ.get("SETPOINT_ROOT", "/"), "srv/app/config.ini")
VERSION = open(os.path.join(HERE, "VERSION")).read().strip()
settings = {}


def load(*_):
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    settings.update(parser["server"] if parser.has_section("server") else {})
    print(f"hello {VERSION}: configuration loaded from {CONFIG}: {dict(settings)}", flush=True)


def stop(*_):
    print("hello: stopping", flush=True)
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok\n"
        else:
            body = f"hello {VERSION}, workers={settings.get('workers', '?')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("hello:", fmt % args, flush=True)


load()
signal.signal(signal.SIGHUP, load)
signal.signal(signal.SIGTERM, stop)
host, _, port = settings.get("listen", "127.0.0.1:8080").rpartition(":")
print(f"hello {VERSION}: listening on {host}:{port}", flush=True)
ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
