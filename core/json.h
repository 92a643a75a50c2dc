/*
 * JSON helpers over cJSON: a printer that matches the reference's byte
 * layout (JSON.stringify(x, null, 2) for manifest/lock; python's
 * json.dumps(sort_keys=True, indent=2) + "\n" for the in-bundle version
 * records), a capped parser that reports corrupt input, and typed getters.
 */
#ifndef CFS_CORE_JSON_H
#define CFS_CORE_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

enum cfs_json_flags {
	CFS_JSON_PRETTY = 1 << 0,    /* 2-space indent, ": " separators */
	CFS_JSON_SORT_KEYS = 1 << 1, /* object keys in byte order */
	CFS_JSON_NEWLINE = 1 << 2,   /* trailing "\n" */
	CFS_JSON_ASCII = 1 << 3,     /* \uXXXX-escape non-ASCII (python) */
	/* ASCII selects python's json.dumps conventions as a whole: also
	 * DEL escaped, non-integral numbers in repr() form, and without
	 * PRETTY the one-line ", " / ": " separators. Integral numbers print
	 * as integers in both personalities. */
};

/* Heap string (free()) or NULL with CFS_ENOMEM set. */
char *cfs_json_print(const cJSON *item, int flags);

/*
 * Appends one JSON string (quoted and escaped) or number to b exactly as
 * cfs_json_print() prints it with flags: for writers that format a large
 * regular structure without building a cJSON tree (the version record's
 * file list). 0 or CFS_ENOMEM.
 */
struct cfs_buf;
int cfs_json_put_string(struct cfs_buf *b, const char *s, int flags);
int cfs_json_put_number(struct cfs_buf *b, double x, int flags);

/*
 * Parses len bytes; on failure returns NULL with CFS_ECORRUPT and the
 * message "<what> is not valid JSON (at byte N)".
 */
cJSON *cfs_json_parse(const char *buf, size_t len, const char *what);

/* Getters: NULL / false when the member is missing or of another type. */
const char *cfs_json_str(const cJSON *obj, const char *key);
bool cfs_json_int(const cJSON *obj, const char *key, int64_t *out);
bool cfs_json_bool(const cJSON *obj, const char *key, bool *out);

/*
 * Replaces (or appends, keeping the order of other members) obj[key]; takes
 * ownership of val. Returns 0 or CFS_ENOMEM.
 */
int cfs_json_set(cJSON *obj, const char *key, cJSON *val);
int cfs_json_set_str(cJSON *obj, const char *key, const char *val);
int cfs_json_set_int(cJSON *obj, const char *key, int64_t val);

#endif
