#!/usr/bin/env python3
"""Interop check of a dabs farm's job-execution HTTP API, with an independent client.

    python3 tests/interop/check_jobs.py http://127.0.0.1:OPERATOR_PORT [--token TOKEN] \
        [--wat2wasm PATH] [--spin] [--seed N]

Stdlib only (urllib, http.server, json, base64, threading, subprocess). Written from
/work/shared/spec/interop.md ("Jobs (R-JOB)") alone. The modules are tests/interop/jobs/*.wat,
assembled into a temporary directory with wabt's wat2wasm (Debian package wabt; --wat2wasm
names it when it is not on PATH). With --token, every request carries
`Authorization: Bearer TOKEN`.

    submit      POST /api/jobs {"module": square.wasm, "inputs": [u32 LE 0..19],
                "notify": URL of our HTTP server on 127.0.0.1} -> 202, JSON {"id",
                "status": "/api/jobs/ID", "result": "/api/jobs/ID/result",
                "events": "/api/jobs/ID/events"}
    early       right after, GET status -> {"id", "state", "tasks": 20, "done": 0..20}, then
                GET result -> 409 (only if that status was not "done") or 200
    events      GET the events URL at once -> text/event-stream, parsed as SSE (event:/data:
                lines, a blank line ends an event): 20 `task` events, then one `done` event
                whose data is the result path; nothing after it (watched for a moment); all
                within 60 s
    status      GET status -> {"id", "state": "done", "tasks": 20, "done": 20}
    result      GET result -> 200 {"id", "results": [{"task": i, "ok": B64}, ...]} in task
                order; ok decodes to 8 bytes, the u64 LE of i*i
    notify      within 30 s our server got exactly one POST whose JSON equals the result
                (same id, same results)
    not-wasm    POST with module bytes that are not wasm -> 400 {"error": non-empty text}
    bad-json    POST with a body that is not JSON -> 400
    trap        a job of trap.wasm with 2 inputs -> done; results [{"task": i, "err": text}]
    spin        (only with --spin) a job of spin.wasm, "fuel": 1000000, 1 input -> done within
                60 s; results [{"task": 0, "err": text}]

One line per check (ok/FAIL and details), then "jobs ok: N passed, 0 failed (...)" on success,
or "jobs check: N passed, M failed (seed S)"; exit status 1 on any failure. Every wait is
bounded. --seed (the test harness passes it) picks the not-wasm bytes and the notify path.
"""

import argparse
import base64
import http.client
import http.server
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
JOBS_DIR = os.path.join(HERE, "jobs")

SQUARE_TASKS = 20
TRAP_TASKS = 2
SPIN_FUEL = 1_000_000
HTTP_TIMEOUT = 10.0       # any single request/response
EVENTS_TIMEOUT = 60.0     # from opening the event stream to its `done` event
AFTER_DONE_WATCH = 1.0    # how long we watch the stream after `done` for anything more
NOTIFY_TIMEOUT = 30.0     # from the `done` event (or status done) to the notify POST
NOTIFY_EXTRA_WATCH = 1.0  # after the first notify POST, that no second one comes
DONE_TIMEOUT = 60.0       # polling a job's status until "done" (trap/spin, or without SSE)
POLL_INTERVAL = 0.1


class Mismatch(Exception):
    """What the farm answered is not what the spec says."""


def b64(data):
    return base64.b64encode(data).decode("ascii")


def unb64(text, what):
    if not isinstance(text, str):
        raise Mismatch(f"{what}: {text!r} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:
        raise Mismatch(f"{what}: {text!r} is not standard base64 ({e})") from None


def u32le(i):
    return i.to_bytes(4, "little")


# --- HTTP -----------------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def content_type(self):
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def json(self, what):
        ctype = self.content_type()
        if ctype != "application/json":
            raise Mismatch(f"{what}: Content-Type {self.headers.get('Content-Type')!r}, "
                           f"not application/json; body {self.body[:200]!r}")
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Mismatch(f"{what}: body is not JSON ({e}): {self.body[:200]!r}") from None

    def __repr__(self):
        return f"HTTP {self.status} {self.body[:300]!r}"


class Api:
    """The farm's operator port; absolute paths (as in the 202 answer) are joined to it."""

    def __init__(self, base, token):
        self.base = base.rstrip("/") + "/"
        self.token = token
        # No proxy: the farm (and our notify server) are local, whatever http_proxy says.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def url(self, path):
        return urllib.parse.urljoin(self.base, path)

    def request(self, method, path, body=None, content_type=None, accept=None):
        req = urllib.request.Request(self.url(path), data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if accept:
            req.add_header("Accept", accept)
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        return req

    def call(self, method, path, body=None, content_type=None):
        req = self.request(method, path, body, content_type, accept="application/json")
        try:
            with self.opener.open(req, timeout=HTTP_TIMEOUT) as r:
                return Response(r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            with e:
                return Response(e.code, e.headers, e.read())

    def post_json(self, path, obj):
        return self.call("POST", path, json.dumps(obj).encode("utf-8"), "application/json")

    def get(self, path):
        return self.call("GET", path)

    def open_stream(self, path):
        """(response, socket) for a GET of PATH, over http.client so that the socket can be
        shut down from another thread (raises Mismatch on a non-2xx status)."""
        u = urllib.parse.urlsplit(self.url(path))
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=EVENTS_TIMEOUT + 5)
        headers = {"Accept": "text/event-stream"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers)
        sock = conn.sock          # kept: getresponse may hand it over to the response
        r = conn.getresponse()
        if not 200 <= r.status < 300:
            body = r.read()
            conn.close()
            raise Mismatch(f"GET {path}: HTTP {r.status} {body[:300]!r}")
        return r, sock


# --- Server-sent events (the WHATWG "event stream interpretation") ---------------------------

def sse_lines(read):
    """Lines of an event stream: CRLF, LF or CR end a line; a last line without an end is
    dropped (as the spec says). READ returns the next bytes, b"" at the end."""
    buf = b""
    skip_lf = False          # a CR ended the previous chunk: an LF right after belongs to it
    first = True
    while True:
        chunk = read()
        if not chunk:
            return
        if skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        skip_lf = False
        buf += chunk
        while True:
            m = re.search(rb"\r\n|\r|\n", buf)
            if not m:
                break
            line = buf[:m.start()]
            if m.group() == b"\r" and m.end() == len(buf):
                skip_lf = True
            buf = buf[m.end():]
            text = line.decode("utf-8", errors="replace")
            if first:
                text = text.removeprefix("\ufeff")
                first = False
            yield text


def sse_events(lines, dropped):
    """(type, data) per dispatched event. An event whose data is empty is not dispatched (as an
    EventSource would not); its type is appended to DROPPED so a failure can say so."""
    etype, data = "", []
    for line in lines:
        if line == "":
            if data:
                yield (etype or "message", "\n".join(data))
            elif etype:
                dropped.append(etype)
            etype, data = "", []
            continue
        if line.startswith(":"):
            continue                                  # a comment (keep-alive)
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            etype = value
        elif field == "data":
            data.append(value)
        # "id", "retry" and unknown fields do not matter here.


class EventReader:
    """Reads an event stream in a thread, so that the waits on it are bounded exactly."""

    def __init__(self, response, sock):
        self.response = response
        self.sock = sock
        self.events = []        # (seconds since open, type, data)
        self.dropped = []
        self.ended = False      # the stream ended (closed by the server, or by close())
        self.aborted = False    # close() was called
        self.error = None
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            return self.response.read1(4096)
        except AttributeError:
            return self.response.read(1)

    def _run(self):
        try:
            for etype, data in sse_events(sse_lines(self._read), self.dropped):
                with self.cond:
                    self.events.append((time.monotonic() - self.t0, etype, data))
                    self.cond.notify_all()
        except Exception as e:  # noqa: BLE001  (closed under us, reset, ...: reported)
            with self.cond:
                self.error = f"{type(e).__name__}: {e}"
        with self.cond:
            self.ended = True
            self.cond.notify_all()
        try:
            self.response.close()
        except Exception:  # noqa: BLE001
            pass

    def wait(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def close(self):
        """Ends the stream at once: a shutdown (not a close, which would wait for the reading
        thread) makes the blocked read return; that thread then closes the response."""
        with self.cond:
            self.aborted = self.aborted or not self.ended
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(5)

    def summary(self):
        with self.cond:
            kinds = {}
            for _, t, _ in self.events:
                kinds[t] = kinds.get(t, 0) + 1
            s = f"events {kinds or 'none'}"
            if self.dropped:
                s += f"; events without data (never dispatched by an EventSource): {self.dropped}"
            if self.aborted:
                s += "; stream still open (closed by us)"
            elif self.ended:
                s += "; stream closed by the server"
            if self.error and not self.aborted:
                s += f"; read error {self.error}"
            if self.events:
                s += f"; last {self.events[-1][1:]!r}"
            return s


# --- The notify receiver --------------------------------------------------------------------

class NotifyServer:
    def __init__(self):
        self.posts = []          # (path, headers, body bytes)
        self.others = []         # requests that are not POSTs
        self.cond = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if not n and "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = self._read_chunked()
                with outer.cond:
                    outer.posts.append((self.path, dict(self.headers), body))
                    outer.cond.notify_all()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _read_chunked(self):
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()

            def _other(self):
                with outer.cond:
                    outer.others.append((self.command, self.path))
                self.send_response(405)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_DELETE = do_PATCH = _other  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_posts(self, path, count, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [p for p in self.posts if p[0] == path]
                left = deadline - time.monotonic()
                if len(got) >= count or left <= 0:
                    return got
                self.cond.wait(left)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# --- Checks of shapes -----------------------------------------------------------------------

def check_accepted(r, what):
    """A 202 answer to POST /api/jobs: its JSON, with the four fields as the spec gives them."""
    if r.status != 202:
        raise Mismatch(f"{what}: expected 202, got {r!r}")
    j = r.json(what)
    if not isinstance(j, dict):
        raise Mismatch(f"{what}: {j!r} is not an object")
    missing = [k for k in ("id", "status", "result", "events") if k not in j]
    if missing:
        raise Mismatch(f"{what}: fields {missing} missing in {j!r}")
    jid = j["id"]
    if isinstance(jid, bool) or not isinstance(jid, (str, int)) or jid == "":
        raise Mismatch(f"{what}: id {jid!r} is not a non-empty string or an integer")
    want = {"status": f"/api/jobs/{jid}", "result": f"/api/jobs/{jid}/result",
            "events": f"/api/jobs/{jid}/events"}
    wrong = {k: (j[k], v) for k, v in want.items() if j[k] != v}
    if wrong:
        raise Mismatch(f"{what}: paths (got, expected) {wrong}")
    return j


def check_status(r, job, tasks, what):
    if r.status != 200:
        raise Mismatch(f"{what}: GET {job['status']}: expected 200, got {r!r}")
    s = r.json(what)
    if not isinstance(s, dict):
        raise Mismatch(f"{what}: {s!r} is not an object")
    for k in ("id", "state", "tasks", "done"):
        if k not in s:
            raise Mismatch(f"{what}: field {k!r} missing in {s!r}")
    if s["id"] != job["id"]:
        raise Mismatch(f"{what}: id {s['id']!r}, the job is {job['id']!r}")
    if s["state"] not in ("queued", "running", "done"):
        raise Mismatch(f"{what}: state {s['state']!r} is not queued|running|done")
    if s["tasks"] != tasks or isinstance(s["tasks"], bool):
        raise Mismatch(f"{what}: tasks {s['tasks']!r}, expected {tasks}")
    done = s["done"]
    if not isinstance(done, int) or isinstance(done, bool) or not 0 <= done <= tasks:
        raise Mismatch(f"{what}: done {done!r} is not in 0..{tasks}")
    if s["state"] == "done" and done != tasks:
        raise Mismatch(f"{what}: state done with done {done} of {tasks} tasks")
    return s


def check_result_shape(res, job, tasks, what):
    """{"id", "results": [{"task": i, "ok": B64} | {"task": i, "err": text}]} in task order."""
    if not isinstance(res, dict) or "results" not in res or "id" not in res:
        raise Mismatch(f"{what}: {str(res)[:300]} is not {{'id', 'results'}}")
    if res["id"] != job["id"]:
        raise Mismatch(f"{what}: id {res['id']!r}, the job is {job['id']!r}")
    results = res["results"]
    if not isinstance(results, list) or len(results) != tasks:
        raise Mismatch(f"{what}: results is not a list of {tasks}: {str(results)[:300]}")
    for i, e in enumerate(results):
        if not isinstance(e, dict) or e.get("task") != i or isinstance(e.get("task"), bool):
            raise Mismatch(f"{what}: results[{i}] is {e!r}, expected task {i} (task order)")
        if ("ok" in e) == ("err" in e) or set(e) - {"task", "ok", "err"}:
            raise Mismatch(f"{what}: results[{i}] is {e!r}: task and exactly one of ok/err")
    return results


def check_square_results(results, what):
    for i, e in enumerate(results):
        if "ok" not in e:
            raise Mismatch(f"{what}: task {i} failed: {e!r}")
        out = unb64(e["ok"], f"{what}: task {i} ok")
        want = (i * i).to_bytes(8, "little")
        if out != want:
            raise Mismatch(f"{what}: task {i}: output {out.hex()}, expected {want.hex()} ({i}*{i})")


def check_error_results(results, what):
    for i, e in enumerate(results):
        if "err" not in e:
            raise Mismatch(f"{what}: task {i} did not fail: {e!r}")
        if not isinstance(e["err"], str) or not e["err"].strip():
            raise Mismatch(f"{what}: task {i}: err {e['err']!r} is not a non-empty text")


def check_error_body(r, what):
    j = r.json(what)
    if not isinstance(j, dict) or not isinstance(j.get("error"), str) or not j["error"].strip():
        raise Mismatch(f"{what}: body {j!r} is not {{'error': non-empty text}}")
    return j["error"]


# --- Main -----------------------------------------------------------------------------------

def assemble(wat2wasm, tmp, name):
    src = os.path.join(JOBS_DIR, f"{name}.wat")
    out = os.path.join(tmp, f"{name}.wasm")
    try:
        p = subprocess.run([wat2wasm, src, "-o", out], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"check_jobs: cannot run {wat2wasm} (Debian package wabt): {e}") from None
    if p.returncode != 0:
        raise SystemExit(f"check_jobs: {wat2wasm} {src} failed ({p.returncode}):\n{p.stderr}")
    with open(out, "rb") as f:
        return f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("operator_url", metavar="OPERATOR_URL",
                    help="a node's operator port, e.g. http://127.0.0.1:8080")
    ap.add_argument("--token", default=None, help="sent as Authorization: Bearer TOKEN")
    ap.add_argument("--wat2wasm", default=None, help="wabt's wat2wasm (default: from PATH)")
    ap.add_argument("--spin", action="store_true",
                    help="also check that an endless task ends as an error (out of fuel)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    wat2wasm = args.wat2wasm or shutil.which("wat2wasm")
    if not wat2wasm:
        print("check_jobs: wat2wasm not found (Debian package wabt, or --wat2wasm PATH)")
        return 1

    with tempfile.TemporaryDirectory(prefix="dabs-check-jobs-") as tmp:
        modules = {n: assemble(wat2wasm, tmp, n) for n in ("square", "trap", "spin")}

    api = Api(args.operator_url, args.token)
    notify = NotifyServer()
    notify_path = f"/notify/{rng.getrandbits(64):016x}"

    passed = failed = 0
    facts = []
    state = {}

    def check(name, fn, needs=()):
        nonlocal passed, failed
        missing = [n for n in needs if n not in state]
        if missing:
            print(f"FAIL  {name}: not run (no {' or '.join(missing)}: an earlier check failed)")
            failed += 1
            return
        try:
            detail = fn()
            print(f"ok    {name}" + (f": {detail}" if detail else ""))
            passed += 1
        except Mismatch as e:
            print(f"FAIL  {name}: {e}")
            failed += 1
        except Exception as e:  # noqa: BLE001  (a check's failure, whatever it is, is reported)
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
            failed += 1

    def wait_done(job, tasks, what):
        deadline = time.monotonic() + DONE_TIMEOUT
        last = None
        while True:
            last = check_status(api.get(job["status"]), job, tasks, what)
            if last["state"] == "done":
                return last
            if time.monotonic() > deadline:
                raise Mismatch(f"{what}: not done after {DONE_TIMEOUT:.0f} s; last status {last}")
            time.sleep(POLL_INTERVAL)

    # -- the square job
    def submit():
        body = {"module": b64(modules["square"]),
                "inputs": [b64(u32le(i)) for i in range(SQUARE_TASKS)],
                "notify": notify.url(notify_path)}
        state["t_submit"] = time.monotonic()
        job = check_accepted(api.post_json("/api/jobs", body), "POST /api/jobs")
        state["job"] = job
        # The event stream is opened at once, before anything else is asked.
        try:
            state["reader"] = EventReader(*api.open_stream(job["events"]))
        except Exception as e:  # noqa: BLE001  (reported by the events check)
            state["events_error"] = f"{type(e).__name__}: {e}"
        return f"id {job['id']!r}, notify {notify.url(notify_path)}"

    def early():
        job = state["job"]
        s = check_status(api.get(job["status"]), job, SQUARE_TASKS, "early status")
        r = api.get(job["result"])
        if r.status == 409:
            if s["state"] == "done":
                raise Mismatch(f"GET {job['result']}: 409 although the status was already done")
            return f"state {s['state']} ({s['done']}/{s['tasks']}), result 409"
        if r.status != 200:
            raise Mismatch(f"GET {job['result']}: expected 409 (not done) or 200, got {r!r}")
        res = check_result_shape(r.json("early result"), job, SQUARE_TASKS, "early result")
        check_square_results(res, "early result")
        return f"state {s['state']} ({s['done']}/{s['tasks']}), result already 200"

    def events():
        job = state["job"]
        if "events_error" in state:
            raise Mismatch(f"GET {job['events']}: {state['events_error']}")
        rd = state["reader"]
        ctype = rd.response.headers.get("Content-Type") or ""
        if ctype.split(";")[0].strip().lower() != "text/event-stream":
            rd.close()
            raise Mismatch(f"GET {job['events']}: Content-Type {ctype!r}, not text/event-stream")
        has_done = lambda: any(t == "done" for _, t, _ in rd.events)  # noqa: E731
        if not rd.wait(lambda: has_done() or rd.ended, EVENTS_TIMEOUT):
            rd.close()
            raise Mismatch(f"GET {job['events']}: no `done` event within {EVENTS_TIMEOUT:.0f} s "
                           f"({rd.summary()})")
        if not has_done():
            raise Mismatch(f"GET {job['events']}: the stream ended without a `done` event "
                           f"({rd.summary()})")
        state["t_done"] = time.monotonic()
        # `done` is the final event: watch the stream a moment for anything after it.
        rd.wait(lambda: rd.ended, AFTER_DONE_WATCH)
        rd.close()
        with rd.cond:
            evs = list(rd.events)
        types = [t for _, t, _ in evs]
        i_done = types.index("done")
        after = evs[i_done + 1:]
        if after:
            raise Mismatch(f"events after `done`: {[(t, d) for _, t, d in after]}")
        data = evs[i_done][2]
        if data != job["result"]:
            raise Mismatch(f"`done` data {data!r}, expected the result path {job['result']!r}")
        ntask = types.count("task")
        others = sorted(set(types) - {"task", "done"})
        if ntask != SQUARE_TASKS:
            raise Mismatch(f"{ntask} `task` events before `done`, expected {SQUARE_TASKS} "
                           f"(one per finished task) ({rd.summary()})")
        if rd.dropped:
            raise Mismatch(f"events without a data line (an EventSource never sees them): "
                           f"{rd.dropped}")
        state["events_ok"] = True
        facts.append(f"{ntask} task events")
        return (f"{ntask} task, 1 done ({data}) after {evs[i_done][0]:.2f} s"
                + (f"; other event types {others}" if others else ""))

    def status():
        job = state["job"]
        if "t_done" not in state:       # the stream failed: the rest is checked all the same
            s = wait_done(job, SQUARE_TASKS, "status")
            state["t_done"] = time.monotonic()
        else:
            s = check_status(api.get(job["status"]), job, SQUARE_TASKS, "status")
        if s["state"] != "done" or s["done"] != SQUARE_TASKS:
            raise Mismatch(f"after `done`: status {s}, expected state done, done {SQUARE_TASKS}")
        return f"{s}"

    def result():
        job = state["job"]
        r = api.get(job["result"])
        if r.status != 200:
            raise Mismatch(f"GET {job['result']} once done: expected 200, got {r!r}")
        res = r.json("result")
        results = check_result_shape(res, job, SQUARE_TASKS, "result")
        check_square_results(results, "result")
        state["result"] = res
        facts.append(f"{SQUARE_TASKS} squares")
        return f"{SQUARE_TASKS} outputs, i*i as u64 LE"

    def notified():
        job, res = state["job"], state["result"]
        left = NOTIFY_TIMEOUT - (time.monotonic() - state.get("t_done", time.monotonic()))
        posts = notify.wait_posts(notify_path, 1, max(left, 0.0))
        if not posts:
            with notify.cond:
                elsewhere = [(p, b[:200]) for p, _, b in notify.posts] + notify.others
            raise Mismatch(f"no POST to {notify.url(notify_path)} within {NOTIFY_TIMEOUT:.0f} s "
                           f"of done" + (f" (other requests: {elsewhere})" if elsewhere else ""))
        posts = notify.wait_posts(notify_path, 2, NOTIFY_EXTRA_WATCH)
        if len(posts) != 1:
            raise Mismatch(f"{len(posts)} POSTs to the notify URL, expected one")
        _, headers, body = posts[0]
        try:
            j = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Mismatch(f"notify body is not JSON ({e}): {body[:200]!r}") from None
        if not isinstance(j, dict) or j.get("id") != res["id"] or j.get("results") != res["results"]:
            raise Mismatch(f"notify JSON {str(j)[:300]} differs from the result {str(res)[:300]}")
        facts.append("notify")
        ctype = {k.lower(): v for k, v in headers.items()}.get("content-type")
        return f"one POST, same id and results (Content-Type {ctype!r})"

    check("submit", submit)
    check("early", early, needs=["job"])
    check("events", events, needs=["job"])
    check("status", status, needs=["job"])
    check("result", result, needs=["job"])
    check("notify", notified, needs=["job", "result"])

    # -- errors
    def not_wasm():
        junk = b"this is not a wasm module " + bytes(rng.getrandbits(8) for _ in range(16))
        r = api.post_json("/api/jobs", {"module": b64(junk), "inputs": [b64(u32le(3))]})
        if r.status != 400:
            raise Mismatch(f"POST /api/jobs with a module that is not wasm: expected 400, got {r!r}")
        return f"400 {check_error_body(r, 'not-wasm')!r}"

    def bad_json():
        body = b'{"module": "AGFzbQEAAAA=", "inputs": ["AAAAAA=="'   # cut short
        r = api.call("POST", "/api/jobs", body, "application/json")
        if r.status != 400:
            raise Mismatch(f"POST /api/jobs with a body that is not JSON: expected 400, got {r!r}")
        try:
            return f"400 {check_error_body(r, 'bad-json')!r}"
        except Mismatch as e:      # the spec fixes {"error"} for an unreadable module only
            return f"400 (note: {e})"

    def error_job(name, tasks, fuel, what):
        body = {"module": b64(modules[name]), "inputs": [b64(u32le(i)) for i in range(tasks)]}
        if fuel is not None:
            body["fuel"] = fuel
        job = check_accepted(api.post_json("/api/jobs", body), f"POST /api/jobs ({name})")
        wait_done(job, tasks, f"{what} status")
        r = api.get(job["result"])
        if r.status != 200:
            raise Mismatch(f"GET {job['result']} once done: expected 200, got {r!r}")
        results = check_result_shape(r.json(what), job, tasks, what)
        check_error_results(results, what)
        return f"{tasks} err, e.g. {results[0]['err'][:120]!r}"

    check("not-wasm", not_wasm)
    check("bad-json", bad_json)
    check("trap", lambda: error_job("trap", TRAP_TASKS, None, "trap"))
    if args.spin:
        check("spin", lambda: error_job("spin", 1, SPIN_FUEL, "spin"))
    facts.append("not-wasm/bad-json 400, trap err" + (", spin err" if args.spin else ""))

    notify.close()
    if failed:
        print(f"jobs check: {passed} passed, {failed} failed (seed {seed})")
        return 1
    print(f"jobs ok: {passed} passed, 0 failed ({', '.join(facts)}; seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
