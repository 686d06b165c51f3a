// A complete HTTP server for graceexec, Go's standard library only (Go
// 1.19+, no module needed):
//
//	go build -o server examples/go/server.go
//	graceexec --listen 127.0.0.1:8080 --ready notify -- ./server
//	curl http://127.0.0.1:8080/            # pid=P
//	graceexec reload --name server
//
// It serves the sockets it inherits (LISTEN_FDS, from fd 3) and never binds
// one itself, says READY=1 on NOTIFY_SOCKET once it serves, and on SIGTERM
// stops accepting, answers every request it has, and exits 0.
// GET / answers "pid=P" ("pid=P release=R" with APP_RELEASE=R set);
// GET /slow?ms=N answers the same after N milliseconds.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

const listenFdsStart = 3

// A client that connects and sends nothing, or a keep-alive connection left
// idle, is closed after this long.
const idleTimeout = 10 * time.Second

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "server: "+format+"\n", args...)
	os.Exit(1)
}

// inheritedListeners returns the sockets of sd_listen_fds(3), or exits with
// the reason.
func inheritedListeners() []net.Listener {
	// A LISTEN_FDS meant for another process (our parent, when a wrapper
	// script forgot `exec`) names fds we do not own: refuse them.
	if pid := os.Getenv("LISTEN_PID"); pid != strconv.Itoa(os.Getpid()) {
		fail("LISTEN_PID=%s is not my pid %d: run me under graceexec, or `exec` me from a wrapper script", pid, os.Getpid())
	}
	count, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || count < 1 {
		fail("LISTEN_FDS=%q passes no socket", os.Getenv("LISTEN_FDS"))
	}
	// As sd_listen_fds(1) does: the processes we start must not take them.
	for _, key := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(key)
	}
	var listeners []net.Listener
	for fd := listenFdsStart; fd < listenFdsStart+count; fd++ {
		file := os.NewFile(uintptr(fd), fmt.Sprintf("LISTEN_FDS fd %d", fd))
		// A close-on-exec duplicate; the original is closed right after.
		ln, err := net.FileListener(file)
		if err != nil {
			fail("fd %d: %v", fd, err)
		}
		file.Close()
		listeners = append(listeners, ln)
	}
	return listeners
}

// notify is sd_notify(3): one datagram to NOTIFY_SOCKET, a path or
// "@abstract" (Go reads a leading '@' as the abstract namespace).
func notify(message string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(message))
	return err
}

func handle(w http.ResponseWriter, r *http.Request) {
	body := fmt.Sprintf("pid=%d", os.Getpid())
	if release := os.Getenv("APP_RELEASE"); release != "" {
		body += " release=" + release
	}
	switch r.URL.Path {
	case "/slow":
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil {
			http.Error(w, "usage: /slow?ms=N", http.StatusBadRequest)
			return
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
	case "/":
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintln(w, body)
}

func main() {
	listeners := inheritedListeners()
	srv := &http.Server{
		Handler:           http.HandlerFunc(handle),
		ReadHeaderTimeout: idleTimeout,
		IdleTimeout:       idleTimeout,
	}
	// Taken before anything is served, so that no SIGTERM is missed.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	served := make(chan error, len(listeners))
	for _, ln := range listeners {
		go func(ln net.Listener) { served <- srv.Serve(ln) }(ln)
	}
	if err := notify("READY=1"); err != nil {
		fmt.Fprintf(os.Stderr, "server: could not send READY=1: %v\n", err)
	}

	select {
	case <-stop:
	case err := <-served:
		fail("serving: %v", err)
	}
	// Shutdown closes the listeners (our duplicates: graceexec keeps the
	// socket), closes idle keep-alive connections, answers the requests
	// under way with "Connection: close", and returns once they are done.
	// A connection that has not sent its first request yet counts as idle
	// only after 5 s, so a request accepted just before the stop is served.
	if err := srv.Shutdown(context.Background()); err != nil {
		fail("shutdown: %v", err)
	}
	for range listeners {
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			fail("serving: %v", err)
		}
	}
	os.Exit(0)
}
