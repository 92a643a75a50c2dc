/*
 * The SSH runtime adapter: a host reached with the OpenSSH client.
 *
 * Unlike the reference's adapter (../shared/notes/sandbox-apis.md §4):
 *   - ssh never prompts: BatchMode, a ConnectTimeout, ServerAliveInterval
 *     and verified host keys (StrictHostKeyChecking=yes against a known
 *     hosts file, or accept-new when asked);
 *   - ssh's own failure (exit 255) is told apart from a command that
 *     exits 255: the remote wrapper reports the command's status in a
 *     trailer line on stderr tagged with a per-call nonce; no trailer
 *     means the connection failed (CFS_EIO);
 *   - a timeout stops the remote command: the wrapper starts it in its own
 *     session and a remote watchdog kills that process group when the
 *     deadline passes; locally, ssh is killed a grace period later in case
 *     the connection hangs;
 *   - transfers stream through `cat` over the same connection options
 *     (binary safe, no scp/sftp subsystem needed), into a private temp
 *     file renamed into place;
 *   - one authenticated connection serves every call of a runtime: the
 *     first becomes an OpenSSH control master (ControlPersist, so it
 *     outlives that call for 60 s of idleness) whose socket lives in a
 *     private 0700 directory of ours; ssh_free() stops it. A call that
 *     cannot reach it connects on its own, and the kill of a remote
 *     command after a local stop always does (the master may be what
 *     hangs).
 * Sandbox paths live under a remote base directory (default
 * $HOME/.contextsdk): tmp/ (0700) and mnt/.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adapters/adapters.h"
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

#define SSH_BIN "/usr/bin/ssh"
#define MAX_ARGV 48
#define GRACE_MS 10000
#define TRAILER "__CONTEXTFS_EXIT_"
#define PIDTAG "__CONTEXTFS_PID_"

struct ssh_rt {
	struct cfs_runtime base;
	char *id;
	char *dest; /* [user@]host */
	char *port;
	char *identity;
	char *known_hosts;
	char *hostkey_opt; /* StrictHostKeyChecking=... */
	char *kh_opt; /* UserKnownHostsFile=... */
	char *ct_opt; /* ConnectTimeout=... */
	char *tmp_dir;
	char *mount_base;
	char *cm_dir; /* private 0700 dir of the control socket, or NULL */
	char *cm_opt; /* ControlPath=<cm_dir>/cm */
};

struct sink {
	struct cfs_buf buf;
	bool truncated;
	int fd; /* >= 0: write here instead of buffering */
};

static int ssh_argv(const char **argv, struct ssh_rt *s, const char *remote,
		    bool mux)
{
	int n = 0;

	argv[n++] = SSH_BIN;
	argv[n++] = "-T";
	argv[n++] = "-F";
	argv[n++] = "/dev/null";
	argv[n++] = "-o";
	argv[n++] = "BatchMode=yes";
	argv[n++] = "-o";
	argv[n++] = s->ct_opt;
	argv[n++] = "-o";
	argv[n++] = "ServerAliveInterval=15";
	argv[n++] = "-o";
	argv[n++] = "ServerAliveCountMax=3";
	argv[n++] = "-o";
	argv[n++] = s->hostkey_opt;
	argv[n++] = "-o";
	argv[n++] = s->kh_opt;
	argv[n++] = "-o";
	argv[n++] = "LogLevel=ERROR";
	argv[n++] = "-o";
	if (mux && s->cm_opt) {
		argv[n++] = "ControlMaster=auto";
		argv[n++] = "-o";
		argv[n++] = s->cm_opt;
		argv[n++] = "-o";
		argv[n++] = "ControlPersist=60";
	} else {
		argv[n++] = "ControlPath=none";
	}
	if (s->port) {
		argv[n++] = "-p";
		argv[n++] = s->port;
	}
	if (s->identity) {
		argv[n++] = "-i";
		argv[n++] = s->identity;
		argv[n++] = "-o";
		argv[n++] = "IdentitiesOnly=yes";
	}
	argv[n++] = "--";
	argv[n++] = s->dest;
	argv[n++] = remote;
	argv[n] = NULL;
	return n;
}

static int sink_drain(int fd, struct sink *k)
{
	char chunk[65536];
	ssize_t n = read(fd, chunk, sizeof(chunk));

	if (n == 0)
		return 1;
	if (n < 0)
		return errno == EINTR || errno == EAGAIN
			       ? 0
			       : cfs_error_errno(errno, "reading from ssh");
	if (k->fd >= 0)
		return cfs_write_all(k->fd, chunk, (size_t)n)
			       ? cfs_error_errno(errno, "writing download")
			       : 0;
	if (k->buf.len + (size_t)n > CFS_RUNTIME_OUTPUT_MAX) {
		k->truncated = true;
		n = (ssize_t)(CFS_RUNTIME_OUTPUT_MAX - k->buf.len);
	}
	return n ? cfs_buf_put(&k->buf, chunk, (size_t)n) : 0;
}

/*
 * Runs ssh with remote as the command line; stdin from in_fd (or
 * /dev/null), stdout into out, stderr into err. *status gets ssh's exit
 * status (-1 if killed at the deadline).
 */
static int ssh_spawn(int *status, struct ssh_rt *s, const char *remote,
		     bool mux, int in_fd, struct sink *out, struct sink *err,
		     int64_t deadline_ms, volatile sig_atomic_t *cancel)
{
	const char *argv[MAX_ARGV];
	int op[2] = {-1, -1}, ep[2] = {-1, -1}, rc = 0, ws = 0;
	bool killed = false, canceled = false;
	pid_t pid;

	ssh_argv(argv, s, remote, mux);
	if (pipe2(op, O_CLOEXEC) || pipe2(ep, O_CLOEXEC)) {
		rc = cfs_error_errno(errno, "pipe");
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		rc = cfs_error_errno(errno, "fork");
		goto out;
	}
	if (pid == 0) {
		int in = in_fd >= 0 ? in_fd : open("/dev/null", O_RDONLY);

		setsid();
		if (in < 0 || dup2(in, 0) < 0 || dup2(op[1], 1) < 0 ||
		    dup2(ep[1], 2) < 0)
			_exit(255);
		closefrom(3);
		execv(SSH_BIN, (char *const *)argv);
		dprintf(2, "cannot execute %s: %s\n", SSH_BIN, strerror(errno));
		_exit(255);
	}
	close(op[1]);
	close(ep[1]);
	op[1] = ep[1] = -1;
	while (op[0] >= 0 || ep[0] >= 0) {
		struct pollfd pfd[2];
		struct sink *dst[2];
		int *fdp[2], n = 0, wait_ms = -1, pr;

		if (op[0] >= 0) {
			pfd[n] = (struct pollfd){op[0], POLLIN, 0};
			dst[n] = out;
			fdp[n++] = &op[0];
		}
		if (ep[0] >= 0) {
			pfd[n] = (struct pollfd){ep[0], POLLIN, 0};
			dst[n] = err;
			fdp[n++] = &ep[0];
		}
		if (deadline_ms) {
			int64_t left = deadline_ms - cfs_monotonic_ms();

			if (left <= 0) {
				killed = true;
				break;
			}
			wait_ms = left > INT_MAX ? INT_MAX : (int)left;
		}
		if (cancel) {
			if (*cancel) {
				canceled = true;
				break;
			}
			if (wait_ms < 0 || wait_ms > 200)
				wait_ms = 200;
		}
		pr = poll(pfd, (nfds_t)n, wait_ms);
		if (pr < 0 && errno != EINTR) {
			rc = cfs_error_errno(errno, "poll");
			break;
		}
		for (int i = 0; pr > 0 && i < n && !rc; i++) {
			int d;

			if (!pfd[i].revents)
				continue;
			d = sink_drain(*fdp[i], dst[i]);
			if (d < 0)
				rc = d;
			else if (d == 1) {
				close(*fdp[i]);
				*fdp[i] = -1;
			}
		}
		if (rc)
			break;
	}
	if (killed || canceled || rc)
		kill(-pid, SIGKILL);
	while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
		;
	kill(-pid, SIGKILL);
	if (canceled)
		*status = -2;
	else if (killed)
		*status = -1;
	else
		*status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 255;
out:
	for (int i = 0; i < 2; i++) {
		if (op[i] >= 0)
			close(op[i]);
		if (ep[i] >= 0)
			close(ep[i]);
	}
	return rc;
}

/*
 * The remote wrapper: runs script with bash in its own session (stdin
 * passed through with with_stdin, else /dev/null), a watchdog killing
 * that session after timeout_s (0 = none), then prints the trailer
 * "<TRAILER><nonce>=<status>[ timeout]" as the last stderr line.
 */
static int wrap(struct cfs_buf *b, const char *script, int64_t timeout_ms,
		const char *nonce, bool with_stdin)
{
	struct cfs_buf inner = CFS_BUF_INIT;
	int rc = cfs_buf_puts(&inner, "c=");

	rc = rc ? rc : cfs_shell_quote(&inner, script);
	rc = rc ? rc
		: cfs_buf_printf(
			  &inner,
			  "\nf=\"${TMPDIR:-/tmp}/.cfs-wd-%s\"\n"
			  "setsid bash -c \"$c\" %s & p=$!\n"
			  "printf '%s%s=%%d\\n' \"$p\" >&2\n"
			  "w=\nif [ %lld -gt 0 ]; then\n"
			  "  setsid bash -c \"sleep %lld.%03lld; echo t > '$f'; "
			  "kill -KILL -- -$p\" </dev/null >/dev/null 2>&1 & "
			  "w=$!\nfi\n"
			  "wait $p; r=$?\n"
			  "t=\nif [ -n \"$w\" ]; then kill -KILL $w 2>/dev/null; "
			  "kill -KILL -- -$w 2>/dev/null; wait $w 2>/dev/null; "
			  "t=$(cat \"$f\" 2>/dev/null); rm -f \"$f\"; fi\n"
			  "printf '\\n%s%s=%%d%%s\\n' \"$r\" "
			  "\"${t:+ timeout}\" >&2\n",
			  nonce, with_stdin ? "<&0" : "</dev/null", PIDTAG,
			  nonce, (long long)timeout_ms,
			  (long long)(timeout_ms / 1000),
			  (long long)(timeout_ms % 1000), TRAILER, nonce);
	rc = rc ? rc : cfs_buf_puts(b, "exec bash -c ");
	rc = rc ? rc : cfs_shell_quote(b, inner.ptr);
	cfs_buf_free(&inner);
	return rc;
}

/*
 * Finds and strips the trailer from err. Returns the status (0..255), or
 * -1 when there is none; *timed_out when the watchdog fired.
 */
static int take_trailer(struct cfs_buf *err, const char *nonce, bool *timed_out)
{
	char tag[64];
	char *p = NULL, *q;
	size_t tl;
	long v;

	*timed_out = false;
	if (!err->ptr)
		return -1;
	snprintf(tag, sizeof(tag), "\n%s%s=", TRAILER, nonce);
	tl = strlen(tag);
	for (q = err->ptr;
	     (q = memmem(q, err->len - (size_t)(q - err->ptr), tag, tl)); q++)
		p = q;
	if (!p)
		return -1;
	v = strtol(p + tl, &q, 10);
	if (q == p + tl || v < 0 || v > 255)
		return -1;
	*timed_out = strncmp(q, " timeout", 8) == 0;
	/* Drop the trailer and the newline the wrapper put before it. */
	err->len = (size_t)(p - err->ptr);
	err->ptr[err->len] = '\0';
	return (int)v;
}

/*
 * Finds and strips the wrapper's "<PIDTAG><nonce>=<pid>" line from err:
 * the remote session id of the command, or 0.
 */
static long take_pid(struct cfs_buf *err, const char *nonce)
{
	char tag[64], *p, *q, *end;
	long v;

	if (!err->ptr)
		return 0;
	snprintf(tag, sizeof(tag), "%s%s=", PIDTAG, nonce);
	p = memmem(err->ptr, err->len, tag, strlen(tag));
	if (!p)
		return 0;
	v = strtol(p + strlen(tag), &q, 10);
	end = memchr(q, '\n', err->len - (size_t)(q - err->ptr));
	end = end ? end + 1 : err->ptr + err->len;
	memmove(p, end, err->len - (size_t)(end - err->ptr) + 1);
	err->len -= (size_t)(end - p);
	return v > 1 ? v : 0;
}

/* Best effort: kills the remote command's session after a local stop. */
static void remote_kill(struct ssh_rt *s, long pid)
{
	struct sink out = {CFS_BUF_INIT, false, -1};
	struct sink err = {CFS_BUF_INIT, false, -1};
	char cmd[64];
	int status;

	if (pid <= 1)
		return;
	snprintf(cmd, sizeof(cmd), "kill -KILL -- -%ld", pid);
	ssh_spawn(&status, s, cmd, false, -1, &out, &err,
		  cfs_monotonic_ms() + GRACE_MS, NULL);
	cfs_buf_free(&out.buf);
	cfs_buf_free(&err.buf);
}

static int conn_error(struct ssh_rt *s, const struct sink *err,
		      const char *what)
{
	const char *m = err->buf.ptr ? err->buf.ptr : "";
	size_t n = err->buf.len;

	while (n && (m[n - 1] == '\n' || m[n - 1] == '\r'))
		n--;
	return cfs_error_set(CFS_EIO, "ssh %s %s failed: %.*s", what, s->dest,
			     (int)(n > 600 ? 600 : n), n ? m : "exit 255");
}

/*
 * run(); in_fd >= 0: the command's stdin; out_fd >= 0: its stdout goes
 * there, not to res.
 */
static int run_io(struct cfs_run_result *res, struct cfs_runtime *rt,
		  const char *command, const char *user, int64_t timeout_ms,
		  int in_fd, int out_fd)
{
	struct ssh_rt *s = (struct ssh_rt *)rt;
	struct sink out = {CFS_BUF_INIT, false, out_fd};
	struct sink err = {CFS_BUF_INIT, false, -1};
	struct cfs_buf remote = CFS_BUF_INIT;
	char nonce[17];
	bool timed_out;
	int rc, status, code;
	long rpid;

	memset(res, 0, sizeof(*res));
	if (user && *user && strcmp(user, "root") != 0)
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "the ssh runtime runs commands as its "
				     "login user only (asked for %s)",
				     user);
	cfs_random_hex(nonce, 8);
	rc = wrap(&remote, command, timeout_ms > 0 ? timeout_ms : 0, nonce,
		  in_fd >= 0);
	if (rc)
		goto out;
	rc = ssh_spawn(
		&status, s, remote.ptr, true, in_fd, &out, &err,
		timeout_ms > 0 ? cfs_monotonic_ms() + timeout_ms + GRACE_MS : 0,
		rt->cancel);
	if (rc)
		goto out;
	rpid = take_pid(&err.buf, nonce);
	code = take_trailer(&err.buf, nonce, &timed_out);
	if (status < 0)
		remote_kill(s, rpid);
	if (status == -2) {
		rc = cfs_error_set(CFS_ECANCELED,
				   "command interrupted (killed on %s)",
				   s->dest);
		goto out;
	}
	if (status < 0 || timed_out) {
		rc = cfs_error_set(CFS_ETIMEDOUT,
				   "command timed out after %lld ms on %s "
				   "(killed)",
				   (long long)timeout_ms, s->dest);
		goto out;
	}
	if (code < 0) {
		rc = conn_error(s, &err, "to");
		goto out;
	}
	res->exit_code = code;
	res->truncated = out.truncated || err.truncated;
	res->out_len = out.buf.len;
	res->err_len = err.buf.len;
	res->out = cfs_buf_detach(&out.buf);
	res->err = cfs_buf_detach(&err.buf);
	if (!res->out || !res->err) {
		cfs_run_result_clear(res);
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
	}
out:
	cfs_buf_free(&remote);
	cfs_buf_free(&out.buf);
	cfs_buf_free(&err.buf);
	return rc;
}

static int ssh_run(struct cfs_run_result *res, struct cfs_runtime *rt,
		   const char *command, const char *user, int64_t timeout_ms)
{
	return run_io(res, rt, command, user, timeout_ms, -1, -1);
}

static int ssh_run_io(struct cfs_run_result *res, struct cfs_runtime *rt,
		      const char *command, int in_fd, int out_fd,
		      int64_t timeout_ms)
{
	return run_io(res, rt, command, NULL, timeout_ms, in_fd, out_fd);
}

/* Runs a transfer script; in_fd / out_fd carry the file's bytes. */
static int transfer(struct ssh_rt *s, const char *script, int in_fd, int out_fd,
		    const char *what)
{
	struct sink out = {CFS_BUF_INIT, false, out_fd};
	struct sink err = {CFS_BUF_INIT, false, -1};
	struct cfs_buf remote = CFS_BUF_INIT;
	char nonce[17];
	bool timed_out;
	int rc, status, code;

	cfs_random_hex(nonce, 8);
	/* stdin must reach the script: no wrapper session here. */
	rc = cfs_buf_puts(&remote, "bash -c ");
	rc = rc ? rc : cfs_shell_quote(&remote, script);
	rc = rc ? rc
		: cfs_buf_printf(&remote, "; printf '\\n%s%s=%%d\\n' $? >&2",
				 TRAILER, nonce);
	if (rc)
		goto out;
	rc = ssh_spawn(&status, s, remote.ptr, true, in_fd, &out, &err,
		       cfs_monotonic_ms() + CFS_RUNTIME_DEFAULT_TIMEOUT_MS,
		       NULL);
	if (rc)
		goto out;
	code = take_trailer(&err.buf, nonce, &timed_out);
	if (status < 0) {
		rc = cfs_error_set(CFS_ETIMEDOUT, "ssh %s timed out", what);
	} else if (code < 0) {
		rc = conn_error(s, &err, what);
	} else if (code != 0) {
		size_t n = err.buf.len;

		while (n && err.buf.ptr[n - 1] == '\n')
			n--;
		rc = cfs_error_set(code == 3 ? CFS_ENOTFOUND : CFS_EIO,
				   "ssh %s failed (exit %d): %.*s", what, code,
				   (int)(n > 600 ? 600 : n),
				   err.buf.ptr ? err.buf.ptr : "");
	}
out:
	cfs_buf_free(&remote);
	cfs_buf_free(&out.buf);
	cfs_buf_free(&err.buf);
	return rc;
}

static int ssh_upload(struct cfs_runtime *rt, const char *local_path,
		      const char *remote_path)
{
	struct ssh_rt *s = (struct ssh_rt *)rt;
	struct cfs_buf b = CFS_BUF_INIT;
	int fd, rc;

	fd = open(local_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cfs_error_errno(errno, "opening %s", local_path);
	rc = cfs_buf_puts(&b, "set -e; umask 077; f=");
	rc = rc ? rc : cfs_shell_quote(&b, remote_path);
	rc = rc ? rc
		: cfs_buf_puts(&b,
			       "; mkdir -p -- \"$(dirname -- \"$f\")\"; "
			       "t=$(mktemp \"$f.XXXXXX\"); "
			       "if cat > \"$t\"; then mv -f -- \"$t\" \"$f\"; "
			       "else rm -f -- \"$t\"; exit 1; fi");
	if (!rc)
		rc = transfer(s, b.ptr, fd, -1, "upload to");
	cfs_buf_free(&b);
	close(fd);
	return rc;
}

static int ssh_download(struct cfs_runtime *rt, const char *remote_path,
			const char *local_path)
{
	struct ssh_rt *s = (struct ssh_rt *)rt;
	struct cfs_buf b = CFS_BUF_INIT;
	int fd, rc;

	fd = open(local_path,
		  O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || fchmod(fd, 0600) != 0) {
		rc = cfs_error_errno(errno, "creating %s", local_path);
		if (fd >= 0)
			close(fd);
		return rc;
	}
	rc = cfs_buf_puts(&b, "f=");
	rc = rc ? rc : cfs_shell_quote(&b, remote_path);
	rc = rc ? rc
		: cfs_buf_puts(&b, "; [ -f \"$f\" ] && [ ! -L \"$f\" ] || "
				   "{ echo \"$f: no such regular file\" >&2; "
				   "exit 3; }; exec cat -- \"$f\"");
	if (!rc)
		rc = transfer(s, b.ptr, -1, fd, "download from");
	cfs_buf_free(&b);
	if (close(fd) != 0 && !rc)
		rc = cfs_error_errno(errno, "writing %s", local_path);
	return rc;
}

/*
 * Stops the control master (ssh -O exit, bounded to a few seconds) and
 * removes its directory. Best effort: a master nobody stops exits after
 * ControlPersist's 60 s of idleness.
 */
static void mux_stop(struct ssh_rt *s)
{
	const char *argv[] = {SSH_BIN, "-F",   "/dev/null", "-o",    s->cm_opt,
			      "-O",    "exit", "--",	    s->dest, NULL};
	int64_t deadline = cfs_monotonic_ms() + 5000;
	pid_t pid;

	pid = fork();
	if (pid == 0) {
		int fd = open("/dev/null", O_RDWR);

		setsid();
		if (fd < 0 || dup2(fd, 0) < 0 || dup2(fd, 1) < 0 ||
		    dup2(fd, 2) < 0)
			_exit(255);
		closefrom(3);
		execv(SSH_BIN, (char *const *)argv);
		_exit(255);
	}
	while (pid > 0) {
		pid_t r = waitpid(pid, NULL, WNOHANG);

		if (r == pid || (r < 0 && errno != EINTR))
			break;
		if (cfs_monotonic_ms() > deadline) {
			kill(-pid, SIGKILL);
			while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
				;
			break;
		}
		usleep(10000);
	}
	cfs_rmtree_at(AT_FDCWD, s->cm_dir);
}

/*
 * The longest control socket directory: sun_path holds 108 bytes with its
 * NUL, and ssh binds "<ControlPath>.<16 random chars>" before renaming it
 * to <dir>/cm.
 */
#define CM_DIR_MAX (108 - 1 - (sizeof("/cm") - 1) - 17)

/* mkdtemp under base (NULL: $TMPDIR); false when none or too long. */
static bool mux_dir_in(struct ssh_rt *s, const char *base, const char *prefix)
{
	if (cfs_mkdtemp(&s->cm_dir, base, prefix) != 0) {
		cfs_error_clear();
		return false;
	}
	if (strlen(s->cm_dir) <= CM_DIR_MAX)
		return true;
	cfs_rmtree_at(AT_FDCWD, s->cm_dir);
	free(s->cm_dir);
	s->cm_dir = NULL;
	return false;
}

/*
 * A private directory for the control socket, under $TMPDIR or, when that
 * path is too long for a socket, /tmp; none = no multiplexing (every call
 * then pays a whole ssh handshake).
 */
static void mux_init(struct ssh_rt *s)
{
	char prefix[48];

	cfs_sweep_stale_tmpdirs(NULL, "contextfs-ssh-");
	snprintf(prefix, sizeof(prefix), "contextfs-ssh-%ld-", (long)getpid());
	if (!mux_dir_in(s, NULL, prefix)) {
		cfs_sweep_stale_tmpdirs("/tmp", "contextfs-ssh-");
		if (!mux_dir_in(s, "/tmp", prefix)) {
			cfs_log(CFS_LOG_DEBUG, "ssh: no private directory for "
					       "a control socket; connecting "
					       "for every call");
			return;
		}
	}
	s->cm_opt = cfs_asprintf("ControlPath=%s/cm", s->cm_dir);
	if (!s->cm_opt) {
		cfs_rmtree_at(AT_FDCWD, s->cm_dir);
		free(s->cm_dir);
		s->cm_dir = NULL;
	}
}

static void ssh_free(struct cfs_runtime *rt)
{
	struct ssh_rt *s = (struct ssh_rt *)rt;

	if (!s)
		return;
	if (s->cm_opt)
		mux_stop(s);
	free(s->cm_dir);
	free(s->cm_opt);
	free(s->id);
	free(s->dest);
	free(s->port);
	free(s->identity);
	free(s->known_hosts);
	free(s->hostkey_opt);
	free(s->kh_opt);
	free(s->ct_opt);
	free(s->tmp_dir);
	free(s->mount_base);
	free(s);
}

static const struct cfs_runtime_ops ssh_ops = {
	.version = CFS_RUNTIME_VERSION,
	.run = ssh_run,
	.upload = ssh_upload,
	.download = ssh_download,
	.free = ssh_free,
	.run_io = ssh_run_io,
};

static bool bad_word(const char *s)
{
	return !s || !*s || s[0] == '-' || strpbrk(s, " \t\r\n'\"\\;`$");
}

int cfs_ssh_runtime_new(struct cfs_runtime **out, const struct cfs_ssh_opts *o)
{
	struct ssh_rt *s;
	struct cfs_buf b = CFS_BUF_INIT;
	int rc;

	*out = NULL;
	if (!o || bad_word(o->host) || (o->user && bad_word(o->user)))
		return cfs_error_set(CFS_EINVAL,
				     "--ssh-host is required for --runtime ssh "
				     "(a host name, no spaces or quotes)");
	if (o->port && (o->port < 1 || o->port > 65535))
		return cfs_error_set(CFS_EINVAL, "invalid ssh port %d",
				     o->port);
	if (o->remote_dir &&
	    (o->remote_dir[0] != '/' || strchr(o->remote_dir, '\n')))
		return cfs_error_set(CFS_EINVAL,
				     "the ssh remote directory must be an "
				     "absolute path");
	s = cfs_calloc(1, sizeof(*s));
	if (!s)
		return CFS_ENOMEM;
	s->dest = o->user ? cfs_asprintf("%s@%s", o->user, o->host)
			  : cfs_strdup(o->host);
	s->id = cfs_asprintf("ssh:%s", s->dest ? s->dest : "");
	s->port = o->port ? cfs_asprintf("%d", o->port) : NULL;
	s->identity = o->identity_file ? cfs_strdup(o->identity_file) : NULL;
	s->hostkey_opt =
		cfs_asprintf("StrictHostKeyChecking=%s",
			     o->accept_new_host_key ? "accept-new" : "yes");
	if (o->known_hosts_file)
		s->kh_opt = cfs_asprintf("UserKnownHostsFile=%s",
					 o->known_hosts_file);
	else
		s->kh_opt = cfs_strdup("UserKnownHostsFile=~/.ssh/known_hosts");
	s->ct_opt = cfs_asprintf("ConnectTimeout=%d",
				 o->connect_timeout_s > 0 ? o->connect_timeout_s
							  : 10);
	if (!s->dest || !s->id || (o->port && !s->port) ||
	    (o->identity_file && !s->identity) || !s->hostkey_opt ||
	    !s->kh_opt || !s->ct_opt) {
		rc = CFS_ENOMEM;
		goto fail;
	}
	s->base.ops = &ssh_ops;
	s->base.id = s->id;
	s->base.provider = "ssh";
	s->base.caps.directory_bundle = true;

	/* Resolve and prepare the remote base directory (also proves the
	 * connection and the host key). */
	rc = cfs_buf_puts(&b, "set -e; umask 077; d=");
	if (!rc && o->remote_dir)
		rc = cfs_shell_quote(&b, o->remote_dir);
	else if (!rc)
		rc = cfs_buf_puts(&b, "\"$HOME/.contextsdk\"");
	rc = rc ? rc
		: cfs_buf_puts(&b,
			       "; mkdir -p -- \"$d/tmp\" \"$d/mnt\"; "
			       "chmod 700 -- \"$d/tmp\"; cd -- \"$d\"; pwd -P");
	if (rc)
		goto fail;
	mux_init(s);
	{
		char *what = cfs_asprintf("ssh %s", s->dest);

		rc = what ? cfs_runtime_prepare_dirs(&s->base, b.ptr, 60000,
						     what, &s->tmp_dir,
						     &s->mount_base)
			  : CFS_ENOMEM;
		free(what);
	}
	if (rc)
		goto fail;
	cfs_buf_free(&b);
	*out = &s->base;
	return 0;
fail:
	cfs_buf_free(&b);
	ssh_free(&s->base);
	return rc;
}
