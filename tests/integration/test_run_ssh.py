"""contextfs run / probe on the ssh runtime against a real OpenSSH server.

The server is Debian's sshd, started by the test as its own "host": a fresh
network namespace with only `lo` (ip netns), a throwaway host key, a client
key in authorized_keys and a known_hosts file. Inside that namespace sshd
also sees its own /etc/passwd (a bind mount in the namespace's private
mount table) giving root a scratch home, so the machine's own root dotfiles
are never read. contextfs runs in the same namespace.
"""

import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import EXIT_IO, EXIT_LOCKED  # noqa: F401
from test_run import LISTING, ctx, export, generation, local_listing, parse_listing, _alive_with  # noqa: F401

PORT = 2222


def _ns_run(ns, *argv, **kw):
    return subprocess.run(["ip", "netns", "exec", ns] + list(argv), **kw)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not shutil.which("sshd", path="/usr/sbin:/usr/bin") or not shutil.which("ip", path="/usr/sbin:/usr/bin"):
        pytest.fail("sshd (openssh-server) and ip (iproute2) are required: tools/setup-deps --test",
                    pytrace=False)
    d = str(tmp_path_factory.mktemp("sshd"))
    ns = "cfs-ssh-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        _ns_run(ns, "ip", "link", "set", "lo", "up", check=True)
        for name in ("host_key", "id"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(d, name)],
                           check=True)
        shutil.copy(os.path.join(d, "id.pub"), os.path.join(d, "authorized_keys"))
        with open(os.path.join(d, "host_key.pub")) as f:
            hostkey = f.read().strip()
        with open(os.path.join(d, "known_hosts"), "w") as f:
            f.write("[127.0.0.1]:%d %s\n" % (PORT, hostkey))
        open(os.path.join(d, "empty_known_hosts"), "w").close()
        home = os.path.join(d, "home")
        os.mkdir(home, 0o700)
        with open("/etc/passwd") as f:
            lines = f.read().splitlines()
        with open(os.path.join(d, "passwd"), "w") as f:
            for ln in lines:
                parts = ln.split(":")
                if parts[0] == "root":
                    parts[5] = home
                f.write(":".join(parts) + "\n")
        cfg = os.path.join(d, "sshd_config")
        with open(cfg, "w") as f:
            f.write("\n".join([
                "Port %d" % PORT, "ListenAddress 127.0.0.1",
                "HostKey %s/host_key" % d, "PidFile none",
                "AuthorizedKeysFile %s/authorized_keys" % d,
                "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
                "LogLevel ERROR", ""]))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(os.path.join(d, "sshd.log"), "wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sh", "-c",
             'mount --bind "$1/passwd" /etc/passwd && exec /usr/sbin/sshd -D -e -f "$1/sshd_config"',
             "sh", d], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            r = _ns_run(ns, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/%d" % PORT, capture_output=True)
            if r.returncode == 0:
                break
            assert proc.poll() is None, open(os.path.join(d, "sshd.log")).read()
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.05)
        # contextfs runs inside the namespace through a tiny wrapper
        wrapper = os.path.join(d, "contextfs-in-ns")
        with open(wrapper, "w") as f:
            f.write('#!/bin/sh\nexec ip netns exec %s "$CONTEXTFS_REAL_BIN" "$@"\n' % ns)
        os.chmod(wrapper, 0o755)
        yield {"dir": d, "ns": ns, "wrapper": wrapper}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", ns])


@pytest.fixture
def sshcli(cli, sshd, tmp_path):
    cli.env["CONTEXTFS_REAL_BIN"] = cli.binary
    cli.binary = sshd["wrapper"]
    remote = tmp_path / "remote"
    cli.ssh_args = ["--runtime", "ssh", "--ssh-host", "127.0.0.1", "--ssh-port", str(PORT),
                    "--ssh-key", os.path.join(sshd["dir"], "id"),
                    "--ssh-known-hosts", os.path.join(sshd["dir"], "known_hosts"),
                    "--ssh-dir", str(remote)]
    cli.remote = str(remote)
    return cli


def test_ssh_round_trip(sshcli, ctx, workdir):
    cli = sshcli
    name, src = ctx
    before = local_listing(src)
    script = LISTING + r"""
echo '--- after'
printf 'changed\n' >> workspace/keep.txt
rm workspace/gone.txt workspace/link
chmod 700 workspace/tool.sh
head -c 70000 /dev/urandom > workspace/new.bin
ln -s sub/deep/x.txt workspace/link2
mkdir -p workspace/node_modules/pkg
echo 'module.exports = 1' > workspace/node_modules/pkg/index.js
""" + LISTING
    r = cli.run("run", name, *cli.ssh_args, "--", "bash", "-c", script)
    assert r.rc == 0, r.err
    attached, after = r.out.split("--- after\n")
    assert parse_listing(attached) == before
    after = parse_listing(after)
    assert "workspace/node_modules/pkg/index.js" in after
    out = export(cli, name, os.path.join(workdir, "out-ssh"))
    assert local_listing(out) == {p: v for p, v in after.items() if "/node_modules" not in p}
    assert generation(cli, name) == 3
    # no plaintext bundle left on the host
    assert os.listdir(os.path.join(cli.remote, "tmp")) == []


def test_ssh_exit_255_is_the_commands(sshcli, ctx):
    cli = sshcli
    name, _ = ctx
    r = cli.run("run", name, *cli.ssh_args, "--", "sh", "-c", "echo o; echo e >&2; exit 255")
    assert (r.rc, r.out, r.err) == (255, "o\n", "e\n")
    assert generation(cli, name) == 3


def test_ssh_failures_are_errors(sshcli, ctx, sshd, store):
    cli = sshcli
    name, _ = ctx
    args = list(cli.ssh_args)
    # nothing listens there: ssh's own 255 is an I/O error, not a result
    bad_port = list(args)
    bad_port[bad_port.index(str(PORT))] = str(PORT + 1)
    r = cli.run("run", name, *bad_port, "--", "true")
    assert r.rc == EXIT_IO and "Connection refused" in r.err, r.err
    # an unknown host key is refused at once, never prompted for
    unknown = list(args)
    unknown[unknown.index(os.path.join(sshd["dir"], "known_hosts"))] = os.path.join(
        sshd["dir"], "empty_known_hosts")
    t0 = time.monotonic()
    r = cli.run("probe", *unknown, timeout=30)
    assert r.rc == EXIT_IO and "Host key verification failed" in r.err, r.err
    assert time.monotonic() - t0 < 10
    assert generation(cli, name) == 2
    assert not os.path.exists(os.path.join(store, "contexts", name, "lock.json"))


def test_ssh_timeout_kills_the_remote_command(sshcli, ctx):
    cli = sshcli
    name, _ = ctx
    marker = "986.%d" % (os.getpid() % 100000)
    t0 = time.monotonic()
    r = cli.run("run", name, *cli.ssh_args, "--timeout", "1s", "--",
                "bash", "-c", "sleep %s & sleep %s" % (marker, marker))
    assert r.rc == EXIT_IO and "timed out" in r.err, r.err
    assert time.monotonic() - t0 < 20
    # the "remote" host is this machine: its processes are visible here
    assert _alive_with("sleep\0" + marker) == []


def test_ssh_probe(sshcli):
    r = sshcli.json("probe", *sshcli.ssh_args)
    p = r.json["probe"]
    assert p["provider"] == "ssh" and p["runtimeId"] == "ssh:127.0.0.1"
    assert p["ok"] is True and p["missingTools"] == []


def test_ssh_sigterm_stops_the_remote_command_and_saves(sshcli, ctx, store):
    cli = sshcli
    name, _ = ctx
    marker = "989.%d" % (os.getpid() % 100000)
    a = subprocess.Popen([cli.binary, "run", name, *cli.ssh_args, "--",
                          "bash", "-c", "echo kept > workspace/sig.txt; sleep %s" % marker],
                         env=cli.env, cwd=cli.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _alive_with("sleep\0" + marker):
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.05)
        a.terminate()
        out, err = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 143, err
    assert _alive_with("sleep\0" + marker) == []
    assert cli.manifest(name)["latestVersion"]["message"] == "contextfs run SIGTERM save"
    assert not os.path.exists(os.path.join(store, "contexts", name, "lock.json"))


def test_ssh_control_master_with_a_long_tmpdir(sshcli, ctx, tmp_path):
    """A $TMPDIR too long for a unix socket path must not cost the control
    master (every call would pay a whole handshake): its directory falls
    back to /tmp."""
    cli = sshcli
    name, _ = ctx
    long_tmp = tmp_path / ("t" * 90)
    long_tmp.mkdir(mode=0o700)
    cli.env["TMPDIR"] = str(long_tmp)
    # the "remote" host is this machine: the control socket is visible here
    r = cli.run("run", name, *cli.ssh_args, "--", "sh", "-c",
                'for d in /tmp/contextfs-ssh-*; do [ -S "$d/cm" ] && echo mux; done; true')
    assert r.rc == 0, r.err
    assert "mux" in r.out.split()
    assert not [n for n in os.listdir(long_tmp) if n.startswith("contextfs-ssh-")]


def test_ssh_streamed_pack_failure_is_the_packers(sshcli, ctx):
    """The save streams the sandbox's packer into the local unpacker: a
    packer that fails is reported as such (not as a truncated bundle), and
    nothing is committed."""
    cli = sshcli
    name, _ = ctx
    r = cli.run("run", name, *cli.ssh_args, "--", "sh", "-c", 'rm -rf "$(pwd)"')
    assert r.rc != 0
    assert "pack context tree failed with exit code 1" in r.err, r.err
    assert "rejected" not in r.err
    assert generation(cli, name) == 2
