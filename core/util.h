/*
 * Small shared helpers: overflow-checked sizes, a growable string buffer,
 * time stamps, randomness (libsodium), hashing, and file helpers that work
 * relative to directory fds. Every size read from outside has a cap.
 */
#ifndef CFS_CORE_UTIL_H
#define CFS_CORE_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#define CFS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Must be called once before anything else (initialises libsodium). */
int cfs_init(void);

/* Overflow-checked arithmetic: return false on overflow. */
static inline bool cfs_add_overflows(size_t a, size_t b, size_t *out)
{
	return __builtin_add_overflow(a, b, out);
}
static inline bool cfs_mul_overflows(size_t a, size_t b, size_t *out)
{
	return __builtin_mul_overflow(a, b, out);
}

/* Allocation wrappers: NULL on failure (after setting CFS_ENOMEM). */
void *cfs_malloc(size_t n);
void *cfs_calloc(size_t n, size_t size);
char *cfs_strdup(const char *s);
char *cfs_strndup(const char *s, size_t n);
char *cfs_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Growable NUL-terminated buffer. */
struct cfs_buf {
	char *ptr;
	size_t len;
	size_t cap;
};
#define CFS_BUF_INIT       \
	{                  \
		NULL, 0, 0 \
	}
int cfs_buf_grow(struct cfs_buf *b, size_t extra);

/*
 * Makes room for one more element in the heap array *arr (n in use, *cap
 * allocated, elements of size elem): doubles *cap (from 64) when full.
 * CFS_ENOMEM (message set) on overflow or allocation failure.
 */
int cfs_array_grow(void *arr, size_t *cap, size_t n, size_t elem);
int cfs_buf_put(struct cfs_buf *b, const void *data, size_t len);
int cfs_buf_puts(struct cfs_buf *b, const char *s);
int cfs_buf_printf(struct cfs_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Hands the string to the caller (never NULL on success) and resets b. */
char *cfs_buf_detach(struct cfs_buf *b);
void cfs_buf_free(struct cfs_buf *b);

/* Time. */
int64_t cfs_now_ms(void); /* wall clock, ms since epoch */
int64_t cfs_monotonic_ms(void);
/* "2026-06-05T12:00:00.123Z" into out (at least 32 bytes). */
void cfs_iso8601_ms(char *out, size_t outlen, int64_t ms);
/* Parses ISO-8601 UTC with optional fraction ("...Z"); -1 if invalid. */
int64_t cfs_iso8601_parse_ms(const char *s);

/* Randomness (libsodium). */
void cfs_random_bytes(void *buf, size_t n);
/* n random bytes as 2n lowercase hex chars + NUL into out. */
void cfs_random_hex(char *out, size_t nbytes);
/* Random RFC 4122 v4 UUID, 36 chars + NUL. */
void cfs_uuid4(char out[37]);

/* Hex and hashing. */
void cfs_hex_encode(char *out, const uint8_t *in, size_t n); /* 2n+1 */
int cfs_hex_decode(uint8_t *out, size_t outlen, const char *hex, size_t *outn);
/* Lowercase hex SHA-256 (65 bytes) of a buffer / of an open fd from 0. */
void cfs_sha256_hex(char out[65], const void *data, size_t len);
int cfs_sha256_fd(char out[65], int fd);
/*
 * cfs_sha256_fd() and the file's fstat taken after reading it (a read
 * shorter than asked that ends at that size is taken as the end). When fd
 * is not a regular file (a device mounted over a file name), returns 0
 * early with st saying so and out empty: the caller skips it.
 */
int cfs_sha256_fd_stat(char out[65], int fd, struct stat *st);

/* Whole-file helpers, capped at max bytes (CFS_ECORRUPT above it). */
int cfs_read_file_at(char **out, size_t *len_out, int dirfd, const char *path,
		     size_t max);
/* Writes to a temp file beside path, fsyncs if durable, renames. */
int cfs_write_file_at(int dirfd, const char *path, const void *data, size_t len,
		      mode_t mode, bool durable);
int cfs_write_all(int fd, const void *data, size_t len);
int cfs_read_all(int fd, void *data, size_t len, size_t *got);
/* Copies len bytes of in, from offset off (pread: in's offset is left
 * alone), to out; CFS_EIO if in ends before. */
int cfs_copy_fd(int out, int in, off_t off, uint64_t len);
/* mkdir -p relative to dirfd ("" and "." are no-ops). */
int cfs_mkdir_p_at(int dirfd, const char *path, mode_t mode);
/* rm -rf relative to dirfd, never following symlinks. */
int cfs_rmtree_at(int dirfd, const char *path);
/* Private (0700) temporary directory under base (or $TMPDIR, /tmp). */
int cfs_mkdtemp(char **out, const char *base, const char *prefix);
/*
 * Removes "<prefix><pid>-XXXXXX" directories under base (NULL: $TMPDIR or
 * /tmp) owned by this user whose pid no longer exists: directories of
 * runs killed with SIGKILL, which may hold plaintext.
 */
void cfs_sweep_stale_tmpdirs(const char *base, const char *prefix);

/*
 * A growable list of heap strings (directory entry names), each with the
 * d_type readdir gave it (DT_UNKNOWN when added by name): a walker may
 * skip the stat of an entry the directory already calls a regular file,
 * but must still check what it opens.
 */
struct cfs_names {
	char **v;
	unsigned char *type;
	size_t n, cap;
};
/* Appends a copy of s[0..len) (type DT_UNKNOWN). */
int cfs_names_add(struct cfs_names *l, const char *s, size_t len);
/*
 * Appends the entry names of directory dfd (not "." and "..", dfd stays
 * open) with their d_type; errors read "cannot list <what>".
 */
int cfs_names_read_dir(struct cfs_names *l, int dfd, const char *what);
/*
 * Sorts bytewise and drops duplicates (a name given twice with different
 * types keeps DT_UNKNOWN).
 */
void cfs_names_sort_unique(struct cfs_names *l);
void cfs_names_free(struct cfs_names *l);

/*
 * Stops a worker thread that waits on cv under mu until *stop is set:
 * sets it, wakes the thread, joins it, and clears *started. Nothing when
 * *started is false.
 */
void cfs_thread_stop(pthread_t t, pthread_mutex_t *mu, pthread_cond_t *cv,
		     bool *stop, bool *started);

/*
 * What the filesystem holding fd is, by its statfs magic number (false
 * when fstatfs fails or the filesystem is not a known one).
 * local: attributes are this machine's own, stamped by its clock (ext2/3/4,
 * xfs, btrfs, tmpfs, f2fs, zfs, bcachefs, overlayfs); not NFS, SMB, FUSE
 * and the like, where a file changed elsewhere can show cached attributes.
 * close_silent: close(2) can never fail with a delayed write error (local
 * filesystems without a ->flush method: ext2/3/4, xfs, btrfs, tmpfs,
 * f2fs); network and FUSE filesystems may report one at close.
 */
bool cfs_fs_is_local(int fd);
bool cfs_fs_close_is_silent(int fd);

/* Host name (never NULL; "localhost" on failure). */
const char *cfs_hostname(void);

/* Secure string helpers for secrets: sodium_malloc'ed, wiped on free. */
char *cfs_secret_strdup(const char *s);
void cfs_secret_free(char *s);

#endif
