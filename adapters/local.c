/*
 * The local runtime adapter: a disposable sandbox on this machine.
 *
 * The sandbox is a private (0700) directory R. With bubblewrap, R is bound
 * as the sandbox's "/" (host /usr and a few /etc files read-only, its own
 * /proc, /dev, pid, ipc, uts and network namespaces), so the session's
 * absolute paths (/tmp/..., /mnt/contextsdk/<id>, /workspace) stay inside
 * R. Without bubblewrap, commands run with bash in R and the sandbox paths
 * are host paths under R.
 *
 * Transfers never follow a symlink: the sandbox may plant any link in R,
 * so upload/download walk the path from R's fd one component at a time
 * with O_NOFOLLOW.
 *
 * Commands run in their own session (setsid), so a timeout kills the whole
 * process group; under bubblewrap the pid namespace dies with it. Whether
 * the command exited at all (versus bubblewrap failing to set up) comes
 * from bubblewrap's --json-status-fd, so a setup failure is an error and
 * never mistaken for the command's exit status.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <dirent.h>

#include "adapters/adapters.h"
#include "core/error.h"
#include "core/util.h"

#define BWRAP "/usr/bin/bwrap"
#define BASH "/bin/bash"
#define PATH_ENV "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define STATUS_MAX 4096
#define MAX_ARGV 128

struct local_rt {
	struct cfs_runtime base;
	char *id;
	char *root; /* host path of R */
	int rootfd; /* O_DIRECTORY of R, -1 once disposed */
	bool bwrap;
	bool share_net;
	char *tmp_dir;
	char *mount_base;
	_Atomic pid_t child; /* process group of the running command, or 0 */
};

struct output {
	struct cfs_buf buf;
	bool truncated;
	int fd; /* >= 0: the bytes go here (run_io), not to buf */
};

/* ------------------------------------------------------------------ */
/* Running commands */

static int add_arg(const char **argv, int *argc, const char *a)
{
	if (*argc >= MAX_ARGV - 1)
		return cfs_error_set(CFS_ERROR, "too many sandbox arguments");
	argv[(*argc)++] = a;
	argv[*argc] = NULL;
	return 0;
}

/*
 * bwrap ... -- /bin/bash -c CMD. The binds are made on every run; R keeps
 * what earlier commands wrote (and the /bin, /lib... links made at
 * creation).
 */
static int bwrap_argv(const char **argv, int *argc, struct local_rt *l,
		      const char *status_fd, const char *command)
{
	static const char *const etc_files[] = {
		"/etc/alternatives",  "/etc/passwd",	  "/etc/group",
		"/etc/nsswitch.conf", "/etc/ld.so.cache", "/etc/localtime",
	};
	int rc = 0;
	size_t i;

	rc |= add_arg(argv, argc, BWRAP);
	rc |= add_arg(argv, argc, "--die-with-parent");
	rc |= add_arg(argv, argc, "--new-session");
	rc |= add_arg(argv, argc,
		      l->share_net ? "--unshare-pid" : "--unshare-all");
	rc |= add_arg(argv, argc, "--bind");
	rc |= add_arg(argv, argc, l->root);
	rc |= add_arg(argv, argc, "/");
	rc |= add_arg(argv, argc, "--ro-bind");
	rc |= add_arg(argv, argc, "/usr");
	rc |= add_arg(argv, argc, "/usr");
	for (i = 0; i < CFS_ARRAY_SIZE(etc_files); i++) {
		rc |= add_arg(argv, argc, "--ro-bind-try");
		rc |= add_arg(argv, argc, etc_files[i]);
		rc |= add_arg(argv, argc, etc_files[i]);
	}
	rc |= add_arg(argv, argc, "--proc");
	rc |= add_arg(argv, argc, "/proc");
	rc |= add_arg(argv, argc, "--dev");
	rc |= add_arg(argv, argc, "/dev");
	rc |= add_arg(argv, argc, "--clearenv");
	rc |= add_arg(argv, argc, "--setenv");
	rc |= add_arg(argv, argc, "PATH");
	rc |= add_arg(argv, argc, PATH_ENV);
	rc |= add_arg(argv, argc, "--setenv");
	rc |= add_arg(argv, argc, "HOME");
	rc |= add_arg(argv, argc, "/root");
	rc |= add_arg(argv, argc, "--setenv");
	rc |= add_arg(argv, argc, "TMPDIR");
	rc |= add_arg(argv, argc, "/tmp");
	rc |= add_arg(argv, argc, "--setenv");
	rc |= add_arg(argv, argc, "LANG");
	rc |= add_arg(argv, argc, "C.UTF-8");
	rc |= add_arg(argv, argc, "--chdir");
	rc |= add_arg(argv, argc, "/root");
	rc |= add_arg(argv, argc, "--json-status-fd");
	rc |= add_arg(argv, argc, status_fd);
	rc |= add_arg(argv, argc, "--");
	rc |= add_arg(argv, argc, BASH);
	rc |= add_arg(argv, argc, "-c");
	rc |= add_arg(argv, argc, command);
	return rc ? CFS_ERROR : 0;
}

/* Appends what fd has to o (up to the cap); 1 at EOF, 0, or an error. */
static int drain(int fd, struct output *o)
{
	char chunk[65536];
	ssize_t n = read(fd, chunk, sizeof(chunk));

	if (n == 0)
		return 1;
	if (n < 0)
		return errno == EINTR || errno == EAGAIN
			       ? 0
			       : cfs_error_errno(errno, "reading command "
							"output");
	if (o->fd >= 0)
		return cfs_write_all(o->fd, chunk, (size_t)n);
	if (o->buf.len + (size_t)n > CFS_RUNTIME_OUTPUT_MAX) {
		size_t keep = CFS_RUNTIME_OUTPUT_MAX - o->buf.len;

		o->truncated = true;
		n = (ssize_t)keep;
	}
	return n ? cfs_buf_put(&o->buf, chunk, (size_t)n) : 0;
}

/* The "exit-code" of bubblewrap's JSON status lines, or -1. */
static int status_exit_code(const char *text)
{
	const char *line = text;

	while (line && *line) {
		const char *nl = strchr(line, '\n');
		size_t n = nl ? (size_t)(nl - line) : strlen(line);
		cJSON *j = cJSON_ParseWithLength(line, n);
		const cJSON *code =
			cJSON_GetObjectItemCaseSensitive(j, "exit-code");
		int v = cJSON_IsNumber(code) ? code->valueint : -1;

		cJSON_Delete(j);
		if (v >= 0)
			return v > 255 ? 255 : v;
		line = nl ? nl + 1 : NULL;
	}
	return -1;
}

static void child_exec(struct local_rt *l, const char *const *argv, int infd,
		       int outfd, int errfd, int statusfd)
{
	int devnull =
		infd >= 0 ? infd : open("/dev/null", O_RDONLY | O_CLOEXEC);
	int keep = statusfd >= 0 ? 4 : 3;

	setsid();
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int s = 1; s < NSIG; s++)
		if (s != SIGKILL && s != SIGSTOP)
			signal(s, SIG_DFL);
	if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(outfd, 1) < 0 ||
	    dup2(errfd, 2) < 0 || (statusfd >= 0 && dup2(statusfd, 3) < 0))
		_exit(126);
	closefrom(keep);
	if (!l->bwrap) {
		static char *const env[] = {
			"PATH=" PATH_ENV,
			"LANG=C.UTF-8",
			NULL, /* HOME */
			NULL, /* TMPDIR */
			NULL,
		};
		char *envp[CFS_ARRAY_SIZE(env)];
		char home[PATH_MAX + 8], tmp[PATH_MAX + 8];

		memcpy(envp, env, sizeof(env));
		snprintf(home, sizeof(home), "HOME=%s/root", l->root);
		snprintf(tmp, sizeof(tmp), "TMPDIR=%s", l->tmp_dir);
		envp[2] = home;
		envp[3] = tmp;
		if (chdir(l->root) != 0)
			_exit(126);
		execve(argv[0], (char *const *)argv, envp);
	} else {
		static char *const envp[] = {"PATH=" PATH_ENV, NULL};

		execve(argv[0], (char *const *)argv, envp);
	}
	dprintf(2, "cannot execute %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

/*
 * A sandbox whose root directory was removed (a reaper, a crash, a test
 * simulating one) is dead: its commands fail instead of running in a
 * deleted directory.
 */
static bool root_gone(const struct local_rt *l)
{
	struct stat st;

	return l->rootfd >= 0 && fstat(l->rootfd, &st) == 0 && st.st_nlink == 0;
}

/* run(); in_fd >= 0: the command's stdin; out_fd >= 0: its stdout. */
static int run_io(struct cfs_run_result *res, struct cfs_runtime *rt,
		  const char *command, const char *user, int64_t timeout_ms,
		  int in_fd, int out_fd)
{
	struct local_rt *l = (struct local_rt *)rt;
	struct output out = {CFS_BUF_INIT, false, out_fd};
	struct output err = {CFS_BUF_INIT, false, -1};
	struct output status = {CFS_BUF_INIT, false, -1};
	int opipe[2] = {-1, -1}, epipe[2] = {-1, -1}, spipe[2] = {-1, -1};
	const char *argv[MAX_ARGV];
	int argc = 0, rc = 0, wstatus = 0;
	bool timed_out = false, canceled = false, reaped = false, gone = false;
	int64_t deadline = timeout_ms > 0 ? cfs_monotonic_ms() + timeout_ms : 0;
	pid_t pid = -1;

	memset(res, 0, sizeof(*res));
	if (l->rootfd < 0)
		return cfs_error_set(CFS_EIO, "sandbox %s was disposed", l->id);
	if (root_gone(l))
		return cfs_error_set(CFS_EIO,
				     "sandbox %s is gone (its root %s was "
				     "removed)",
				     l->id, l->root);
	if (user && *user && strcmp(user, "root") != 0)
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "the local runtime runs commands as root "
				     "only (asked for user %s)",
				     user);
	if (pipe2(opipe, O_CLOEXEC) || pipe2(epipe, O_CLOEXEC) ||
	    (l->bwrap && pipe2(spipe, O_CLOEXEC))) {
		rc = cfs_error_errno(errno, "pipe");
		goto out;
	}
	if (l->bwrap)
		rc = bwrap_argv(argv, &argc, l, "3", command);
	else
		rc = add_arg(argv, &argc, BASH) || add_arg(argv, &argc, "-c") ||
				     add_arg(argv, &argc, command)
			     ? CFS_ERROR
			     : 0;
	if (rc)
		goto out;

	pid = fork();
	if (pid < 0) {
		rc = cfs_error_errno(errno, "fork");
		goto out;
	}
	if (pid == 0)
		child_exec(l, argv, in_fd, opipe[1], epipe[1], spipe[1]);
	atomic_store(&l->child, pid);
	close(opipe[1]);
	close(epipe[1]);
	opipe[1] = epipe[1] = -1;
	if (spipe[1] >= 0) {
		close(spipe[1]);
		spipe[1] = -1;
	}

	for (;;) {
		struct pollfd pfd[3];
		struct output *dst[3];
		int n = 0, wait_ms = -1, pr;

		if (opipe[0] >= 0) {
			pfd[n] = (struct pollfd){opipe[0], POLLIN, 0};
			dst[n++] = &out;
		}
		if (epipe[0] >= 0) {
			pfd[n] = (struct pollfd){epipe[0], POLLIN, 0};
			dst[n++] = &err;
		}
		if (spipe[0] >= 0) {
			pfd[n] = (struct pollfd){spipe[0], POLLIN, 0};
			dst[n++] = &status;
		}
		if (n == 0)
			break;
		if (deadline) {
			int64_t left = deadline - cfs_monotonic_ms();

			if (left <= 0) {
				timed_out = true;
				break;
			}
			wait_ms = left > INT_MAX ? INT_MAX : (int)left;
		}
		if (rt->cancel) {
			if (*rt->cancel) {
				canceled = true;
				break;
			}
			if (wait_ms < 0 || wait_ms > 200)
				wait_ms = 200;
		}
		if (root_gone(l)) {
			gone = true;
			break;
		}
		if (wait_ms < 0 || wait_ms > 500)
			wait_ms = 500; /* to notice a removed root */
		pr = poll(pfd, (nfds_t)n, wait_ms);
		if (pr < 0 && errno != EINTR) {
			rc = cfs_error_errno(errno, "poll");
			break;
		}
		for (int i = 0; pr > 0 && i < n; i++) {
			int d;

			if (!pfd[i].revents)
				continue;
			d = drain(pfd[i].fd, dst[i]);
			if (d < 0) {
				rc = d;
				break;
			}
			if (d == 1) {
				int *fdp = dst[i] == &out   ? &opipe[0]
					   : dst[i] == &err ? &epipe[0]
							    : &spipe[0];

				close(*fdp);
				*fdp = -1;
			}
		}
		if (rc)
			break;
	}
	if (timed_out || canceled || gone || rc) {
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
	}
	while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
		;
	reaped = true;
	atomic_store(&l->child, 0);
	/* Stragglers of the group (plain mode) go too. */
	kill(-pid, SIGKILL);
	if (rc)
		goto out;
	if (canceled) {
		rc = cfs_error_set(CFS_ECANCELED,
				   "command interrupted (killed in sandbox %s)",
				   l->id);
		goto out;
	}
	if (gone) {
		rc = cfs_error_set(CFS_EIO,
				   "sandbox %s died while the command ran (its "
				   "root %s was removed)",
				   l->id, l->root);
		goto out;
	}
	if (timed_out) {
		rc = cfs_error_set(CFS_ETIMEDOUT,
				   "command timed out after %lld ms in sandbox "
				   "%s (killed)",
				   (long long)timeout_ms, l->id);
		goto out;
	}
	if (l->bwrap) {
		int code =
			status.buf.ptr ? status_exit_code(status.buf.ptr) : -1;

		if (code < 0) {
			rc = cfs_error_set(CFS_EIO,
					   "sandbox %s failed to start the "
					   "command: %.500s",
					   l->id,
					   err.buf.ptr ? err.buf.ptr
						       : "bubblewrap exited");
			goto out;
		}
		res->exit_code = code;
	} else if (WIFEXITED(wstatus)) {
		res->exit_code = WEXITSTATUS(wstatus);
	} else if (WIFSIGNALED(wstatus)) {
		res->exit_code = 128 + WTERMSIG(wstatus);
	} else {
		res->exit_code = 255;
	}
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
	if (pid > 0 && !reaped) {
		kill(-pid, SIGKILL);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		atomic_store(&l->child, 0);
	}
	for (int i = 0; i < 2; i++) {
		if (opipe[i] >= 0)
			close(opipe[i]);
		if (epipe[i] >= 0)
			close(epipe[i]);
		if (spipe[i] >= 0)
			close(spipe[i]);
	}
	cfs_buf_free(&out.buf);
	cfs_buf_free(&err.buf);
	cfs_buf_free(&status.buf);
	return rc;
}

static int local_run(struct cfs_run_result *res, struct cfs_runtime *rt,
		     const char *command, const char *user, int64_t timeout_ms)
{
	return run_io(res, rt, command, user, timeout_ms, -1, -1);
}

static int local_run_io(struct cfs_run_result *res, struct cfs_runtime *rt,
			const char *command, int in_fd, int out_fd,
			int64_t timeout_ms)
{
	return run_io(res, rt, command, NULL, timeout_ms, in_fd, out_fd);
}

/* ------------------------------------------------------------------ */
/* Transfers */

/*
 * The path of remote (absolute, in the sandbox) relative to R, or NULL
 * with CFS_EINVAL when it cannot lie inside the sandbox.
 */
static const char *relative_to_root(struct local_rt *l, const char *remote)
{
	const char *rel = remote;

	if (!l->bwrap) {
		size_t n = strlen(l->root);

		if (strncmp(remote, l->root, n) != 0 || remote[n] != '/')
			goto bad;
		rel = remote + n;
	}
	if (rel[0] != '/')
		goto bad;
	while (*rel == '/')
		rel++;
	if (!*rel)
		goto bad;
	return rel;
bad:
	cfs_error_set(CFS_EINVAL, "path %s is not inside sandbox %s", remote,
		      l->id);
	return NULL;
}

/*
 * Opens the parent directory of rel (relative to R) without following any
 * symlink, creating missing directories (0755) when create is set. *base
 * points to the last component.
 */
static int open_parent(int *dirfd_out, const char **base, struct local_rt *l,
		       const char *rel, bool create)
{
	char comp[NAME_MAX + 1];
	const char *p = rel, *slash;
	int fd = dup(l->rootfd), next;

	if (fd < 0)
		return cfs_error_errno(errno, "dup");
	for (;;) {
		size_t n;

		while (*p == '/')
			p++;
		slash = strchr(p, '/');
		if (!slash)
			break;
		n = (size_t)(slash - p);
		if (n > NAME_MAX) {
			close(fd);
			return cfs_error_set(CFS_EINVAL, "path too long: %s",
					     rel);
		}
		memcpy(comp, p, n);
		comp[n] = '\0';
		p = slash + 1;
		if (n == 0 || strcmp(comp, ".") == 0)
			continue;
		if (strcmp(comp, "..") == 0) {
			close(fd);
			return cfs_error_set(CFS_EINVAL,
					     "path %s has a .. segment", rel);
		}
		if (create && mkdirat(fd, comp, 0755) != 0 && errno != EEXIST) {
			int e = errno;

			close(fd);
			return cfs_error_errno(e, "creating %s in the sandbox",
					       rel);
		}
		next = openat(fd, comp,
			      O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0) {
			int e = errno;

			close(fd);
			return cfs_error_errno(e == ELOOP ? ENOTDIR : e,
					       "opening %s in the sandbox",
					       rel);
		}
		close(fd);
		fd = next;
	}
	if (!*p || strcmp(p, ".") == 0 || strcmp(p, "..") == 0) {
		close(fd);
		return cfs_error_set(CFS_EINVAL, "path %s names no file", rel);
	}
	*base = p;
	*dirfd_out = fd;
	return 0;
}

static int copy_fd(int dst, int src, const char *what)
{
	char buf[1 << 16];

	for (;;) {
		ssize_t n = read(src, buf, sizeof(buf));

		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cfs_error_errno(errno, "reading %s", what);
		}
		if (cfs_write_all(dst, buf, (size_t)n))
			return cfs_error_errno(errno, "writing %s", what);
	}
}

static int local_upload(struct cfs_runtime *rt, const char *local_path,
			const char *remote_path)
{
	struct local_rt *l = (struct local_rt *)rt;
	const char *rel, *base;
	int src = -1, dir = -1, dst = -1, rc;

	if (l->rootfd < 0)
		return cfs_error_set(CFS_EIO, "sandbox %s was disposed", l->id);
	rel = relative_to_root(l, remote_path);
	if (!rel)
		return CFS_EINVAL;
	src = open(local_path, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return cfs_error_errno(errno, "opening %s", local_path);
	rc = open_parent(&dir, &base, l, rel, true);
	if (rc)
		goto out;
	/* Replace whatever the sandbox left there (a symlink included). */
	if (unlinkat(dir, base, 0) != 0 && errno != ENOENT && errno != EISDIR) {
		rc = cfs_error_errno(errno, "replacing %s", remote_path);
		goto out;
	}
	dst = openat(dir, base,
		     O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		     0600);
	if (dst < 0) {
		rc = cfs_error_errno(errno, "creating %s in sandbox %s",
				     remote_path, l->id);
		goto out;
	}
	rc = copy_fd(dst, src, remote_path);
out:
	if (dst >= 0 && close(dst) != 0 && !rc)
		rc = cfs_error_errno(errno, "writing %s", remote_path);
	if (dir >= 0)
		close(dir);
	close(src);
	return rc;
}

static int local_download(struct cfs_runtime *rt, const char *remote_path,
			  const char *local_path)
{
	struct local_rt *l = (struct local_rt *)rt;
	const char *rel, *base;
	struct stat st;
	int src = -1, dir = -1, dst = -1, rc;

	if (l->rootfd < 0)
		return cfs_error_set(CFS_EIO, "sandbox %s was disposed", l->id);
	rel = relative_to_root(l, remote_path);
	if (!rel)
		return CFS_EINVAL;
	rc = open_parent(&dir, &base, l, rel, false);
	if (rc)
		goto out;
	src = openat(dir, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (src < 0) {
		rc = errno == ENOENT
			     ? cfs_error_set(CFS_ENOTFOUND,
					     "%s not found in sandbox %s",
					     remote_path, l->id)
			     : cfs_error_errno(errno, "opening %s in sandbox",
					       remote_path);
		goto out;
	}
	if (fstat(src, &st) != 0 || !S_ISREG(st.st_mode)) {
		rc = cfs_error_set(CFS_EUNSAFE,
				   "%s in sandbox %s is not a regular file",
				   remote_path, l->id);
		goto out;
	}
	dst = open(local_path,
		   O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (dst < 0 || fchmod(dst, 0600) != 0) {
		rc = cfs_error_errno(errno, "creating %s", local_path);
		goto out;
	}
	rc = copy_fd(dst, src, local_path);
out:
	if (dst >= 0 && close(dst) != 0 && !rc)
		rc = cfs_error_errno(errno, "writing %s", local_path);
	if (src >= 0)
		close(src);
	if (dir >= 0)
		close(dir);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Lifetime */

static int local_dispose(struct cfs_runtime *rt)
{
	struct local_rt *l = (struct local_rt *)rt;
	pid_t pid = atomic_load(&l->child);
	char *slash;
	int parent, rc = 0;

	if (pid > 0)
		kill(-pid, SIGKILL);
	if (l->rootfd < 0)
		return 0;
	close(l->rootfd);
	l->rootfd = -1;
	slash = strrchr(l->root, '/');
	if (!slash)
		return 0;
	*slash = '\0';
	parent = open(*l->root ? l->root : "/",
		      O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	*slash = '/';
	if (parent < 0)
		return cfs_error_errno(errno, "removing sandbox %s", l->id);
	rc = cfs_rmtree_at(parent, slash + 1);
	close(parent);
	return rc;
}

static void local_free(struct cfs_runtime *rt)
{
	struct local_rt *l = (struct local_rt *)rt;

	if (!l)
		return;
	if (l->rootfd >= 0)
		close(l->rootfd);
	free(l->id);
	free(l->root);
	free(l->tmp_dir);
	free(l->mount_base);
	free(l);
}

static const struct cfs_runtime_ops local_ops = {
	.version = CFS_RUNTIME_VERSION,
	.run = local_run,
	.upload = local_upload,
	.download = local_download,
	.keep_alive = NULL,
	.kill = local_dispose,
	.dispose = local_dispose,
	.free = local_free,
	.run_io = local_run_io,
};

bool cfs_local_bwrap_usable(void)
{
	static int usable = -1; /* probed once per process */
	const char *argv[] = {
		BWRAP,	     "--unshare-all", "--ro-bind", "/usr",
		"/usr",	     "--symlink",     "usr/bin",   "/bin",
		"--symlink", "usr/lib",	      "/lib",	   "--symlink",
		"usr/lib64", "/lib64",	      "--",	   "/usr/bin/true",
		NULL};
	int status;
	pid_t pid;

	if (usable >= 0)
		return usable;
	usable = 0;
	if (access(BWRAP, X_OK) != 0)
		return false;
	pid = fork();
	if (pid < 0)
		return false;
	if (pid == 0) {
		int fd = open("/dev/null", O_RDWR);

		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
		}
		closefrom(3);
		execv(BWRAP, (char *const *)argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	usable = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	return usable;
}

/*
 * The runtime fields of a local sandbox whose root (and bwrap mode) are
 * set: its id ("local:<name>"), the tmp and mount directories as commands
 * see them, the ops. Shared by a new sandbox and a kept one reopened.
 */
static int local_finish(struct local_rt *l)
{
	const char *name = strrchr(l->root, '/');

	name = name ? name + 1 : l->root;
	if (strncmp(name, "contextfs-sandbox-", 18) == 0)
		name += 18;
	l->id = cfs_asprintf("local:%s", name);
	if (l->bwrap) {
		l->tmp_dir = cfs_strdup("/tmp");
		l->mount_base = cfs_strdup("/mnt/contextsdk");
	} else {
		l->tmp_dir = cfs_asprintf("%s/tmp", l->root);
		l->mount_base = cfs_asprintf("%s/mnt/contextsdk", l->root);
	}
	if (!l->id || !l->tmp_dir || !l->mount_base)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	l->base.ops = &local_ops;
	l->base.id = l->id;
	l->base.provider = "local";
	l->base.caps.directory_bundle = true;
	l->base.caps.root_links = l->bwrap;
	l->base.sandbox_timeout_ms = 0;
	l->base.tmp_dir = l->tmp_dir;
	l->base.mount_base = l->mount_base;
	return 0;
}

int cfs_local_runtime_new(struct cfs_runtime **out,
			  const struct cfs_local_opts *opts)
{
	static const char *const dirs[] = {"tmp", "root", "mnt",
					   "mnt/contextsdk"};
	struct cfs_local_opts def = {0};
	struct local_rt *l = NULL;
	char prefix[48];
	int rc;

	*out = NULL;
	if (!opts)
		opts = &def;
	l = cfs_calloc(1, sizeof(*l));
	if (!l)
		return CFS_ENOMEM;
	l->rootfd = -1;
	switch (opts->mode) {
	case CFS_LOCAL_PLAIN:
		l->bwrap = false;
		break;
	case CFS_LOCAL_BWRAP:
		if (!cfs_local_bwrap_usable()) {
			rc = cfs_error_set(CFS_EUNSUPPORTED,
					   "bubblewrap (%s) is not installed "
					   "or cannot create a sandbox here",
					   BWRAP);
			goto fail;
		}
		l->bwrap = true;
		break;
	default:
		l->bwrap = cfs_local_bwrap_usable();
		break;
	}
	l->share_net = opts->share_net;
	cfs_sweep_stale_tmpdirs(opts->base_dir, "contextfs-sandbox-");
	snprintf(prefix, sizeof(prefix), "contextfs-sandbox-%ld-",
		 (long)getpid());
	rc = cfs_mkdtemp(&l->root, opts->base_dir, prefix);
	if (rc)
		goto fail;
	l->rootfd = open(l->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (l->rootfd < 0) {
		rc = cfs_error_errno(errno, "opening %s", l->root);
		goto fail;
	}
	for (size_t i = 0; i < CFS_ARRAY_SIZE(dirs); i++) {
		if (mkdirat(l->rootfd, dirs[i], i == 1 ? 0700 : 0755) != 0) {
			rc = cfs_error_errno(errno, "creating %s/%s", l->root,
					     dirs[i]);
			goto fail;
		}
	}
	if (l->bwrap) {
		static const char *const links[][2] = {
			{"usr/bin", "bin"},
			{"usr/sbin", "sbin"},
			{"usr/lib", "lib"},
			{"usr/lib64", "lib64"},
		};

		for (size_t i = 0; i < CFS_ARRAY_SIZE(links); i++) {
			char host[16];

			snprintf(host, sizeof(host), "/%s", links[i][0]);
			if (access(host, F_OK) != 0)
				continue;
			if (symlinkat(links[i][0], l->rootfd, links[i][1])) {
				rc = cfs_error_errno(errno, "creating %s/%s",
						     l->root, links[i][1]);
				goto fail;
			}
		}
	}
	/* The sandbox's /tmp is world-writable and sticky, like a real one. */
	if (fchmodat(l->rootfd, "tmp", 01777, 0) != 0) {
		rc = cfs_error_errno(errno, "chmod %s/tmp", l->root);
		goto fail;
	}
	rc = local_finish(l);
	if (rc)
		goto fail;
	*out = &l->base;
	return 0;
fail:
	if (l->root)
		local_dispose(&l->base);
	local_free(&l->base);
	return rc;
}

int cfs_local_runtime_open(struct cfs_runtime **out,
			   const struct cfs_local_opts *opts, const char *root)
{
	struct cfs_local_opts def = {0};
	struct local_rt *l = NULL;
	struct stat sb;
	int rc;

	*out = NULL;
	if (!opts)
		opts = &def;
	if (!root || root[0] != '/')
		return cfs_error_set(CFS_EINVAL,
				     "sandbox root must be an absolute path");
	l = cfs_calloc(1, sizeof(*l));
	if (!l)
		return CFS_ENOMEM;
	l->root = cfs_strdup(root);
	if (!l->root) {
		rc = CFS_ENOMEM;
		goto fail;
	}
	l->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (l->rootfd < 0) {
		rc = cfs_error_errno(errno, "opening sandbox %s", root);
		goto fail;
	}
	/* Ours and private, as cfs_local_runtime_new made it. */
	if (fstat(l->rootfd, &sb) != 0 || sb.st_uid != geteuid() ||
	    (sb.st_mode & 077)) {
		rc = cfs_error_set(CFS_EUNSAFE,
				   "sandbox %s is not a private directory of "
				   "this user",
				   root);
		goto fail;
	}
	/* The mode it was created in: bubblewrap roots have /bin links. */
	l->bwrap = faccessat(l->rootfd, "bin", F_OK, AT_SYMLINK_NOFOLLOW) == 0;
	if (l->bwrap &&
	    (opts->mode == CFS_LOCAL_PLAIN || !cfs_local_bwrap_usable())) {
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "sandbox %s was made for bubblewrap, which "
				   "cannot run here (or --sandbox plain)",
				   root);
		goto fail;
	}
	if (!l->bwrap && opts->mode == CFS_LOCAL_BWRAP) {
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "sandbox %s is a plain sandbox", root);
		goto fail;
	}
	l->share_net = opts->share_net;
	rc = local_finish(l);
	if (rc)
		goto fail;
	*out = &l->base;
	return 0;
fail:
	local_free(&l->base);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Provisioner */

struct local_prov {
	struct cfs_provisioner base;
	struct cfs_local_opts opts;
	char *base_dir;
};

static int prov_create(struct cfs_runtime **out, struct cfs_provisioner *p,
		       const char *context_id)
{
	struct local_prov *lp = (struct local_prov *)p;

	(void)context_id;
	return cfs_local_runtime_new(out, &lp->opts);
}

static void prov_destroy(struct cfs_provisioner *p, struct cfs_runtime *rt)
{
	(void)p;
	if (!rt)
		return;
	cfs_runtime_dispose(rt);
	cfs_runtime_free(rt);
}

static void prov_free(struct cfs_provisioner *p)
{
	struct local_prov *lp = (struct local_prov *)p;

	if (!lp)
		return;
	free(lp->base_dir);
	free(lp);
}

int cfs_local_provisioner_new(struct cfs_provisioner **out,
			      const struct cfs_local_opts *opts)
{
	struct local_prov *lp = cfs_calloc(1, sizeof(*lp));

	*out = NULL;
	if (!lp)
		return CFS_ENOMEM;
	if (opts)
		lp->opts = *opts;
	if (opts && opts->base_dir) {
		lp->base_dir = cfs_strdup(opts->base_dir);
		if (!lp->base_dir) {
			free(lp);
			return CFS_ENOMEM;
		}
		lp->opts.base_dir = lp->base_dir;
	}
	lp->base.version = CFS_RUNTIME_VERSION;
	lp->base.create = prov_create;
	lp->base.destroy = prov_destroy;
	lp->base.free = prov_free;
	*out = &lp->base;
	return 0;
}
