"""Shared pieces of the sandbox API fakes (e2b_fake.py, vercel_fake.py).

A fake sandbox is a private temporary directory on this machine; commands
really run there with bash (cwd and HOME inside it), so sessions work end to
end. File paths in requests are paths on this machine and must lie inside
the sandbox's directory (anything else is refused, so a bug in a client
cannot write elsewhere). Requests are recorded (method, path with query,
header names) so tests can check that secrets never travel in a URL.
"""

import http.server
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time


class Sandbox:
    """A directory and the processes started in it."""

    def __init__(self, base, sid):
        self.id = sid
        self.root = os.path.realpath(tempfile.mkdtemp(prefix="sbx-%s-" % sid, dir=base))
        self.home = os.path.join(self.root, "home")
        os.makedirs(self.home, mode=0o755)
        self.alive = True
        self.procs = {}  # pid -> Popen
        self.lock = threading.Lock()

    def inside(self, path):
        """The real path of `path` when it lies inside the sandbox, else None."""
        if not isinstance(path, str) or not path.startswith("/"):
            return None
        real = os.path.realpath(path)
        return real if real == self.root or real.startswith(self.root + "/") else None

    def spawn(self, argv, cwd=None, env=None):
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.home,
             "LANG": "C.UTF-8", "USER": "root"}
        e.update(env or {})
        p = subprocess.Popen(argv, cwd=cwd or self.home, env=e, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        with self.lock:
            self.procs[p.pid] = p
        return p

    def signal(self, pid, sig):
        with self.lock:
            p = self.procs.get(pid)
        if not p:
            return False
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        return True

    def kill(self):
        """The sandbox dies: every process is killed, its directory goes."""
        self.alive = False
        with self.lock:
            procs = list(self.procs.values())
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def pump_output(proc):
    """A queue receiving ("stdout"|"stderr", bytes) chunks and finally ("eof", None)
    once both pipes are closed."""
    q = queue.Queue()
    left = [2]
    lock = threading.Lock()

    def reader(f, name):
        fd = f.fileno()
        while True:
            try:
                b = os.read(fd, 65536)
            except OSError:
                b = b""
            if not b:
                break
            q.put((name, b))
        with lock:
            left[0] -= 1
            if left[0] == 0:
                q.put(("eof", None))

    threading.Thread(target=reader, args=(proc.stdout, "stdout"), daemon=True).start()
    threading.Thread(target=reader, args=(proc.stderr, "stderr"), daemon=True).start()
    return q


class Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with chunked responses and request bodies of either framing."""

    protocol_version = "HTTP/1.1"
    fake = None  # set per server

    def log_message(self, fmt, *args):
        pass

    def record(self):
        self.fake.requests.append((self.command, self.path, sorted(k.lower() for k in self.headers.keys()),
                                   dict(self.headers)))

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline()
                n = int(line.split(b";")[0].strip(), 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send_json(self, status, obj, headers=None):
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_bytes(self, status, data, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def cut(self):
        """Drops the connection mid-response, as a dead sandbox's edge does."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeBase:
    """Owns the servers, the sandboxes and a scratch directory."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="cfs-fake-")
        self.sandboxes = {}
        self.requests = []
        self.servers = []
        self.lock = threading.Lock()

    def serve(self, handler_cls):
        cls = type(handler_cls.__name__, (handler_cls,), {"fake": self})
        srv = Server(("127.0.0.1", 0), cls)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.servers.append(srv)
        return "http://127.0.0.1:%d" % srv.server_address[1]

    def kill_all(self):
        for sb in list(self.sandboxes.values()):
            if sb.alive:
                sb.kill()

    def live(self):
        return [sb for sb in self.sandboxes.values() if sb.alive]

    def stop(self):
        self.kill_all()
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_until(pred, timeout=30, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False
