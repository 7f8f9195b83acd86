#!/usr/bin/env python3
"""bench/fake_api.py: a local fake cloud API for the `providers` section of bench/run.

    fake_api.py PORT_FILE LOG_FILE TOKEN

Listens on 127.0.0.1 port 0 (threaded, HTTP/1.1 keep-alive), writes the port it got to
PORT_FILE, and answers `GET /things/{id}` with `{"state":"ACTIVE"}` when the request carries
`Authorization: Bearer TOKEN` (401 otherwise). Every request is appended to LOG_FILE as one line
`<CLOCK_MONOTONIC seconds> <status code> <path>`, written when the request arrives (the clock is
the system-wide monotonic clock, so the harness can compare it with its own time.monotonic()).
Runs until killed.
"""
import http.server
import os
import sys
import threading
import time

BODY = b'{"state":"ACTIVE"}'


def main():
    port_file, log_file, token = sys.argv[1], sys.argv[2], sys.argv[3]
    log = open(log_file, "a", buffering=1)
    lock = threading.Lock()
    expected = f"Bearer {token}"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            arrived = time.monotonic()
            if self.headers.get("Authorization") != expected:
                code, body = 401, b'{"error":"unauthorized"}'
            elif self.path.startswith("/things/"):
                code, body = 200, BODY
            else:
                code, body = 404, b'{"error":"not found"}'
            with lock:
                log.write(f"{arrived:.6f} {code} {self.path}\n")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    server = Server(("127.0.0.1", 0), Handler)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, port_file)  # the harness never reads a half-written port
    server.serve_forever()


if __name__ == "__main__":
    main()
