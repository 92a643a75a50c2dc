/*
 * The version record's bytes (cfs_version_record_write() in version.h)
 * and the record built in bounded memory (record.h): an external sort
 * for both file lists, a reader of the previous index that never holds
 * more than one entry of it, and a merge that writes the diff.
 */
#include "core/record.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/error.h"
#include "core/json.h"
#include "core/util.h"

/* ------------------------------------------------------------------ */
/* The record's bytes                                                  */
/* ------------------------------------------------------------------ */

/*
 * A record can list a million files: its lines go out through one 64 KiB
 * buffer, not a write(2) each (20,000 files: 160,000 calls -> 60).
 */
struct recw {
	int fd;
	size_t total;
	struct cfs_buf b;
};

#define RECW_FLUSH (64u << 10)

static int recw_flush(struct recw *w)
{
	int rc = 0;

	if (w->b.len)
		rc = cfs_write_all(w->fd, w->b.ptr, w->b.len);
	w->b.len = 0;
	return rc;
}

/* A long piece (the changedPaths of a first commit) is written as it is. */
static int recw_put(struct recw *w, const char *p, size_t n)
{
	if (n >= RECW_FLUSH) {
		int rc = recw_flush(w);

		if (!rc)
			rc = cfs_write_all(w->fd, p, n);
		if (!rc)
			w->total += n;
		return rc;
	}
	if (cfs_buf_put(&w->b, p, n))
		return CFS_ENOMEM;
	w->total += n;
	return w->b.len >= RECW_FLUSH ? recw_flush(w) : 0;
}

/* A member of a list entry: a string, or a number when str is NULL. */
struct recw_field {
	const char *key; /* plain ASCII, in sorted order */
	const char *str;
	double num;
};

/*
 * One object of a list in the record, as the pretty printer makes it at
 * that depth, without a cJSON tree (a 20,000-file record: 0.10 s ->
 * 0.02 s).
 */
static int recw_object(struct recw *w, const struct recw_field *f, size_t n,
		       bool first)
{
	const int fl = CFS_JSON_PRETTY | CFS_JSON_SORT_KEYS | CFS_JSON_ASCII;
	struct cfs_buf *b = &w->b;
	size_t before = b->len;
	int rc = cfs_buf_puts(b, first ? "\n    {" : ",\n    {");

	for (size_t i = 0; i < n && !rc; i++) {
		rc = cfs_buf_puts(b, i ? ",\n      \"" : "\n      \"");
		if (!rc)
			rc = cfs_buf_puts(b, f[i].key);
		if (!rc)
			rc = cfs_buf_puts(b, "\": ");
		if (!rc)
			rc = f[i].str ? cfs_json_put_string(b, f[i].str, fl)
				      : cfs_json_put_number(b, f[i].num, fl);
	}
	if (!rc)
		rc = cfs_buf_puts(b, "\n    }");
	if (rc)
		return CFS_ENOMEM;
	w->total += b->len - before;
	return b->len >= RECW_FLUSH ? recw_flush(w) : 0;
}

/* One entry of the record's file list (cfs_version_files_to_json()). */
static int recw_entry(struct recw *w, const struct cfs_file_entry *f,
		      bool first)
{
	char mode[16], mtime[32];

	snprintf(mode, sizeof(mode), "0o%o", f->mode & 07777);
	cfs_version_timestamp(mtime, f->mtime);
	return recw_object(w,
			   (const struct recw_field[]){
				   {"mode", mode, 0},
				   {"mtime", mtime, 0},
				   {"path", f->path, 0},
				   {"sha256", f->sha256, 0},
				   {"size", NULL, (double)f->size},
			   },
			   5, first);
}

/* One entry of the record's changedPaths (cfs_version_changes_to_json()). */
static int recw_change(struct recw *w, const char *path,
		       enum cfs_change_type type, bool first)
{
	return recw_object(w,
			   (const struct recw_field[]){
				   {"path", path, 0},
				   {"type", cfs_change_type_name(type), 0},
			   },
			   2, first);
}

/*
 * Writes all from *at up to and including the "[" of the empty array
 * member marker (e.g. "\"files\": []"); *at moves past the marker.
 */
static int recw_open_list(struct recw *w, const char **at, const char *marker)
{
	const char *m = strstr(*at, marker);
	size_t ml = strlen(marker);
	int rc;

	if (!m)
		return cfs_error_set(CFS_EINVAL,
				     "version record has no empty %.*s member",
				     (int)(ml - 4), marker);
	rc = recw_put(w, *at, (size_t)(m - *at) + ml - 1);
	*at = m + ml;
	return rc;
}

/* The "]" of a list of n entries: on its own line when there were any. */
static int recw_close_list(struct recw *w, size_t n)
{
	return n ? recw_put(w, "\n  ]", 4) : recw_put(w, "]", 1);
}

/*
 * The record's bytes with its two lists: the printed record up to each
 * empty list, then what changes() and files() write into it (returning
 * how many entries they wrote), then the rest.
 */
struct record_lists {
	int (*changes)(struct recw *w, void *payload, size_t *n);
	int (*files)(struct recw *w, void *payload, size_t *n);
	void *payload;
};

static int record_write(size_t *len_out, int fd, const cJSON *record,
			const struct record_lists *l)
{
	char *all = cfs_version_record_print(record);
	const char *at = all;
	struct recw w = {fd, 0, CFS_BUF_INIT};
	size_t n = 0;
	int rc = 0;

	if (!all)
		return CFS_ENOMEM;
	/* sorted keys: changedPaths comes before files */
	for (int i = 0; i < 2 && !rc; i++) {
		rc = recw_open_list(
			&w, &at, i ? "\"files\": []" : "\"changedPaths\": []");
		if (!rc)
			rc = (i ? l->files : l->changes)(&w, l->payload, &n);
		if (!rc)
			rc = recw_close_list(&w, n);
	}
	if (!rc)
		rc = recw_put(&w, at, strlen(at));
	if (!rc)
		rc = recw_flush(&w);
	cfs_buf_free(&w.b);
	free(all);
	if (!rc && len_out)
		*len_out = w.total;
	return rc;
}

struct given_lists {
	const struct cfs_version_change *changes;
	size_t nchanges;
	const struct cfs_file_entry *files;
	size_t nfiles;
};

static int given_changes(struct recw *w, void *payload, size_t *n)
{
	const struct given_lists *g = payload;
	int rc = 0;

	for (size_t i = 0; i < g->nchanges && !rc; i++)
		rc = recw_change(w, g->changes[i].path, g->changes[i].type,
				 i == 0);
	*n = g->nchanges;
	return rc;
}

static int given_files(struct recw *w, void *payload, size_t *n)
{
	const struct given_lists *g = payload;
	int rc = 0;

	for (size_t i = 0; i < g->nfiles && !rc; i++)
		rc = recw_entry(w, &g->files[i], i == 0);
	*n = g->nfiles;
	return rc;
}

int cfs_version_record_write(size_t *len_out, int fd, const cJSON *record,
			     const struct cfs_version_change *changes,
			     size_t nchanges,
			     const struct cfs_file_entry *files, size_t nfiles)
{
	struct given_lists g = {changes, nchanges, files, nfiles};
	const struct record_lists l = {given_changes, given_files, &g};

	return record_write(len_out, fd, record, &l);
}

/* ------------------------------------------------------------------ */
/* External sort of records "key\0...", by key bytes, stable           */
/* ------------------------------------------------------------------ */

/*
 * Records are kept in mmap'd blocks until they pass the budget, then
 * sorted and written as a run to an anonymous file of the private
 * directory; reading merges the runs (or walks the one sorted block
 * list, the common case, with no file at all). Blocks are mmap'd, not
 * malloc'd, so they go back to the system when freed whatever malloc's
 * thresholds: the pack that follows the index must not find the index's
 * pages still counted in the commit's RSS.
 */
#define XS_BLOCK (1u << 20)
#define XS_READ_BUF (32u << 10)
#define XS_WRITE_BUF (64u << 10)

struct xs_rec {
	const char *p;
	uint32_t len;
	uint32_t seq; /* insertion order: ties keep it */
};

struct xs_block {
	char *p;
	size_t size, used;
};

struct xs_reader {
	uint64_t off, end; /* the run's bytes not read yet */
	char *buf;
	size_t cap, pos, len;
	const char *rec; /* the current record */
	uint32_t rlen;
};

struct xsort {
	int dirfd;
	size_t budget, mem;
	struct xs_block *blocks;
	size_t nblocks, cur; /* cur: the block being filled */
	struct xs_rec *v;
	size_t n, cap;
	uint32_t seq;
	int fd; /* the runs, one after another; -1 until the first */
	uint64_t fsize;
	struct xs_reader *runs;
	size_t nruns;
	/* reading */
	bool reading;
	size_t at; /* the next in-memory record */
	size_t *heap, nheap;
	ssize_t last; /* the run whose record was returned last */
};

static void xs_init(struct xsort *s, int dirfd, size_t budget)
{
	memset(s, 0, sizeof(*s));
	s->dirfd = dirfd;
	s->budget = budget;
	s->fd = -1;
	s->last = -1;
}

static void xs_free_blocks(struct xsort *s)
{
	for (size_t i = 0; i < s->nblocks; i++)
		munmap(s->blocks[i].p, s->blocks[i].size);
	free(s->blocks);
	s->blocks = NULL;
	s->nblocks = s->cur = 0;
	free(s->v);
	s->v = NULL;
	s->n = s->cap = 0;
	s->mem = 0;
}

static void xs_free(struct xsort *s)
{
	xs_free_blocks(s);
	for (size_t i = 0; i < s->nruns; i++)
		free(s->runs[i].buf);
	free(s->runs);
	free(s->heap);
	if (s->fd >= 0)
		close(s->fd);
	xs_init(s, s->dirfd, s->budget);
}

/* An unnamed 0600 file in dirfd (named and unlinked where O_TMPFILE is
 * not supported). */
static int tmp_anon(int *out, int dirfd)
{
	int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0 &&
	    (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
		char name[32] = "sort-";

		cfs_random_hex(name + 5, 8);
		fd = openat(dirfd, name,
			    O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			    0600);
		if (fd >= 0)
			(void)unlinkat(dirfd, name, 0);
	}
	if (fd < 0)
		return cfs_error_errno(errno, "create a temporary file");
	*out = fd;
	return 0;
}

static int xs_cmp(const void *a, const void *b)
{
	const struct xs_rec *x = a, *y = b;
	int c = strcmp(x->p, y->p);

	if (c)
		return c;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorts the records held and appends them to the file as one run. */
static int xs_spill(struct xsort *s)
{
	struct cfs_buf b = CFS_BUF_INIT;
	struct xs_reader *nr;
	uint64_t start = s->fsize;
	int rc = 0;

	if (s->n == 0)
		return 0;
	if (s->fd < 0) {
		rc = tmp_anon(&s->fd, s->dirfd);
		if (rc)
			return rc;
	}
	nr = realloc(s->runs, (s->nruns + 1) * sizeof(*nr));
	if (!nr)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	s->runs = nr;
	qsort(s->v, s->n, sizeof(*s->v), xs_cmp);
	for (size_t i = 0; i < s->n && !rc; i++) {
		uint32_t len = s->v[i].len;

		if (cfs_buf_put(&b, &len, sizeof(len)) ||
		    cfs_buf_put(&b, s->v[i].p, len))
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		else if (b.len >= XS_WRITE_BUF || i + 1 == s->n) {
			rc = cfs_write_all(s->fd, b.ptr, b.len);
			s->fsize += b.len;
			b.len = 0;
		}
	}
	cfs_buf_free(&b);
	if (rc) {
		cfs_error_prefix("spill a sort run");
		return rc;
	}
	memset(&s->runs[s->nruns], 0, sizeof(s->runs[0]));
	s->runs[s->nruns].off = start;
	s->runs[s->nruns].end = s->fsize;
	s->nruns++;
	/* keep the blocks for the next run */
	for (size_t i = 0; i < s->nblocks; i++)
		s->blocks[i].used = 0;
	s->cur = 0;
	s->n = 0;
	s->mem = 0;
	return 0;
}

/* Room for len bytes in the blocks (a new block when none has it). */
static char *xs_alloc(struct xsort *s, size_t len)
{
	struct xs_block *bl;

	while (s->cur < s->nblocks &&
	       s->blocks[s->cur].size - s->blocks[s->cur].used < len)
		s->cur++;
	if (s->cur == s->nblocks) {
		size_t size = len > XS_BLOCK ? len : XS_BLOCK;
		struct xs_block *nb =
			realloc(s->blocks, (s->nblocks + 1) * sizeof(*nb));
		void *p;

		if (!nb)
			return NULL;
		s->blocks = nb;
		p = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return NULL;
		s->blocks[s->nblocks].p = p;
		s->blocks[s->nblocks].size = size;
		s->blocks[s->nblocks].used = 0;
		s->nblocks++;
	}
	bl = &s->blocks[s->cur];
	bl->used += len;
	return bl->p + bl->used - len;
}

/* Adds the record rec (len bytes, a NUL-terminated key first). */
static int xs_add(struct xsort *s, const void *rec, size_t len)
{
	char *p;

	if (len == 0 || len > UINT32_MAX / 2)
		return cfs_error_set(CFS_EINVAL, "sort record of %zu bytes",
				     len);
	if (s->n > 0 && s->mem + len + sizeof(struct xs_rec) > s->budget) {
		int rc = xs_spill(s);

		if (rc)
			return rc;
	}
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 1024;
		struct xs_rec *nv = realloc(s->v, nc * sizeof(*nv));

		if (!nv)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		s->v = nv;
		s->cap = nc;
	}
	p = xs_alloc(s, len);
	if (!p)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	memcpy(p, rec, len);
	s->v[s->n].p = p;
	s->v[s->n].len = (uint32_t)len;
	s->v[s->n].seq = s->seq++;
	s->n++;
	s->mem += len + sizeof(struct xs_rec);
	return 0;
}

/* Makes buf hold need bytes from pos on, reading the run. */
static int xr_fill(int fd, struct xs_reader *r, size_t need)
{
	if (r->len - r->pos >= need)
		return 0;
	memmove(r->buf, r->buf + r->pos, r->len - r->pos);
	r->len -= r->pos;
	r->pos = 0;
	if (need > r->cap) {
		char *nb = realloc(r->buf, need);

		if (!nb)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		r->buf = nb;
		r->cap = need;
	}
	while (r->len < need) {
		size_t want = r->cap - r->len;
		ssize_t got;

		if ((uint64_t)want > r->end - r->off)
			want = (size_t)(r->end - r->off);
		if (want == 0)
			return cfs_error_set(CFS_ECORRUPT,
					     "a sort run ends mid-record");
		got = pread(fd, r->buf + r->len, want, (off_t)r->off);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return cfs_error_errno(errno, "read a sort run");
		if (got == 0)
			return cfs_error_set(CFS_ECORRUPT,
					     "a sort run is truncated");
		r->off += (uint64_t)got;
		r->len += (size_t)got;
	}
	return 0;
}

/* The run's next record: 1, 0 at its end, or an error. */
static int xr_next(int fd, struct xs_reader *r)
{
	uint32_t len;
	int rc;

	if (r->pos == r->len && r->off == r->end)
		return 0;
	rc = xr_fill(fd, r, sizeof(len));
	if (!rc)
		memcpy(&len, r->buf + r->pos, sizeof(len));
	if (!rc)
		rc = xr_fill(fd, r, sizeof(len) + (size_t)len);
	if (rc)
		return rc;
	if (len == 0 || r->buf[r->pos + sizeof(len) + len - 1] != '\0')
		return cfs_error_set(CFS_ECORRUPT, "a sort run is damaged");
	r->rec = r->buf + r->pos + sizeof(len);
	r->rlen = len;
	r->pos += sizeof(len) + len;
	return 1;
}

static bool xh_less(const struct xsort *s, size_t a, size_t b)
{
	int c = strcmp(s->runs[a].rec, s->runs[b].rec);

	return c < 0 || (c == 0 && a < b);
}

static void xh_down(struct xsort *s, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i, t;

		if (l < s->nheap && xh_less(s, s->heap[l], s->heap[m]))
			m = l;
		if (r < s->nheap && xh_less(s, s->heap[r], s->heap[m]))
			m = r;
		if (m == i)
			return;
		t = s->heap[i];
		s->heap[i] = s->heap[m];
		s->heap[m] = t;
		i = m;
	}
}

/* Ends adding; the records come out of xs_next() in key order. */
static int xs_start(struct xsort *s)
{
	int rc;

	s->reading = true;
	if (s->nruns == 0) {
		if (s->n > 1)
			qsort(s->v, s->n, sizeof(*s->v), xs_cmp);
		return 0;
	}
	rc = xs_spill(s);
	if (rc)
		return rc;
	xs_free_blocks(s);
	s->heap = cfs_calloc(s->nruns, sizeof(*s->heap));
	if (!s->heap)
		return CFS_ENOMEM;
	for (size_t i = 0; i < s->nruns; i++) {
		struct xs_reader *r = &s->runs[i];

		r->buf = cfs_malloc(XS_READ_BUF);
		if (!r->buf)
			return CFS_ENOMEM;
		r->cap = XS_READ_BUF;
		rc = xr_next(s->fd, r);
		if (rc < 0)
			return rc;
		if (rc > 0)
			s->heap[s->nheap++] = i;
	}
	for (size_t i = s->nheap / 2; i-- > 0;)
		xh_down(s, i);
	return 0;
}

/* The next record in order (valid until the next call): 1, 0 at the end,
 * or an error. */
static int xs_next(struct xsort *s, const char **rec, size_t *len)
{
	if (s->nruns == 0) {
		if (s->at >= s->n)
			return 0;
		*rec = s->v[s->at].p;
		*len = s->v[s->at].len;
		s->at++;
		return 1;
	}
	if (s->last >= 0) {
		int rc = xr_next(s->fd, &s->runs[s->last]);

		if (rc < 0)
			return rc;
		if (rc == 0)
			s->heap[0] = s->heap[--s->nheap];
		if (s->nheap)
			xh_down(s, 0);
		s->last = -1;
	}
	if (s->nheap == 0)
		return 0;
	s->last = (ssize_t)s->heap[0];
	*rec = s->runs[s->last].rec;
	*len = s->runs[s->last].rlen;
	return 1;
}

/*
 * A sorted list's records one key at a time: of records with the same
 * key, the last added (a dict's "last one stays", as the reference's
 * lists become dicts).
 */
struct xs_cursor {
	struct xsort *s;
	struct cfs_buf cur, look;
	bool looked; /* look holds the record after cur */
};

static int buf_set(struct cfs_buf *b, const char *p, size_t len)
{
	b->len = 0;
	return cfs_buf_put(b, p, len)
		       ? cfs_error_set(CFS_ENOMEM, "out of memory")
		       : 0;
}

/* 1: cur holds the next key's record; 0: no more; or an error. */
static int xc_next(struct xs_cursor *c)
{
	const char *p;
	size_t len;
	int rc;

	if (!c->looked) {
		rc = xs_next(c->s, &p, &len);
		if (rc <= 0)
			return rc;
		rc = buf_set(&c->look, p, len);
		if (rc)
			return rc;
	}
	rc = buf_set(&c->cur, c->look.ptr, c->look.len);
	c->looked = false;
	while (!rc) {
		rc = xs_next(c->s, &p, &len);
		if (rc <= 0)
			break;
		if (strcmp(p, c->cur.ptr) == 0) {
			rc = buf_set(&c->cur, p, len);
		} else {
			rc = buf_set(&c->look, p, len);
			c->looked = !rc;
			break;
		}
	}
	return rc < 0 ? rc : 1;
}

/* ------------------------------------------------------------------ */
/* The previous index, read entry by entry                             */
/* ------------------------------------------------------------------ */

/* An entry of the "files" list longer than this makes the document
 * malformed (a path is at most 4,096 bytes). */
#define PREV_ENTRY_MAX (1u << 20)
#define PREV_CHUNK (64u << 10)

struct prev_src {
	int fd; /* or: */
	const char *mem;
	size_t memlen, mempos;
	char *buf;
	size_t cap, start, pos, len; /* buf[start, len) is held */
	bool keep; /* hold from start on while reading more */
	bool eof;
	bool too_long; /* an entry passed PREV_ENTRY_MAX: malformed */
};

/* Reads more: 1, 0 at the end (or past PREV_ENTRY_MAX held), or an error. */
static int ps_more(struct prev_src *r)
{
	size_t n = 0;

	if (r->eof)
		return 0;
	if (!r->keep)
		r->start = r->pos;
	if (r->start > 0) {
		memmove(r->buf, r->buf + r->start, r->len - r->start);
		r->pos -= r->start;
		r->len -= r->start;
		r->start = 0;
	}
	if (r->len == r->cap) {
		size_t nc = r->cap ? r->cap * 2 : PREV_CHUNK;
		char *nb;

		if (r->cap >= PREV_ENTRY_MAX) {
			r->too_long = r->eof = true;
			return 0;
		}
		nb = realloc(r->buf, nc);
		if (!nb)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		r->buf = nb;
		r->cap = nc;
	}
	if (r->fd >= 0) {
		ssize_t got;

		do
			got = read(r->fd, r->buf + r->len, r->cap - r->len);
		while (got < 0 && errno == EINTR);
		if (got < 0)
			return cfs_error_errno(errno, "read");
		n = (size_t)got;
	} else {
		n = r->memlen - r->mempos;
		if (n > r->cap - r->len)
			n = r->cap - r->len;
		if (n)
			memcpy(r->buf + r->len, r->mem + r->mempos, n);
		r->mempos += n;
	}
	if (n == 0) {
		r->eof = true;
		return 0;
	}
	r->len += n;
	return 1;
}

/* *c: the next byte (not taken), or -1 at the end. */
static inline int ps_peek(struct prev_src *r, int *c)
{
	while (r->pos == r->len) {
		int rc = ps_more(r);

		if (rc < 0)
			return rc;
		if (rc == 0) {
			*c = -1;
			return 0;
		}
	}
	*c = (unsigned char)r->buf[r->pos];
	return 0;
}

static int ps_ws(struct prev_src *r, int *c)
{
	int rc;

	while (!(rc = ps_peek(r, c)) &&
	       (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r'))
		r->pos++;
	return rc;
}

/*
 * Past the JSON value at pos, as cfs_index_from_json()'s js_skip() finds
 * it (syntax only loosely checked, the same way, so both read the same
 * entries of any document); *ok false if there is none.
 */
static int ps_skip(struct prev_src *r, bool *ok)
{
	size_t depth = 0;
	int c, rc;

	*ok = false;
	rc = ps_ws(r, &c);
	do {
		if (rc || c < 0)
			return rc;
		if (c == '"') {
			bool esc = false;

			for (r->pos++;; r->pos++) {
				rc = ps_peek(r, &c);
				if (rc || c < 0)
					return rc;
				if (esc)
					esc = false;
				else if (c == '\\')
					esc = true;
				else if (c == '"')
					break;
			}
			r->pos++;
		} else if (c == '{' || c == '[') {
			if (++depth > 512)
				return 0;
			r->pos++;
		} else if (c == '}' || c == ']') {
			if (depth == 0)
				return 0;
			depth--;
			r->pos++;
		} else if (depth > 0 && (c == ',' || c == ':' || c == ' ' ||
					 c == '\t' || c == '\n' || c == '\r')) {
			r->pos++;
		} else {
			size_t run = 0;

			/* a bare word; it ends at a delimiter or a NUL */
			while (c >= 0 && !strchr(",:]} \t\n\r\"{[", c)) {
				r->pos++;
				run++;
				rc = ps_peek(r, &c);
				if (rc)
					return rc;
			}
			if (run == 0)
				return 0;
			if (depth == 0)
				break;
		}
		if (depth > 0)
			rc = ps_peek(r, &c);
	} while (depth > 0);
	*ok = true;
	return 0;
}

/*
 * ps_skip() keeping the value's bytes: they are buf[start, pos) until
 * the next read.
 */
static int ps_take(struct prev_src *r, bool *ok)
{
	int rc;

	r->keep = true;
	r->start = r->pos;
	rc = ps_skip(r, ok);
	r->keep = false;
	return rc;
}

/*
 * Past the member name at pos (a string: any length, not held), *files
 * telling whether it is exactly "files" as written (no escapes), as
 * cfs_index_from_json() compares it.
 */
static int ps_key(struct prev_src *r, bool *files, bool *ok)
{
	static const char want[] = "\"files\"";
	size_t n = 0;
	bool same = true, esc = false;
	int c, rc;

	*ok = *files = false;
	for (;;) {
		rc = ps_peek(r, &c);
		if (rc || c < 0)
			return rc;
		r->pos++;
		same = same && n < 7 && c == want[n];
		if (n++ == 0)
			continue; /* the opening quote */
		if (esc)
			esc = false;
		else if (c == '\\')
			esc = true;
		else if (c == '"')
			break;
	}
	*files = same && n == 7;
	*ok = true;
	return 0;
}

/* Past blanks and one "," if there is one. */
static int ps_comma(struct prev_src *r)
{
	int c, rc = ps_ws(r, &c);

	if (!rc && c == ',')
		r->pos++;
	return rc;
}

/* The key of the record for an entry: "path\0sha256\0". */
static int prev_entry(struct xsort *s, struct cfs_buf *rec, const char *p,
		      size_t n)
{
	cJSON *it = cJSON_ParseWithLength(p, n);
	const char *path = cJSON_IsObject(it) ? cfs_json_str(it, "path") : NULL;
	const char *sha = path ? cfs_json_str(it, "sha256") : NULL;
	int rc = 0;

	if (path) {
		if (!sha || strlen(sha) >= 65)
			sha = "";
		rec->len = 0;
		if (cfs_buf_put(rec, path, strlen(path) + 1) ||
		    cfs_buf_put(rec, sha, strlen(sha) + 1))
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		else
			rc = xs_add(s, rec->ptr, rec->len);
	}
	cJSON_Delete(it);
	return rc;
}

/* The "files" entries of the document into s; *ok false if malformed. */
static int prev_parse(struct xsort *s, struct prev_src *r, bool *ok)
{
	struct cfs_buf rec = CFS_BUF_INIT;
	bool vok;
	int c, rc;

	*ok = false;
	rc = ps_ws(r, &c);
	if (rc || c != '{')
		goto out;
	r->pos++;
	for (;;) {
		bool files;

		rc = ps_ws(r, &c);
		if (rc)
			goto out;
		if (c == '}' || c < 0)
			break; /* an unclosed document keeps its entries */
		if (c != '"')
			goto out;
		rc = ps_key(r, &files, &vok);
		if (rc || !vok)
			goto out;
		rc = ps_ws(r, &c);
		if (rc || c != ':')
			goto out;
		r->pos++;
		rc = ps_ws(r, &c);
		if (rc)
			goto out;
		if (files && c == '[') {
			r->pos++;
			for (;;) {
				rc = ps_ws(r, &c);
				if (rc || c < 0)
					goto out;
				if (c == ']') {
					r->pos++;
					break;
				}
				rc = ps_take(r, &vok);
				if (!rc && vok)
					rc = prev_entry(s, &rec,
							r->buf + r->start,
							r->pos - r->start);
				if (!rc && vok)
					rc = ps_comma(r);
				if (rc || !vok)
					goto out;
			}
		} else {
			rc = ps_skip(r, &vok);
			if (rc || !vok)
				goto out;
		}
		rc = ps_comma(r);
		if (rc)
			goto out;
	}
	*ok = !r->too_long;
out:
	cfs_buf_free(&rec);
	return rc;
}

/* ------------------------------------------------------------------ */
/* The builder                                                         */
/* ------------------------------------------------------------------ */

struct cfs_record_build {
	int dirfd;
	struct xsort cur, prev, removed;
	struct recw files; /* fd -1 until the first file */
	size_t nfiles;
	bool prev_read;
	struct cfs_buf rec;
	size_t keep, nfirst, ntotal;
	struct cfs_version_change *first;
};

int cfs_record_build_new(struct cfs_record_build **out, int dirfd,
			 size_t sort_budget, size_t keep_first)
{
	struct cfs_record_build *b = cfs_calloc(1, sizeof(*b));

	*out = NULL;
	if (!b)
		return CFS_ENOMEM;
	if (!sort_budget)
		sort_budget = CFS_RECORD_SORT_BUDGET;
	b->dirfd = dirfd;
	xs_init(&b->cur, dirfd, sort_budget);
	xs_init(&b->prev, dirfd, sort_budget);
	xs_init(&b->removed, dirfd, sort_budget);
	b->files.fd = -1;
	b->keep = keep_first;
	if (keep_first) {
		b->first = cfs_calloc(keep_first, sizeof(*b->first));
		if (!b->first) {
			free(b);
			return CFS_ENOMEM;
		}
	}
	*out = b;
	return 0;
}

int cfs_record_build_file(struct cfs_record_build *b,
			  const struct cfs_file_entry *e)
{
	int rc = 0;

	if (b->files.fd < 0)
		rc = tmp_anon(&b->files.fd, b->dirfd);
	if (!rc)
		rc = recw_entry(&b->files, e, b->nfiles == 0);
	if (rc)
		return rc;
	b->nfiles++;
	b->rec.len = 0;
	if (cfs_buf_put(&b->rec, e->path, strlen(e->path) + 1) ||
	    cfs_buf_put(&b->rec, e->sha256, strlen(e->sha256) + 1))
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	return xs_add(&b->cur, b->rec.ptr, b->rec.len);
}

static int prev_read(struct cfs_record_build *b, struct prev_src *r)
{
	bool ok = false;
	int rc;

	if (b->prev_read)
		return cfs_error_set(CFS_EINVAL, "a second previous index");
	b->prev_read = true;
	rc = prev_parse(&b->prev, r, &ok);
	free(r->buf);
	if (!rc && !ok) {
		/* as the reference: an unreadable previous index is none */
		xs_free(&b->prev);
	}
	return rc;
}

int cfs_record_build_prev_fd(struct cfs_record_build *b, int fd)
{
	struct prev_src r = {.fd = fd};

	return prev_read(b, &r);
}

int cfs_record_build_prev_buf(struct cfs_record_build *b, const char *buf,
			      size_t len)
{
	struct prev_src r = {.fd = -1, .mem = buf, .memlen = buf ? len : 0};

	return prev_read(b, &r);
}

/* One change into the record (and the first ones kept). */
static int put_change(struct cfs_record_build *b, struct recw *w,
		      const char *path, enum cfs_change_type type)
{
	int rc = recw_change(w, path, type, b->ntotal == 0);

	if (rc)
		return rc;
	if (b->nfirst < b->keep) {
		b->first[b->nfirst].path = cfs_strdup(path);
		if (!b->first[b->nfirst].path)
			return CFS_ENOMEM;
		b->first[b->nfirst++].type = type;
	}
	b->ntotal++;
	return 0;
}

/* The sha256 of a record "path\0sha256\0". */
static const char *rec_sha(const struct cfs_buf *rec)
{
	return rec->ptr + strlen(rec->ptr) + 1;
}

/*
 * changedPaths: both lists merged in byte order; added and modified go
 * out as the merge finds them, removed ones wait in their own sorted
 * list (the reference lists them after all the others).
 */
static int put_diff(struct recw *w, void *payload, size_t *n)
{
	struct cfs_record_build *b = payload;
	struct xs_cursor c = {&b->cur, CFS_BUF_INIT, CFS_BUF_INIT, false};
	struct xs_cursor p = {&b->prev, CFS_BUF_INIT, CFS_BUF_INIT, false};
	struct xs_cursor d = {&b->removed, CFS_BUF_INIT, CFS_BUF_INIT, false};
	int rc, hc, hp;

	rc = xs_start(&b->cur);
	if (!rc)
		rc = xs_start(&b->prev);
	if (rc)
		goto out;
	hc = xc_next(&c);
	hp = xc_next(&p);
	if (hc < 0 || hp < 0) {
		rc = hc < 0 ? hc : hp;
		goto out;
	}
	while (hc > 0 || hp > 0) {
		int cmp = hc > 0 && hp > 0 ? strcmp(c.cur.ptr, p.cur.ptr)
			  : hc > 0	   ? -1
					   : 1;

		if (cmp < 0) {
			rc = put_change(b, w, c.cur.ptr, CFS_CHANGE_ADDED);
			hc = rc ? rc : xc_next(&c);
		} else if (cmp > 0) {
			rc = xs_add(&b->removed, p.cur.ptr,
				    strlen(p.cur.ptr) + 1);
			hp = rc ? rc : xc_next(&p);
		} else {
			if (!rec_sha(&p.cur)[0] ||
			    strcmp(rec_sha(&p.cur), rec_sha(&c.cur)) != 0)
				rc = put_change(b, w, c.cur.ptr,
						CFS_CHANGE_MODIFIED);
			hc = rc ? rc : xc_next(&c);
			hp = rc ? rc : xc_next(&p);
		}
		if (hc < 0 || hp < 0) {
			rc = hc < 0 ? hc : hp;
			goto out;
		}
	}
	rc = xs_start(&b->removed);
	while (!rc && (rc = xc_next(&d)) > 0)
		rc = put_change(b, w, d.cur.ptr, CFS_CHANGE_REMOVED);
out:
	cfs_buf_free(&c.cur);
	cfs_buf_free(&c.look);
	cfs_buf_free(&p.cur);
	cfs_buf_free(&p.look);
	cfs_buf_free(&d.cur);
	cfs_buf_free(&d.look);
	/* the lists' memory goes back before the file list is copied */
	xs_free(&b->cur);
	xs_free(&b->prev);
	xs_free(&b->removed);
	*n = b->ntotal;
	return rc;
}

/* The file list written so far, copied to w. */
static int put_files(struct recw *w, void *payload, size_t *n)
{
	struct cfs_record_build *b = payload;
	int rc;

	*n = b->nfiles;
	if (b->files.fd < 0)
		return 0;
	rc = recw_flush(&b->files);
	if (!rc)
		rc = recw_flush(w);
	if (!rc)
		rc = cfs_copy_fd(w->fd, b->files.fd, 0, b->files.total);
	if (rc)
		cfs_error_prefix("copy the file list");
	else
		w->total += b->files.total;
	return rc;
}

int cfs_record_build_finish(size_t *len_out, struct cfs_record_build *b, int fd,
			    const cJSON *record)
{
	const struct record_lists l = {put_diff, put_files, b};

	return record_write(len_out, fd, record, &l);
}

const struct cfs_version_change *
cfs_record_build_changes(const struct cfs_record_build *b, size_t *nfirst,
			 size_t *ntotal)
{
	if (nfirst)
		*nfirst = b->nfirst;
	if (ntotal)
		*ntotal = b->ntotal;
	return b->first;
}

size_t cfs_record_build_nfiles(const struct cfs_record_build *b)
{
	return b->nfiles;
}

void cfs_record_build_free(struct cfs_record_build *b)
{
	if (!b)
		return;
	xs_free(&b->cur);
	xs_free(&b->prev);
	xs_free(&b->removed);
	if (b->files.fd >= 0)
		close(b->files.fd);
	cfs_buf_free(&b->files.b);
	cfs_buf_free(&b->rec);
	for (size_t i = 0; i < b->nfirst; i++)
		free((char *)b->first[i].path);
	free(b->first);
	free(b);
}
