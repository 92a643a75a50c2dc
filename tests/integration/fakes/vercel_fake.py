"""A local fake of the Vercel Sandbox REST API (v2: sandboxes and sessions).

Routes (../../../../shared/notes/sandbox-apis.md §2, shapes from the SDK's
zod validators): POST /v2|v3/sandboxes, GET /v2/sandboxes/sessions/{sid},
POST .../sessions/{sid}/cmd (wait:true -> NDJSON stream; else detached),
GET .../cmd/{id}[?wait=true], GET .../cmd/{id}/logs, POST .../cmd/{id}/kill,
POST .../fs/write (gzip'd tar, x-cwd), POST .../fs/read, POST .../fs/mkdir,
POST .../extend-timeout, POST .../stop. Bearer token and teamId checked (401
{"error": {code, message}}); a stopped session answers 410 sandbox_stopped,
an unknown one 404. Commands really run (fakecommon.Sandbox); a command's
`timeout` kills it with SIGKILL (exit 137); a stopped sandbox cuts open
streams. The official @vercel/sandbox SDK is run against this fake by
test_run_cloud.py so it answers only what the real client accepts.

Run standalone: python3 vercel_fake.py  (prints the URL and credentials)
"""

import gzip
import io
import json
import os
import queue
import secrets
import signal
import sys
import tarfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fakecommon import FakeBase, Handler, Sandbox, pump_output  # noqa: E402

TOKEN = "fake-vercel-token-" + "5" * 24
TEAM = "team_fake0001"
PROJECT = "prj_fake0001"


def now_ms():
    return int(time.time() * 1000)


class Cmd:
    def __init__(self, sb, session, req):
        self.id = "cmd_" + secrets.token_hex(10)
        self.sb = sb
        self.session = session
        self.req = req
        self.logs = []  # (stream, text)
        self.exit_code = None
        self.started = now_ms()
        self.duration = None
        self.done = threading.Event()
        self.cond = threading.Condition()
        cwd = req.get("cwd") or session["cwd"]
        self.cwd = cwd
        self.proc = sb.spawn([req["command"]] + list(req.get("args") or []), cwd=cwd,
                             env=req.get("env") or {})
        threading.Thread(target=self.pump, daemon=True).start()

    def pump(self):
        q = pump_output(self.proc)
        tmo = self.req.get("timeout")
        deadline = time.monotonic() + tmo / 1000 if tmo else None
        while True:
            if deadline and time.monotonic() >= deadline:
                self.sb.signal(self.proc.pid, signal.SIGKILL)
                deadline = None
            try:
                kind, data = q.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "eof":
                break
            with self.cond:
                self.logs.append((kind, data.decode("utf-8", errors="replace")))
                self.cond.notify_all()
        rc = self.proc.wait()
        with self.cond:
            self.exit_code = rc if rc >= 0 else 128 - rc
            self.duration = now_ms() - self.started
            self.cond.notify_all()
        self.done.set()

    def json(self, finished=False):
        d = {"id": self.id, "name": self.req["command"], "args": list(self.req.get("args") or []),
             "cwd": self.cwd, "sessionId": self.session["id"],
             "exitCode": self.exit_code if finished else None, "startedAt": self.started}
        if finished:
            d["durationMs"] = self.duration
        return d


class VercelHandler(Handler):
    def err(self, status, code, message):
        self.send_json(status, {"error": {"code": code, "message": message}})

    def auth(self):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if self.headers.get("Authorization") != "Bearer " + self.fake.token:
            self.err(401, "unauthorized", "The request is missing a valid authentication token.")
            return False
        if (q.get("teamId") or [None])[0] != self.fake.team:
            self.err(403, "forbidden", "Not authorized for this team.")
            return False
        return True

    def session(self, sid):
        """(sandbox, session) for a running session, or None after an error answer."""
        s = self.fake.sessions.get(sid)
        if not s:
            self.err(404, "not_found", "Session %s not found" % sid)
            return None
        sb = self.fake.sandboxes[sid]
        if not sb.alive or s["status"] != "running":
            self.err(410, "sandbox_stopped", "The sandbox session %s is stopped" % sid)
            return None
        return sb, s

    def route(self):
        self.record()
        url = urllib.parse.urlsplit(self.path)
        self.query = urllib.parse.parse_qs(url.query)
        return url.path.strip("/").split("/")

    def do_GET(self):
        parts = self.route()
        if not self.auth():
            return
        if parts[:3] == ["v2", "sandboxes", "sessions"] and len(parts) == 4:
            s = self.fake.sessions.get(parts[3])
            if not s:
                return self.err(404, "not_found", "Session not found")
            return self.send_json(200, {"session": s, "routes": []})
        if parts[:3] == ["v2", "sandboxes", "sessions"] and len(parts) >= 6 and parts[4] == "cmd":
            got = self.session(parts[3])
            if not got:
                return
            cmd = self.fake.cmds.get(parts[5])
            if not cmd:
                return self.err(404, "not_found", "Command not found")
            if len(parts) == 6:
                if (self.query.get("wait") or [""])[0] == "true":
                    cmd.done.wait()
                    return self.send_json(200, {"command": cmd.json(True)})
                return self.send_json(200, {"command": cmd.json(cmd.done.is_set())})
            if len(parts) == 7 and parts[6] == "logs":
                return self.stream_logs(cmd, header=False)
        self.err(404, "not_found", "No route")

    def stream_logs(self, cmd, header):
        self.start_chunked("application/x-ndjson")
        if header:
            self.chunk(json.dumps({"command": cmd.json()}).encode() + b"\n")
        sent = 0
        while True:
            with cmd.cond:
                while sent == len(cmd.logs) and cmd.exit_code is None and cmd.sb.alive:
                    cmd.cond.wait(0.1)
                new = cmd.logs[sent:]
                finished = cmd.exit_code is not None
            if not cmd.sb.alive:
                return self.cut()
            for stream, text in new:
                self.chunk(json.dumps({"stream": stream, "data": text}).encode() + b"\n")
            sent += len(new)
            if finished and sent == len(cmd.logs):
                break
        if header:
            self.chunk(json.dumps({"command": cmd.json(True)}).encode() + b"\n")
        self.end_chunked()

    def do_POST(self):
        parts = self.route()
        body = self.read_body()
        if not self.auth():
            return
        ctype = self.headers.get("Content-Type", "")
        req = {}
        if ctype.startswith("application/json") and body:
            try:
                req = json.loads(body)
            except ValueError:
                return self.err(400, "bad_request", "Invalid JSON body")
        if parts in (["v2", "sandboxes"], ["v3", "sandboxes"]):
            return self.create(req)
        if parts[:3] != ["v2", "sandboxes", "sessions"] or len(parts) < 5:
            return self.err(404, "not_found", "No route")
        sid, op = parts[3], parts[4:]
        got = self.session(sid)
        if not got:
            return
        sb, s = got
        if op == ["cmd"]:
            if not isinstance(req.get("command"), str):
                return self.err(400, "bad_request", "command is required")
            cmd = Cmd(sb, s, req)
            self.fake.cmds[cmd.id] = cmd
            self.fake.commands.append(req)
            if req.get("wait"):
                return self.stream_logs(cmd, header=True)
            return self.send_json(200, {"command": cmd.json()})
        if len(op) == 3 and op[0] == "cmd" and op[2] == "kill":
            cmd = self.fake.cmds.get(op[1])
            if not cmd:
                return self.err(404, "not_found", "Command not found")
            sb.signal(cmd.proc.pid, int(req.get("signal", 15)))
            self.fake.kills.append(req)
            return self.send_json(200, {"command": cmd.json()})
        if op == ["fs", "write"]:
            return self.fs_write(sb, body)
        if op == ["fs", "read"]:
            path = self.resolve(sb, s, req)
            if path is None:
                return
            if not os.path.isfile(path):
                return self.err(404, "file_not_found", "File not found")
            with open(path, "rb") as f:
                return self.send_bytes(200, f.read(), "application/octet-stream")
        if op == ["fs", "mkdir"]:
            path = self.resolve(sb, s, req)
            if path is None:
                return
            try:
                os.mkdir(path)
            except OSError as e:
                return self.err(400, "bad_request", "mkdir failed: %s" % e.strerror)
            return self.send_json(200, {})
        if op == ["extend-timeout"]:
            s["timeout"] += int(req.get("duration", 0))
            self.fake.extensions.append(req.get("duration"))
            return self.send_json(200, {"session": s})
        if op == ["stop"]:
            s["status"] = "stopped"
            s["stoppedAt"] = now_ms()
            sb.kill()
            self.fake.stopped.append(sid)
            return self.send_json(200, {"session": s})
        self.err(404, "not_found", "No route")

    def resolve(self, sb, s, req):
        p = req.get("path")
        if not isinstance(p, str) or not p:
            self.err(400, "bad_request", "path is required")
            return None
        full = sb.inside(os.path.join(req.get("cwd") or s["cwd"], p))
        if not full:
            self.err(400, "bad_request", "path outside the sandbox")
        return full

    def fs_write(self, sb, body):
        if self.headers.get("Content-Type") != "application/gzip":
            return self.err(400, "bad_request", "expected application/gzip")
        base = sb.inside(self.headers.get("x-cwd") or "/")
        xcwd = self.headers.get("x-cwd") or "/"
        try:
            tf = tarfile.open(fileobj=io.BytesIO(gzip.decompress(body)), mode="r:")
        except (OSError, tarfile.TarError, EOFError):
            return self.err(400, "bad_request", "body is not a gzip'd tar")
        for m in tf.getmembers():
            dest = sb.inside(os.path.join(xcwd, m.name))
            if not dest or (base is None and xcwd != "/"):
                return self.err(400, "bad_request", "entry %s outside the sandbox" % m.name)
            if m.isdir():
                os.makedirs(dest, exist_ok=True)
            elif m.isfile():
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(tf.extractfile(m).read())
                os.chmod(dest, m.mode & 0o7777)
            else:
                return self.err(400, "bad_request", "unsupported entry type")
        self.fake.writes += 1
        self.send_json(200, {})

    def create(self, req):
        if req.get("projectId") != self.fake.project:
            return self.err(403, "forbidden", "Project not found or not accessible")
        sid = "sbx_" + secrets.token_hex(10)
        sb = Sandbox(self.fake.base, sid)
        t = now_ms()
        timeout = int(req.get("timeout") or 300000)
        s = {"id": sid, "memory": 2048, "vcpus": 1, "region": "iad1",
             "runtime": req.get("runtime") or "node24", "timeout": timeout, "status": "running",
             "requestedAt": t, "startedAt": t, "createdAt": t, "updatedAt": t, "cwd": sb.home}
        name = req.get("name") or "sandbox-" + secrets.token_hex(4)
        box = {"name": name, "persistent": bool(req.get("persistent", False)), "region": "iad1",
               "vcpus": 1, "memory": 2048, "runtime": s["runtime"], "timeout": timeout,
               "createdAt": t, "updatedAt": t, "currentSessionId": sid, "status": "running",
               "cwd": sb.home, "tags": req.get("tags") or {}}
        self.fake.sandboxes[sid] = sb
        self.fake.sessions[sid] = s
        self.fake.created.append(req)
        self.send_json(200, {"sandbox": box, "session": s, "routes": []})


class VercelFake(FakeBase):
    def __init__(self, token=TOKEN, team=TEAM, project=PROJECT):
        super().__init__()
        self.token, self.team, self.project = token, team, project
        self.sessions, self.cmds = {}, {}
        self.created, self.commands, self.kills, self.stopped, self.extensions = [], [], [], [], []
        self.writes = 0
        self.url = self.serve(VercelHandler)

    def env(self, token=None):
        return {"VERCEL_TOKEN": token or self.token, "VERCEL_TEAM_ID": self.team,
                "VERCEL_PROJECT_ID": self.project, "VERCEL_SANDBOX_API_URL": self.url}


if __name__ == "__main__":
    fake = VercelFake()
    print(json.dumps(fake.env()), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
