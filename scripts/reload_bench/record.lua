-- wrk script for scripts/reload-bench.sh (needs LuaJIT, which Debian's wrk uses).
--
--   wrk ... -s record.lua URL -- OUT_DIR STOP_AT
--
-- Each wrk thread writes OUT_DIR/thread-N.tsv, one line per event, with
-- CLOCK_MONOTONIC seconds (the clock of Python's time.monotonic()):
--   S <time> <id>                  a request was sent
--   R <time> <id> <status> <pid>   its answer arrived (pid from X-Pid)
-- The id travels in the query string and comes back in X-Req, so the
-- orchestrator can tell which requests never got an answer: wrk itself
-- counts neither a connection stuck in an accept queue nobody serves nor a
-- connection closed without an answer.
-- From STOP_AT (monotonic seconds) on, no new request is sent: the requests
-- in flight then get the rest of wrk's run to finish.
-- done() prints one "BENCH {...}" JSON line with wrk's own counters.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } reload_bench_timespec;
int clock_gettime(int clock_id, reload_bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("reload_bench_timespec")

local function now()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

function init(args)
   out = assert(io.open(string.format("%s/thread-%d.tsv", args[1], thread_id), "w"))
   -- Line buffered: every line is in the kernel as soon as it is written, so
   -- nothing is lost however wrk exits.
   out:setvbuf("line")
   stop_at = tonumber(args[2])
   seq = 0
   started = false
end

function delay()
   started = true
   if now() < stop_at then
      return 0
   end
   return 3600 * 1000
end

function request()
   -- wrk calls request() once before the threads start, to count the
   -- requests in it; that one is never sent. Real ones come after a delay().
   if not started then
      return wrk.format(nil, "/")
   end
   seq = seq + 1
   local id = thread_id .. "-" .. seq
   out:write(string.format("S\t%.6f\t%s\n", now(), id))
   return wrk.format(nil, "/?r=" .. id)
end

function response(status, headers, body)
   local t = now()
   local id = headers["X-Req"] or headers["x-req"] or "-"
   local pid = headers["X-Pid"] or headers["x-pid"] or "-"
   out:write(string.format("R\t%.6f\t%s\t%d\t%s\n", t, id, status, pid))
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
      '"write": %d, "status": %d, "timeout": %d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
