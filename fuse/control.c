/*
 * The control socket of a mount (base_dir/control.sock, in the 0700
 * staging area) and its client. A client finds the socket through the
 * virtual xattr user.contextfs.control on the mount root, so commands need
 * nothing but the mountpoint. One JSON request per connection, one JSON
 * reply: {"op": "status"} or {"op": "commit", "message": "..."} (returns
 * once the commit landed or failed).
 *
 * Socket paths may exceed sun_path (108 bytes): both sides go through
 * /proc/self/fd/<dirfd>/control.sock.
 */
#include "fuse/fuse_i.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

static int sun_for(struct sockaddr_un *sa, const char *path, int *dirfd_out)
{
	char dir[PATH_MAX], base[PATH_MAX];
	int k;

	if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir) ||
	    snprintf(base, sizeof(base), "%s", path) >= (int)sizeof(base))
		return cfs_error_set(CFS_EINVAL, "control path too long");
	int dfd = open(dirname(dir), O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return cfs_error_errno(errno, "control directory of %s", path);
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	k = snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s",
		     dfd, basename(base));
	if (k < 0 || k >= (int)sizeof(sa->sun_path)) {
		close(dfd);
		return cfs_error_set(CFS_EINVAL,
				     "control socket name too long");
	}
	*dirfd_out = dfd;
	return 0;
}

/* ---- server ------------------------------------------------------------- */

static int read_request(int fd, char **out)
{
	struct cfs_buf b = CFS_BUF_INIT;
	char tmp[4096];

	for (;;) {
		ssize_t k = read(fd, tmp, sizeof(tmp));
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			cfs_buf_free(&b);
			return -1;
		}
		if (k == 0)
			break;
		if (b.len + (size_t)k > CFS_CONTROL_MAX ||
		    cfs_buf_put(&b, tmp, (size_t)k)) {
			cfs_buf_free(&b);
			return -1;
		}
		if (memchr(tmp, '\n', (size_t)k))
			break;
	}
	*out = cfs_buf_detach(&b);
	return *out ? 0 : -1;
}

static cJSON *error_reply(int rc, const char *msg)
{
	cJSON *o = cJSON_CreateObject(), *e;
	if (!o)
		return NULL;
	cJSON_AddBoolToObject(o, "ok", false);
	e = cJSON_AddObjectToObject(o, "error");
	if (e) {
		cJSON_AddStringToObject(e, "code", cfs_error_name(rc));
		cJSON_AddNumberToObject(e, "rc", rc);
		cJSON_AddStringToObject(e, "message", msg);
	}
	return o;
}

struct conn {
	struct cfs_fs *fs;
	int fd;
};

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct cfs_fs *fs = c->fs;
	char *text = NULL, *out = NULL;
	cJSON *req = NULL, *rep = NULL;

	if (read_request(c->fd, &text) != 0)
		goto out;
	req = cJSON_Parse(text);
	const cJSON *op = cJSON_GetObjectItemCaseSensitive(req, "op");
	if (!cJSON_IsString(op)) {
		rep = error_reply(CFS_EINVAL, "bad control request");
	} else if (strcmp(op->valuestring, "status") == 0) {
		rep = cfs_fs_status_json(fs);
	} else if (strcmp(op->valuestring, "commit") == 0) {
		const cJSON *m =
			cJSON_GetObjectItemCaseSensitive(req, "message");
		int rc;
		if (fs->ro)
			rc = cfs_error_set(CFS_EINVAL,
					   "%s is a read-only mount: nothing "
					   "to commit",
					   fs->mountpoint);
		else
			rc = cfs_commit_request(fs, NULL,
						cJSON_IsString(m)
							? m->valuestring
							: "contextfs commit");
		rep = rc ? error_reply(rc, cfs_error_last())
			 : cfs_fs_status_json(fs);
	} else {
		rep = error_reply(CFS_EINVAL, "unknown control request");
	}
	out = rep ? cJSON_PrintUnformatted(rep) : NULL;
	if (out) {
		(void)cfs_write_all(c->fd, out, strlen(out));
		(void)cfs_write_all(c->fd, "\n", 1);
	}
out:
	free(out);
	free(text);
	cJSON_Delete(req);
	cJSON_Delete(rep);
	close(c->fd);
	free(c);
	return NULL;
}

static void *accept_main(void *arg)
{
	struct cfs_fs *fs = arg;

	for (;;) {
		int cfd = accept4(fs->ctl_fd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break; /* closed by cfs_control_stop */
		}
		struct ucred cr;
		socklen_t len = sizeof(cr);
		if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 ||
		    (cr.uid != 0 && cr.uid != fs->uid)) {
			close(cfd);
			continue;
		}
		struct conn *c = malloc(sizeof(*c));
		pthread_t t;
		pthread_attr_t a;
		if (!c) {
			close(cfd);
			continue;
		}
		c->fs = fs;
		c->fd = cfd;
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&t, &a, conn_main, c) != 0) {
			close(cfd);
			free(c);
		}
		pthread_attr_destroy(&a);
	}
	return NULL;
}

int cfs_control_start(struct cfs_fs *fs)
{
	struct sockaddr_un sa;
	int dfd = -1, rc;

	rc = sun_for(&sa, fs->sock_path, &dfd);
	if (rc)
		return rc;
	(void)unlink(fs->sock_path);
	fs->ctl_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fs->ctl_fd < 0) {
		rc = cfs_error_errno(errno, "control socket");
		goto out;
	}
	if (bind(fs->ctl_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(fs->ctl_fd, 16) != 0) {
		rc = cfs_error_errno(errno, "control socket %s", fs->sock_path);
		goto out;
	}
	if (pthread_create(&fs->ctl_thread, NULL, accept_main, fs) != 0) {
		rc = cfs_error_set(CFS_ERROR, "cannot start control thread");
		goto out;
	}
	fs->ctl_started = true;
out:
	if (rc && fs->ctl_fd >= 0) {
		close(fs->ctl_fd);
		fs->ctl_fd = -1;
	}
	close(dfd);
	return rc;
}

void cfs_control_stop(struct cfs_fs *fs)
{
	if (!fs->ctl_started)
		return;
	shutdown(fs->ctl_fd, SHUT_RDWR);
	pthread_join(fs->ctl_thread, NULL);
	close(fs->ctl_fd);
	fs->ctl_fd = -1;
	fs->ctl_started = false;
	(void)unlink(fs->sock_path);
}

/* ---- client ------------------------------------------------------------- */

int cfs_mount_request(cJSON **reply, const char *mountpoint, const cJSON *req)
{
	char path[PATH_MAX];
	struct sockaddr_un sa;
	struct cfs_buf b = CFS_BUF_INIT;
	char *text = NULL;
	int dfd = -1, fd = -1, rc = 0;
	ssize_t k;

	*reply = NULL;
	if (!cfs_mount_is_mountpoint(mountpoint))
		return cfs_error_set(CFS_EINVAL,
				     "%s is not a contextfs mountpoint",
				     mountpoint);
	k = getxattr(mountpoint, CFS_CONTROL_XATTR, path, sizeof(path) - 1);
	if (k < 0)
		return cfs_error_errno(errno, "cannot reach the daemon of %s",
				       mountpoint);
	path[k] = '\0';
	{
		/*
		 * A commit covers what was written before it was asked for:
		 * a writeback_cache mount's kernel may still hold some of it,
		 * so hand those pages to the daemon first (cheap otherwise).
		 */
		const cJSON *op = cJSON_GetObjectItemCaseSensitive(req, "op");

		if (cJSON_IsString(op) &&
		    strcmp(op->valuestring, "commit") == 0) {
			int mfd = open(mountpoint,
				       O_RDONLY | O_DIRECTORY | O_CLOEXEC);

			if (mfd >= 0) {
				(void)syncfs(mfd);
				close(mfd);
			}
		}
	}
	rc = sun_for(&sa, path, &dfd);
	if (rc)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		rc = cfs_error_errno(errno, "cannot reach the daemon of %s",
				     mountpoint);
		goto out;
	}
	text = cJSON_PrintUnformatted(req);
	if (!text) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	rc = cfs_write_all(fd, text, strlen(text));
	if (rc == 0)
		rc = cfs_write_all(fd, "\n", 1);
	if (rc)
		goto out;
	shutdown(fd, SHUT_WR);
	for (;;) {
		char tmp[4096];
		k = read(fd, tmp, sizeof(tmp));
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			rc = cfs_error_errno(errno, "control reply");
			goto out;
		}
		if (k == 0)
			break;
		if (b.len + (size_t)k > (1u << 20)) {
			rc = cfs_error_set(CFS_ECORRUPT,
					   "control reply too big");
			goto out;
		}
		rc = cfs_buf_put(&b, tmp, (size_t)k);
		if (rc)
			goto out;
	}
	*reply = b.ptr ? cJSON_Parse(b.ptr) : NULL;
	if (!*reply) {
		rc = cfs_error_set(CFS_EIO,
				   "the daemon of %s closed the control "
				   "connection without an answer",
				   mountpoint);
		goto out;
	}
	const cJSON *ok = cJSON_GetObjectItemCaseSensitive(*reply, "ok");
	if (!cJSON_IsTrue(ok)) {
		const cJSON *e =
			cJSON_GetObjectItemCaseSensitive(*reply, "error");
		const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "rc");
		const cJSON *msg =
			cJSON_GetObjectItemCaseSensitive(e, "message");
		int c = cJSON_IsNumber(code) ? (int)code->valuedouble
					     : CFS_ERROR;
		if (c >= 0 || c < CFS_ECANCELED)
			c = CFS_ERROR;
		rc = cfs_error_set(c, "%s",
				   cJSON_IsString(msg) ? msg->valuestring
						       : "request failed");
	}
out:
	free(text);
	cfs_buf_free(&b);
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	return rc;
}
