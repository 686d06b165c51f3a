#!/usr/bin/env python3
# A complete HTTP server for graceexec, Python's standard library only
# (tested with Python 3.11):
#
#   graceexec --listen 127.0.0.1:8080 --ready notify -- python3 examples/python/server.py
#   curl http://127.0.0.1:8080/            # pid=P
#   graceexec reload --name python3
#
# It serves the sockets it inherits (LISTEN_FDS, from fd 3) and never binds
# one itself, says READY=1 on NOTIFY_SOCKET once it accepts, and on SIGTERM
# stops accepting, answers every request it has, and exits 0.
# GET / answers "pid=P" ("pid=P release=R" with APP_RELEASE=R set);
# GET /slow?ms=N answers the same after N milliseconds.

import os
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LISTEN_FDS_START = 3
# A client that connects and sends nothing, or a keep-alive connection left
# idle, is closed after this long.
IDLE_TIMEOUT = 10.0


def inherited_sockets():
    """The listening sockets of sd_listen_fds(3), or exit with the reason."""
    # A LISTEN_FDS meant for another process (our parent, when a wrapper
    # script forgot `exec`) names fds we do not own: refuse them.
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit(f"server.py: LISTEN_PID={os.environ.get('LISTEN_PID')} is not my pid "
                 f"{os.getpid()}: run me under graceexec, or `exec` me from a wrapper script")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if count < 1:
        sys.exit("server.py: LISTEN_FDS passes no socket")
    # As sd_listen_fds(1) does: the processes we start must not take them.
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    socks = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)  # family and type are read from the fd
        if sock.type != socket.SOCK_STREAM:
            sys.exit(f"server.py: fd {fd} is not a stream socket")
        socks.append(sock)
    return socks


def notify(message):
    """sd_notify(3): one datagram to NOTIFY_SOCKET, a path or '@abstract'."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect
    timeout = IDLE_TIMEOUT

    def handle(self):
        # The first request is always read, even once the server drains: the
        # client connected before we stopped accepting and is owed an answer.
        self.close_connection = False
        self.handle_one_request()
        while not self.close_connection and self.next_request_comes():
            self.handle_one_request()

    def next_request_comes(self):
        """Waits on an idle keep-alive connection: False if the server
        starts draining (or the idle timeout passes) before a request does."""
        if self.buffered():
            return True
        poll = select.poll()
        poll.register(self.connection, select.POLLIN)
        poll.register(self.server.draining_fd, select.POLLIN)
        ready = dict(poll.poll(IDLE_TIMEOUT * 1000))
        # Both at once: the request came first as far as the client knows.
        return self.connection.fileno() in ready

    def buffered(self):
        """Whether bytes of the next request are here already (pipelined)."""
        self.connection.settimeout(0)
        try:
            return bool(self.rfile.peek(1))
        finally:
            self.connection.settimeout(self.timeout)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/slow":
            try:
                time.sleep(int(parse_qs(url.query)["ms"][0]) / 1000)
            except (KeyError, ValueError):
                return self.answer(400, "usage: /slow?ms=N\n")
        elif url.path != "/":
            return self.answer(404, "not found\n")
        release = os.environ.get("APP_RELEASE")
        self.answer(200, f"pid={os.getpid()}" + (f" release={release}" if release else "") + "\n")

    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.server.draining.is_set():
            self.send_header("Connection", "close")  # also ends the keep-alive loop
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        pass  # a line per request would flood graceexec's log

    def log_message(self, format, *args):
        # client_address is "" on a unix socket: no address_string().
        sys.stderr.write("server.py: " + (format % args) + "\n")


class Server(ThreadingHTTPServer):
    # server_close() joins the request threads: that is the drain.
    daemon_threads = False
    block_on_close = True

    def __init__(self, sock, draining, draining_fd):
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()  # the unbound socket TCPServer made; ours is bound and listening
        self.socket = sock
        self.draining = draining
        self.draining_fd = draining_fd


def main():
    socks = inherited_sockets()
    # SIGTERM and SIGINT are taken by sigwait() in the main thread; blocked
    # before any thread exists, so no thread is ever interrupted by them.
    # (A process started from here inherits the mask: unblock them in it.)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    draining = threading.Event()
    # Readable once draining: wakes every idle keep-alive connection at once.
    wake_r, wake_w = os.pipe()
    servers = [Server(sock, draining, wake_r) for sock in socks]
    # Daemon threads: should main() fail, the process ends (SIGTERM could
    # not end it, being blocked). A drain waits for them in shutdown().
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        notify("READY=1")
    except OSError as e:
        print(f"server.py: could not send READY=1: {e}", file=sys.stderr)

    signal.sigwait(stop_signals)
    draining.set()
    os.write(wake_w, b"x")
    for s in servers:
        s.shutdown()  # accepts nothing more; returns once serve_forever has
    for s in servers:
        s.server_close()  # waits for every request thread
    sys.exit(0)


if __name__ == "__main__":
    main()
