/*
 * Implementation of the shared helpers in core/util.h.
 */
#include "core/util.h"
#include "core/error.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

int cfs_init(void)
{
	if (sodium_init() < 0)
		return cfs_error_set(CFS_ERROR,
				     "libsodium failed to initialise");
	return 0;
}

void *cfs_malloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		cfs_error_set(CFS_ENOMEM, "out of memory");
	return p;
}

void *cfs_calloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		cfs_error_set(CFS_ENOMEM, "out of memory");
	return p;
}

char *cfs_strdup(const char *s)
{
	char *p = strdup(s ? s : "");

	if (!p)
		cfs_error_set(CFS_ENOMEM, "out of memory");
	return p;
}

char *cfs_strndup(const char *s, size_t n)
{
	char *p = strndup(s, n);

	if (!p)
		cfs_error_set(CFS_ENOMEM, "out of memory");
	return p;
}

char *cfs_asprintf(const char *fmt, ...)
{
	va_list ap;
	char *p = NULL;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (n < 0) {
		cfs_error_set(CFS_ENOMEM, "out of memory");
		return NULL;
	}
	return p;
}

int cfs_buf_grow(struct cfs_buf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (cfs_add_overflows(b->len, extra, &need) ||
	    cfs_add_overflows(need, 1, &need))
		return cfs_error_set(CFS_ENOMEM, "buffer size overflow");
	if (need <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 64;
	while (cap < need) {
		if (cfs_mul_overflows(cap, 2, &cap))
			return cfs_error_set(CFS_ENOMEM,
					     "buffer size overflow");
	}
	p = realloc(b->ptr, cap);
	if (!p)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	b->ptr = p;
	b->cap = cap;
	return 0;
}

int cfs_buf_put(struct cfs_buf *b, const void *data, size_t len)
{
	int rc = cfs_buf_grow(b, len);

	if (rc)
		return rc;
	if (len)
		memcpy(b->ptr + b->len, data, len);
	b->len += len;
	b->ptr[b->len] = '\0';
	return 0;
}

int cfs_buf_puts(struct cfs_buf *b, const char *s)
{
	return cfs_buf_put(b, s, strlen(s));
}

int cfs_buf_printf(struct cfs_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n, rc;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return cfs_error_set(CFS_EINVAL, "bad format");
	rc = cfs_buf_grow(b, (size_t)n);
	if (rc)
		return rc;
	va_start(ap, fmt);
	vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

char *cfs_buf_detach(struct cfs_buf *b)
{
	char *p = b->ptr;

	if (!p)
		p = cfs_strdup("");
	b->ptr = NULL;
	b->len = b->cap = 0;
	return p;
}

void cfs_buf_free(struct cfs_buf *b)
{
	free(b->ptr);
	b->ptr = NULL;
	b->len = b->cap = 0;
}

int64_t cfs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cfs_monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cfs_iso8601_ms(char *out, size_t outlen, int64_t ms)
{
	time_t secs = (time_t)(ms / 1000);
	int frac = (int)(ms % 1000);
	struct tm tm;

	if (frac < 0) {
		frac += 1000;
		secs -= 1;
	}
	gmtime_r(&secs, &tm);
	snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, frac);
}

int64_t cfs_iso8601_parse_ms(const char *s)
{
	struct tm tm;
	const char *p;
	int64_t ms = 0;
	int digits = 0;
	time_t t;

	if (!s)
		return -1;
	memset(&tm, 0, sizeof(tm));
	p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		return -1;
	if (*p == '.') {
		p++;
		while (*p >= '0' && *p <= '9') {
			if (digits < 3) {
				ms = ms * 10 + (*p - '0');
				digits++;
			}
			p++;
		}
		while (digits > 0 && digits < 3) {
			ms *= 10;
			digits++;
		}
	}
	if (*p == 'Z')
		p++;
	else if (*p == '+' && strcmp(p, "+00:00") == 0)
		p += 6;
	if (*p)
		return -1;
	t = timegm(&tm);
	if (t == (time_t)-1)
		return -1;
	return (int64_t)t * 1000 + ms;
}

void cfs_random_bytes(void *buf, size_t n)
{
	randombytes_buf(buf, n);
}

void cfs_hex_encode(char *out, const uint8_t *in, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int cfs_hex_decode(uint8_t *out, size_t outlen, const char *hex, size_t *outn)
{
	size_t n = strlen(hex), i;

	if (n % 2)
		return cfs_error_set(CFS_EINVAL, "odd-length hex string");
	if (n / 2 > outlen)
		return cfs_error_set(CFS_EINVAL, "hex string too long");
	for (i = 0; i < n / 2; i++) {
		int hi = hexval((unsigned char)hex[2 * i]);
		int lo = hexval((unsigned char)hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return cfs_error_set(CFS_EINVAL,
					     "invalid hex character");
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	if (outn)
		*outn = n / 2;
	return 0;
}

void cfs_random_hex(char *out, size_t nbytes)
{
	uint8_t tmp[64];

	while (nbytes) {
		size_t n = nbytes < sizeof(tmp) ? nbytes : sizeof(tmp);

		randombytes_buf(tmp, n);
		cfs_hex_encode(out, tmp, n);
		out += 2 * n;
		nbytes -= n;
	}
}

void cfs_uuid4(char out[37])
{
	uint8_t b[16];
	char hex[33];

	randombytes_buf(b, sizeof(b));
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	cfs_hex_encode(hex, b, sizeof(b));
	snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
		 hex + 16, hex + 20);
}

void cfs_sha256_hex(char out[65], const void *data, size_t len)
{
	uint8_t md[32];

	EVP_Digest(data, len, md, NULL, EVP_sha256(), NULL);
	cfs_hex_encode(out, md, sizeof(md));
}

/* fstat of fd: 0 for a regular file, 1 for anything else, or an error. */
static int stat_file(int fd, struct stat *st)
{
	if (fstat(fd, st) < 0)
		return cfs_error_errno(errno, "cannot stat");
	return S_ISREG(st->st_mode) ? 0 : 1;
}

/*
 * st: also the fstat after reading, and a read shorter than asked that ends
 * where that fstat says the file ends counts as the end (a small file costs
 * one read instead of two). With st, fd may turn out not to be a regular
 * file (readdir's d_type names what lies under a mount point: a device
 * bind-mounted over a file reads as a file there): it is looked at after
 * the first read, or when a read fails, and then 0 is returned with st
 * saying what it is and out left empty, so that /dev/zero is never read
 * to its end.
 */
static int sha256_fd(char out[65], int fd, struct stat *st)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t md[32];
	static __thread uint8_t buf[1 << 16];
	off_t off = 0;
	bool have_st = false;
	int rc = 0;

	out[0] = '\0';
	if (!ctx)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (;;) {
		ssize_t n = pread(fd, buf, sizeof(buf), off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;

			if (st && stat_file(fd, st) == 1)
				goto out; /* a FIFO, a directory: not a file */
			rc = cfs_error_errno(e, "read");
			goto out;
		}
		if (n == 0)
			break;
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		off += n;
		if (st && (off == n || (size_t)n < sizeof(buf))) {
			if ((rc = stat_file(fd, st)) != 0)
				goto out;
			if ((size_t)n < sizeof(buf) && st->st_size == off) {
				have_st = true;
				break;
			}
		}
	}
	if (st && !have_st && (rc = stat_file(fd, st)) != 0)
		goto out;
	EVP_DigestFinal_ex(ctx, md, NULL);
	cfs_hex_encode(out, md, sizeof(md));
out:
	EVP_MD_CTX_free(ctx);
	return rc > 0 ? 0 : rc; /* 1: not a file, out empty */
}

int cfs_sha256_fd(char out[65], int fd)
{
	return sha256_fd(out, fd, NULL);
}

int cfs_sha256_fd_stat(char out[65], int fd, struct stat *st)
{
	return sha256_fd(out, fd, st);
}

int cfs_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cfs_error_errno(errno, "write");
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int cfs_read_all(int fd, void *data, size_t len, size_t *got)
{
	char *p = data;
	size_t total = 0;

	while (total < len) {
		ssize_t n = read(fd, p + total, len - total);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cfs_error_errno(errno, "read");
		}
		if (n == 0)
			break;
		total += (size_t)n;
	}
	if (got)
		*got = total;
	return 0;
}

int cfs_copy_fd(int out, int in, off_t off, uint64_t len)
{
	char buf[65536];
	int rc = 0;

	while (!rc && len > 0) {
		size_t want = len < sizeof(buf) ? (size_t)len : sizeof(buf);
		ssize_t got = pread(in, buf, want, off);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return cfs_error_errno(errno, "read");
		if (got == 0)
			return cfs_error_set(
				CFS_EIO, "file ends %" PRIu64 " bytes early",
				len);
		rc = cfs_write_all(out, buf, (size_t)got);
		off += got;
		len -= (uint64_t)got;
	}
	return rc;
}

int cfs_read_file_at(char **out, size_t *len_out, int dirfd, const char *path,
		     size_t max)
{
	struct cfs_buf b = CFS_BUF_INIT;
	char tmp[8192];
	int fd, rc = 0;

	*out = NULL;
	fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cfs_error_errno(errno, "%s", path);
	for (;;) {
		ssize_t n = read(fd, tmp, sizeof(tmp));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = cfs_error_errno(errno, "%s", path);
			goto out;
		}
		if (n == 0)
			break;
		if (b.len + (size_t)n > max) {
			rc = cfs_error_set(CFS_ECORRUPT,
					   "%s is larger than %zu bytes", path,
					   max);
			goto out;
		}
		rc = cfs_buf_put(&b, tmp, (size_t)n);
		if (rc)
			goto out;
	}
	if (len_out)
		*len_out = b.len;
	*out = cfs_buf_detach(&b);
	if (!*out)
		rc = CFS_ENOMEM;
out:
	cfs_buf_free(&b);
	close(fd);
	return rc;
}

int cfs_write_file_at(int dirfd, const char *path, const void *data, size_t len,
		      mode_t mode, bool durable)
{
	char suffix[17];
	char *tmp = NULL;
	int fd = -1, rc;

	cfs_random_hex(suffix, 8);
	tmp = cfs_asprintf("%s.tmp-%d-%s", path, (int)getpid(), suffix);
	if (!tmp)
		return CFS_ENOMEM;
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0) {
		rc = cfs_error_errno(errno, "create %s", tmp);
		goto out;
	}
	rc = cfs_write_all(fd, data, len);
	if (rc)
		goto out;
	if (durable && fsync(fd) < 0) {
		rc = cfs_error_errno(errno, "fsync %s", tmp);
		goto out;
	}
	if (close(fd) < 0) {
		fd = -1;
		rc = cfs_error_errno(errno, "close %s", tmp);
		goto out;
	}
	fd = -1;
	if (renameat(dirfd, tmp, dirfd, path) < 0) {
		rc = cfs_error_errno(errno, "rename %s", path);
		goto out;
	}
	free(tmp);
	return 0;
out:
	if (fd >= 0)
		close(fd);
	unlinkat(dirfd, tmp, 0);
	free(tmp);
	return rc;
}

int cfs_mkdir_p_at(int dirfd, const char *path, mode_t mode)
{
	char *copy, *p;
	int rc = 0;

	if (!path[0] || strcmp(path, ".") == 0)
		return 0;
	copy = cfs_strdup(path);
	if (!copy)
		return CFS_ENOMEM;
	for (p = copy + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char saved = *p;

			*p = '\0';
			if (mkdirat(dirfd, copy, mode) < 0 && errno != EEXIST) {
				rc = cfs_error_errno(errno, "mkdir %s", copy);
				break;
			}
			*p = saved;
			if (!saved)
				break;
		}
	}
	free(copy);
	return rc;
}

static int names_add_typed(struct cfs_names *l, const char *s, size_t len,
			   unsigned char type)
{
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 32, bytes;
		char **nv;
		unsigned char *nt;

		if (cfs_mul_overflows(ncap, sizeof(*nv), &bytes))
			return cfs_error_set(CFS_ENOMEM, "directory too large");
		nv = realloc(l->v, bytes);
		if (!nv)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		l->v = nv;
		nt = realloc(l->type, ncap);
		if (!nt)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		l->type = nt;
		l->cap = ncap;
	}
	l->v[l->n] = cfs_strndup(s, len);
	if (!l->v[l->n])
		return CFS_ENOMEM;
	l->type[l->n] = type;
	l->n++;
	return 0;
}

int cfs_names_add(struct cfs_names *l, const char *s, size_t len)
{
	return names_add_typed(l, s, len, DT_UNKNOWN);
}

static bool dot_or_dotdot(const char *n)
{
	return n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]));
}

/* Through a fresh descriptor and readdir(3): dfd may be an O_PATH one. */
static int names_read_dir_stdio(struct cfs_names *l, int dfd, const char *what)
{
	DIR *d;
	int rc = 0, fd;

	fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return cfs_error_errno(errno, "cannot list %s", what);
	d = fdopendir(fd);
	if (!d) {
		rc = cfs_error_errno(errno, "cannot list %s", what);
		close(fd);
		return rc;
	}
	for (;;) {
		struct dirent *de;

		errno = 0;
		de = readdir(d);
		if (!de) {
			if (errno)
				rc = cfs_error_errno(errno, "cannot list %s",
						     what);
			break;
		}
		if (dot_or_dotdot(de->d_name))
			continue;
		rc = names_add_typed(l, de->d_name, strlen(de->d_name),
				     de->d_type);
		if (rc)
			break;
	}
	closedir(d);
	return rc;
}

/*
 * getdents64 straight on dfd from offset 0 (it moves dfd's offset, which
 * the walks never use): opening ".", fdopendir's stat and fcntls and the
 * close were five system calls per directory on top of the listing.
 */
int cfs_names_read_dir(struct cfs_names *l, int dfd, const char *what)
{
	static __thread union {
		struct dirent64 align;
		char b[32768];
	} buf;

	if (lseek(dfd, 0, SEEK_SET) < 0)
		return names_read_dir_stdio(l, dfd, what);
	for (;;) {
		ssize_t n = getdents64(dfd, buf.b, sizeof(buf.b));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && l->n == 0 && (errno == EBADF || errno == ENOTDIR))
			return names_read_dir_stdio(l, dfd, what);
		if (n < 0)
			return cfs_error_errno(errno, "cannot list %s", what);
		if (n == 0)
			return 0;
		for (ssize_t off = 0; off < n;) {
			const struct dirent64 *de =
				(const struct dirent64 *)(buf.b + off);
			int rc;

			off += de->d_reclen;
			if (dot_or_dotdot(de->d_name))
				continue;
			rc = names_add_typed(l, de->d_name, strlen(de->d_name),
					     de->d_type);
			if (rc)
				return rc;
		}
	}
}

struct typed_name {
	char *name;
	unsigned char type;
};

static int str_ptr_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(((const struct typed_name *)a)->name,
		      ((const struct typed_name *)b)->name);
}

void cfs_names_sort_unique(struct cfs_names *l)
{
	struct typed_name *t;
	size_t w = 0;

	if (l->n < 2)
		return;
	t = malloc(l->n * sizeof(*t));
	if (!t) {
		/* names only (the types are hints): sorted all the same */
		for (size_t i = 0; i < l->n; i++)
			l->type[i] = DT_UNKNOWN;
		qsort(l->v, l->n, sizeof(*l->v), str_ptr_cmp);
	} else {
		for (size_t i = 0; i < l->n; i++)
			t[i] = (struct typed_name){l->v[i], l->type[i]};
		qsort(t, l->n, sizeof(*t), name_cmp);
		for (size_t i = 0; i < l->n; i++) {
			l->v[i] = t[i].name;
			l->type[i] = t[i].type;
		}
		free(t);
	}
	for (size_t i = 0; i < l->n; i++) {
		if (w > 0 && strcmp(l->v[w - 1], l->v[i]) == 0) {
			if (l->type[w - 1] != l->type[i])
				l->type[w - 1] = DT_UNKNOWN;
			free(l->v[i]);
			continue;
		}
		l->v[w] = l->v[i];
		l->type[w] = l->type[i];
		w++;
	}
	l->n = w;
}

void cfs_names_free(struct cfs_names *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	free(l->type);
	memset(l, 0, sizeof(*l));
}

static int rmtree_fd(int dfd)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;
	int rc = 0;

	if (!d) {
		close(dfd);
		return cfs_error_errno(errno, "opendir");
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == 0)
			continue;
		if (errno == EISDIR || errno == EPERM) {
			int sub = openat(dirfd(d), de->d_name,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
						 O_CLOEXEC);

			if (sub < 0) {
				rc = cfs_error_errno(errno, "open %s",
						     de->d_name);
				continue;
			}
			fchmod(sub, 0700);
			rc = rmtree_fd(sub) ?: rc;
			if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0)
				rc = cfs_error_errno(errno, "rmdir %s",
						     de->d_name);
		} else if (errno != ENOENT) {
			rc = cfs_error_errno(errno, "unlink %s", de->d_name);
		}
	}
	closedir(d);
	return rc;
}

int cfs_rmtree_at(int dirfd, const char *path)
{
	int fd, rc;

	if (unlinkat(dirfd, path, 0) == 0)
		return 0;
	if (errno == ENOENT)
		return 0;
	fd = openat(dirfd, path,
		    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : cfs_error_errno(errno, "%s", path);
	fchmod(fd, 0700);
	rc = rmtree_fd(fd);
	if (unlinkat(dirfd, path, AT_REMOVEDIR) < 0 && errno != ENOENT)
		rc = cfs_error_errno(errno, "rmdir %s", path);
	return rc;
}

int cfs_mkdtemp(char **out, const char *base, const char *prefix)
{
	const char *dir = base;
	char *tmpl;

	*out = NULL;
	if (!dir || !dir[0])
		dir = getenv("TMPDIR");
	if (!dir || !dir[0])
		dir = "/tmp";
	tmpl = cfs_asprintf("%s/%sXXXXXX", dir, prefix ? prefix : "cfs-");
	if (!tmpl)
		return CFS_ENOMEM;
	if (!mkdtemp(tmpl)) {
		int rc = cfs_error_errno(errno,
					 "create temporary directory "
					 "in %s",
					 dir);
		free(tmpl);
		return rc;
	}
	chmod(tmpl, 0700);
	*out = tmpl;
	return 0;
}

/*
 * Removes "<prefix><pid>-XXXXXX" directories under base (as cfs_mkdtemp
 * picks it) left by processes of this user that no longer exist: a run
 * killed with SIGKILL cannot clean up, and these hold plaintext. A pid
 * that is alive (or reused) keeps its directory.
 */
void cfs_sweep_stale_tmpdirs(const char *base, const char *prefix)
{
	size_t pl = strlen(prefix);
	struct dirent *de;
	DIR *d;

	if (!base || !base[0])
		base = getenv("TMPDIR");
	if (!base || !base[0])
		base = "/tmp";
	d = opendir(base);
	if (!d)
		return;
	while ((de = readdir(d))) {
		struct stat st;
		char *end;
		long pid;

		if (strncmp(de->d_name, prefix, pl) != 0)
			continue;
		errno = 0;
		pid = strtol(de->d_name + pl, &end, 10);
		if (errno || pid <= 0 || *end != '-' || pid == (long)getpid())
			continue;
		if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
		    !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
			continue;
		cfs_rmtree_at(dirfd(d), de->d_name);
	}
	closedir(d);
}

const char *cfs_hostname(void)
{
	static char name[256];

	if (!name[0]) {
		if (gethostname(name, sizeof(name) - 1) < 0 || !name[0])
			snprintf(name, sizeof(name), "localhost");
	}
	return name;
}

char *cfs_secret_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = sodium_malloc(n);

	if (!p) {
		cfs_error_set(CFS_ENOMEM, "out of secure memory");
		return NULL;
	}
	memcpy(p, s, n);
	return p;
}

void cfs_secret_free(char *s)
{
	if (s)
		sodium_free(s); /* sodium_free wipes before unmapping */
}

int cfs_array_grow(void *arr, size_t *cap, size_t n, size_t elem)
{
	void **pv = arr;
	size_t ncap = *cap ? *cap * 2 : 64, bytes;
	void *nv;

	if (n < *cap)
		return 0;
	if (cfs_mul_overflows(ncap, elem, &bytes) ||
	    !(nv = realloc(*pv, bytes)))
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	*pv = nv;
	*cap = ncap;
	return 0;
}

void cfs_thread_stop(pthread_t t, pthread_mutex_t *mu, pthread_cond_t *cv,
		     bool *stop, bool *started)
{
	if (!*started)
		return;
	pthread_mutex_lock(mu);
	*stop = true;
	pthread_cond_signal(cv);
	pthread_mutex_unlock(mu);
	pthread_join(t, NULL);
	*started = false;
}

/* Known local filesystems by statfs magic (see util.h). */
static const struct {
	unsigned long magic;
	bool close_silent;
} local_fs[] = {
	{0xEF53, true}, /* ext2/3/4 */
	{0x58465342, true}, /* xfs */
	{0x9123683E, true}, /* btrfs */
	{0x01021994, true}, /* tmpfs */
	{0xF2F52010, true}, /* f2fs */
	{0x2FC12FC1, false}, /* zfs */
	{0xCA451A4E, false}, /* bcachefs */
	{0x794C7630, false}, /* overlayfs */
};

/* local_fs's entry for fd's filesystem, or -1. */
static int local_fs_of(int fd)
{
	struct statfs sf;

	if (fstatfs(fd, &sf) != 0)
		return -1;
	for (size_t i = 0; i < CFS_ARRAY_SIZE(local_fs); i++)
		if ((unsigned long)sf.f_type == local_fs[i].magic)
			return (int)i;
	return -1;
}

bool cfs_fs_is_local(int fd)
{
	return local_fs_of(fd) >= 0;
}

bool cfs_fs_close_is_silent(int fd)
{
	int i = local_fs_of(fd);

	return i >= 0 && local_fs[i].close_silent;
}
