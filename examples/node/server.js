#!/usr/bin/env node
// A complete HTTP server for graceexec, Node's standard library only
// (tested with Node 20):
//
//   graceexec --listen 127.0.0.1:8080 --ready notify -- node examples/node/server.js
//   curl http://127.0.0.1:8080/            # pid=P
//   graceexec reload --name node
//
// It serves the sockets it inherits (LISTEN_FDS, from fd 3) and never binds
// one itself, says READY=1 on NOTIFY_SOCKET once it listens, and on SIGTERM
// stops accepting, answers every request it has, and exits 0.
// GET / answers "pid=P" ("pid=P release=R" with APP_RELEASE=R set);
// GET /slow?ms=N answers the same after N milliseconds.
"use strict";

const { spawnSync } = require("node:child_process");
const http = require("node:http");

const LISTEN_FDS_START = 3;
// A client that connects and sends nothing, or a keep-alive connection left
// idle, is closed after this long.
const IDLE_TIMEOUT_MS = 10_000;

function fail(message) {
  process.stderr.write(`server.js: ${message}\n`);
  process.exit(1);
}

// The listening fds of sd_listen_fds(3), or exit with the reason.
function inheritedFds() {
  // A LISTEN_FDS meant for another process (our parent, when a wrapper
  // script forgot `exec`) names fds we do not own: refuse them.
  if (process.env.LISTEN_PID !== String(process.pid)) {
    fail(
      `LISTEN_PID=${process.env.LISTEN_PID} is not my pid ${process.pid}: ` +
        "run me under graceexec, or `exec` me from a wrapper script",
    );
  }
  const count = Number.parseInt(process.env.LISTEN_FDS ?? "0", 10);
  if (!(count >= 1)) fail("LISTEN_FDS passes no socket");
  // As sd_listen_fds(1) does: the processes we start must not take them.
  // (Node makes the fds themselves close-on-exec at start-up.)
  for (const key of ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]) delete process.env[key];
  return Array.from({ length: count }, (_, i) => LISTEN_FDS_START + i);
}

// sd_notify(3). Node's standard library has no unix datagram socket, so
// a child sends the datagram: systemd-notify where there is one, else a
// Python one-liner. The child is in our process group, which graceexec
// accepts a notification from (so does systemd with NotifyAccess=all).
// --no-block: without it, systemd-notify (v246+) then waits up to 5 s on
// a BARRIER=1 exchange, and fails when the receiver does not take part.
function notify(message) {
  if (!process.env.NOTIFY_SOCKET) return;
  const python =
    "import os,socket,sys;a=os.environ['NOTIFY_SOCKET'];" +
    "a='\\0'+a[1:] if a[0]=='@' else a;" +
    "socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM).sendto(sys.argv[1].encode(),a)";
  const senders = [
    ["systemd-notify", ["--no-block", message]],
    ["python3", ["-c", python, message]],
  ];
  for (const [command, args] of senders) {
    const run = spawnSync(command, args, { stdio: ["ignore", "inherit", "inherit"] });
    if (run.status === 0) return;
  }
  process.stderr.write(`server.js: could not send ${message}: neither systemd-notify nor python3 did\n`);
}

let draining = false;
// Every open connection: how many answers it has had, and whether one is
// under way.
const connections = new Map();

function handle(req, res) {
  const conn = connections.get(req.socket);
  conn.busy = true;
  res.on("finish", () => {
    conn.busy = false;
    conn.served += 1;
    // An answer begun before the drain went without "Connection: close".
    if (draining) req.socket.end();
  });
  const url = new URL(req.url, "http://server");
  const release = process.env.APP_RELEASE;
  const body = `pid=${process.pid}${release ? ` release=${release}` : ""}\n`;
  const answer = (status, text) => {
    // Node then closes the connection once this response is sent.
    if (draining) res.setHeader("Connection", "close");
    res.writeHead(status, {
      "Content-Type": "text/plain",
      "Content-Length": Buffer.byteLength(text),
    });
    res.end(text);
  };
  if (url.pathname === "/slow") {
    const ms = Number.parseInt(url.searchParams.get("ms") ?? "", 10);
    if (Number.isNaN(ms)) return answer(400, "usage: /slow?ms=N\n");
    setTimeout(() => answer(200, body), ms);
  } else if (url.pathname === "/") {
    answer(200, body);
  } else {
    answer(404, "not found\n");
  }
}

function drain(servers) {
  if (draining) return;
  draining = true;
  let open = servers.length;
  for (const server of servers) {
    // Stops accepting, and calls back once every connection has closed.
    server.close(() => {
      open -= 1;
      if (open === 0) process.exit(0);
    });
  }
  // Idle keep-alive connections would keep us up until the client or the
  // keep-alive timeout closed them (Node 19+ closes them in close() too).
  // Those that have a request under way, or have not sent their first yet,
  // close after their next answer.
  for (const [socket, conn] of connections) {
    if (!conn.busy && conn.served > 0) socket.destroy();
  }
}

function main() {
  const fds = inheritedFds();
  const servers = fds.map(() => {
    const server = http.createServer(handle);
    server.keepAliveTimeout = IDLE_TIMEOUT_MS;
    server.headersTimeout = IDLE_TIMEOUT_MS;
    server.on("connection", (socket) => {
      connections.set(socket, { busy: false, served: 0 });
      socket.on("close", () => connections.delete(socket));
    });
    return server;
  });
  let listening = 0;
  servers.forEach((server, i) =>
    server.listen({ fd: fds[i] }, () => {
      listening += 1;
      if (listening === servers.length) notify("READY=1");
    }),
  );
  for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => drain(servers));
}

main();
