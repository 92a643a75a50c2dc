"""A local fake of the E2B API (control plane) and of envd (in-sandbox daemon).

Two loopback listeners, as in ../../../../shared/notes/sandbox-apis.md §1.6:
  api   POST /v2/sandboxes (what SDK 2.51 calls) and POST /sandboxes (201), GET /sandboxes/{id}, POST /sandboxes/{id}/timeout
        (204), POST /sandboxes/{id}/connect, DELETE /sandboxes/{id} (204/404);
        X-API-Key checked (401 {code, message});
  envd  process.Process/Start (Connect server stream, JSON codec: 5-byte
        envelopes, {"event": {start|data|end|keepalive}}, end-stream {} or
        {"error": {code, message}}), process.Process/SendSignal (unary JSON),
        GET/POST /files (multipart field "file" or octet-stream), GET /health;
        X-Access-Token and E2b-Sandbox-Id checked; a dead sandbox answers 502.
Commands really run (fakecommon.Sandbox). Connect-Timeout-Ms kills the
command and ends the stream with deadline_exceeded. A killed sandbox cuts
its open streams. The official `e2b` npm SDK is run against this fake by
test_run_cloud.py so it answers only what the real client accepts.

Run standalone: python3 e2b_fake.py  (prints the two URLs and a key)
"""

import base64
import json
import os
import queue
import secrets
import signal
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fakecommon import FakeBase, Handler, Sandbox, pump_output  # noqa: E402

DEFAULT_KEY = "e2b_" + "0123456789abcdef0123456789abcdef01234567"


def envelope(obj, flags=0):
    data = json.dumps(obj).encode()
    return bytes([flags]) + len(data).to_bytes(4, "big") + data


class ApiHandler(Handler):
    def auth(self):
        if self.headers.get("X-API-Key") != self.fake.api_key:
            self.send_json(401, {"code": 401, "message": "Invalid API key, please visit "
                                 "https://e2b.dev/docs/api-key for more information."})
            return False
        return True

    def sandbox_json(self, sb, detail=False):
        d = {"sandboxID": sb.id, "templateID": sb.template, "clientID": "fakeclient",
             "envdVersion": self.fake.envd_version, "envdAccessToken": sb.token,
             "domain": None, "alias": sb.template}
        if detail:
            now = time.time()
            d.update({"startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sb.started)),
                      "endAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(now, sb.end_at))),
                      "cpuCount": 2, "memoryMB": 512, "diskSizeMB": 1024, "state": "running",
                      "metadata": sb.metadata})
        return d

    def find(self, sid):
        sb = self.fake.sandboxes.get(sid)
        if not sb or not sb.alive:
            self.send_json(404, {"code": 404, "message": "sandbox \"%s\" not found" % sid})
            return None
        return sb

    def do_POST(self):
        self.record()
        body = self.read_body()
        if not self.auth():
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return self.send_json(400, {"code": 400, "message": "request body is not JSON"})
        if parts in (["sandboxes"], ["v2", "sandboxes"]):
            if not isinstance(req.get("templateID"), str):
                return self.send_json(400, {"code": 400, "message": "templateID is required"})
            sid = "i" + secrets.token_hex(10)
            sb = Sandbox(self.fake.base, sid)
            sb.template = req["templateID"]
            # v1 creates a secure sandbox only when asked; v2 always does
            sb.token = secrets.token_hex(16) if req.get("secure") or parts[0] == "v2" else None
            sb.metadata = req.get("metadata") or {}
            sb.started = time.time()
            sb.end_at = time.time() + int(req.get("timeout", 15))
            self.fake.sandboxes[sid] = sb
            self.fake.created.append(req)
            return self.send_json(201, self.sandbox_json(sb))
        if len(parts) == 3 and parts[0] == "sandboxes" and parts[2] in ("timeout", "refreshes"):
            sb = self.find(parts[1])
            if sb:
                sb.end_at = time.time() + int(req.get("timeout", req.get("duration", 0)))
                self.fake.keepalives += 1
                self.send_json(204, None)
            return
        if parts[0] == "v2":
            parts = parts[1:]
        if len(parts) == 3 and parts[0] == "sandboxes" and parts[2] == "connect":
            sb = self.find(parts[1])
            if sb:
                self.send_json(200, self.sandbox_json(sb))
            return
        self.send_json(404, {"code": 404, "message": "no route"})

    def do_GET(self):
        self.record()
        if not self.auth():
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "sandboxes":
            sb = self.find(parts[1])
            if sb:
                self.send_json(200, self.sandbox_json(sb, detail=True))
            return
        self.send_json(404, {"code": 404, "message": "no route"})

    def do_DELETE(self):
        self.record()
        if not self.auth():
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "sandboxes":
            sb = self.find(parts[1])
            if sb:
                sb.kill()
                self.fake.deleted.append(sb.id)
                self.send_json(204, None)
            return
        self.send_json(404, {"code": 404, "message": "no route"})


class EnvdHandler(Handler):
    def sandbox(self, token_required=True):
        """The addressed live sandbox, or None after answering an error."""
        sid = self.headers.get("E2b-Sandbox-Id")
        sb = self.fake.sandboxes.get(sid) if sid else None
        if sb is None and not sid:
            self.send_json(400, {"code": 400, "message": "missing E2b-Sandbox-Id header"})
            return None
        if sb is None or not sb.alive:
            # what E2B's edge answers for a sandbox that no longer exists
            self.send_json(502, {"code": 502, "message": "The sandbox was not found: "
                                 "sandbox %s is not running anymore" % sid, "sandboxId": sid})
            return None
        if token_required and sb.token and self.headers.get("X-Access-Token") != sb.token:
            self.send_json(401, {"code": 401, "message": "unauthorized access, please check "
                                 "your access token"})
            return None
        return sb

    def user(self):
        a = self.headers.get("Authorization", "")
        if a.startswith("Basic "):
            return base64.b64decode(a[6:]).decode().split(":")[0]
        return None

    def do_GET(self):
        self.record()
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/health":
            return self.send_json(204, None)
        if url.path != "/files":
            return self.send_json(404, {"code": 404, "message": "not found"})
        sb = self.sandbox()
        if not sb:
            return
        q = urllib.parse.parse_qs(url.query)
        path = sb.inside((q.get("path") or [""])[0])
        if not path:
            return self.send_json(400, {"code": 400, "message": "path outside the sandbox"})
        if os.path.isdir(path):
            return self.send_json(400, {"code": 400, "message": "path is a directory"})
        if not os.path.isfile(path):
            return self.send_json(404, {"code": 404, "message": "file not found"})
        with open(path, "rb") as f:
            self.send_bytes(200, f.read(), "application/octet-stream")

    def do_POST(self):
        self.record()
        body = self.read_body()
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/files":
            return self.files_post(url, body)
        if url.path == "/process.Process/Start":
            return self.start(body)
        if url.path == "/process.Process/SendSignal":
            return self.send_signal(body)
        self.send_json(404, {"code": "unimplemented", "message": "no such procedure"})

    def files_post(self, url, body):
        sb = self.sandbox()
        if not sb:
            return
        q = urllib.parse.parse_qs(url.query)
        qpath = (q.get("path") or [None])[0]
        ctype = self.headers.get("Content-Type", "")
        files = []
        if ctype.startswith("multipart/form-data"):
            boundary = ctype.split("boundary=", 1)[1].strip().strip('"').encode()
            for part in body.split(b"--" + boundary)[1:]:
                if part.startswith(b"--"):
                    break
                head, _, data = part[2:].partition(b"\r\n\r\n")
                if data.endswith(b"\r\n"):
                    data = data[:-2]
                disp = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-disposition")]
                d = disp[0].decode() if disp else ""
                if 'name="file"' not in d:
                    return self.send_json(400, {"code": 400, "message": "expected field \"file\""})
                fname = d.split('filename="', 1)[1].split('"', 1)[0] if 'filename="' in d else None
                files.append((qpath or fname, data))
        elif ctype.startswith("application/octet-stream"):
            if self.fake.envd_version < "0.5.7":
                return self.send_json(400, {"code": 400, "message": "octet-stream needs envd 0.5.7"})
            files.append((qpath, body))
        else:
            return self.send_json(400, {"code": 400, "message": "unsupported content type"})
        out = []
        for p, data in files:
            dest = sb.inside(p) if p else None
            if not dest or os.path.isdir(dest):
                return self.send_json(400, {"code": 400, "message": "invalid path %r" % p})
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)
            out.append({"path": p, "name": os.path.basename(p), "type": "file"})
        self.send_json(200, out)

    def send_signal(self, body):
        sb = self.sandbox()
        if not sb:
            return
        req = json.loads(body or b"{}")
        pid = (req.get("process") or {}).get("pid")
        sig = {"SIGNAL_SIGKILL": signal.SIGKILL, "SIGNAL_SIGTERM": signal.SIGTERM}.get(req.get("signal"))
        if sig is None:
            return self.send_json(400, {"code": "invalid_argument", "message": "unknown signal"})
        if not sb.signal(pid, sig):
            return self.send_json(404, {"code": "not_found", "message": "process %s not found" % pid})
        self.fake.signals.append((pid, req.get("signal")))
        self.send_json(200, {})

    def start(self, body):
        if self.headers.get("Content-Type") != "application/connect+json":
            return self.send_json(415, {"code": "unknown", "message": "unsupported content type"})
        sb = self.sandbox()
        if not sb:
            return
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            return self.send_json(400, {"code": "invalid_argument", "message": "bad envelope"})
        req = json.loads(body[5:])
        proc = req.get("process") or {}
        if not isinstance(proc.get("cmd"), str):
            return self.send_json(400, {"code": "invalid_argument", "message": "process.cmd missing"})
        user = self.user() or "user"
        if user not in ("root", "user"):
            return self.send_json(401, {"code": 401, "message": "user %s not found" % user})
        tmo = int(self.headers.get("Connect-Timeout-Ms") or 0)
        ka = int(self.headers.get("Keepalive-Ping-Interval") or 90)
        cwd = proc.get("cwd")
        if cwd is not None and not sb.inside(cwd):
            return self.send_json(400, {"code": "invalid_argument", "message": "cwd outside sandbox"})
        p = sb.spawn([proc["cmd"]] + list(proc.get("args") or []), cwd=cwd, env=proc.get("envs"))
        self.fake.started.append({"request": req, "user": user, "timeout_ms": tmo})
        out = pump_output(p)
        self.start_chunked("application/connect+json")
        self.chunk(envelope({"event": {"start": {"pid": p.pid}}}))
        deadline = time.monotonic() + tmo / 1000 if tmo > 0 else None
        last = time.monotonic()
        while True:
            if not sb.alive:
                return self.cut()
            if deadline and time.monotonic() >= deadline:
                sb.signal(p.pid, signal.SIGKILL)
                p.wait()
                self.chunk(envelope({"error": {"code": "deadline_exceeded",
                                               "message": "context deadline exceeded"}}, 0x02))
                return self.end_chunked()
            try:
                kind, data = out.get(timeout=0.1)
            except queue.Empty:
                if time.monotonic() - last >= ka:
                    self.chunk(envelope({"event": {"keepalive": {}}}))
                    last = time.monotonic()
                continue
            if kind == "eof":
                break
            self.chunk(envelope({"event": {"data": {kind: base64.b64encode(data).decode()}}}))
            last = time.monotonic()
        while p.poll() is None:
            if not sb.alive:
                return self.cut()
            time.sleep(0.05)
        if not sb.alive:
            return self.cut()
        rc = p.returncode
        end = {"exited": True, "status": "exit status %d" % rc if rc >= 0 else "signal: killed"}
        if rc != 0:  # proto3 JSON: a zero exit code is omitted
            end["exitCode"] = rc if rc >= 0 else -1
        self.chunk(envelope({"event": {"end": end}}))
        self.chunk(envelope({}, 0x02))
        self.end_chunked()


class E2BFake(FakeBase):
    def __init__(self, api_key=DEFAULT_KEY, envd_version="0.4.0"):
        super().__init__()
        self.api_key = api_key
        self.envd_version = envd_version
        self.created, self.deleted, self.started, self.signals = [], [], [], []
        self.keepalives = 0
        self.api_url = self.serve(ApiHandler)
        self.envd_url = self.serve(EnvdHandler)

    def env(self, api_key=None):
        """The environment a client needs to use this fake."""
        return {"E2B_API_KEY": api_key or self.api_key, "E2B_API_URL": self.api_url,
                "E2B_SANDBOX_URL": self.envd_url, "E2B_DOMAIN": "fake.invalid"}


if __name__ == "__main__":
    fake = E2BFake()
    print(json.dumps(fake.env()), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
