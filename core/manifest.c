/*
 * The manifest document (REFERENCE.md §6, §13.1). The parsed cJSON tree is
 * the manifest: accessors read it, setters replace members in place or
 * append them, so unknown members and their order survive every rewrite,
 * as with the reference's {...manifest, field: value} spreads.
 *
 * Validation on parse is deliberately narrow: what the engine relies on
 * (id, counters, keys, metadata objects) must have the right type, anything
 * else is carried through untouched. Object keys are used as stored; the
 * store rejects keys that escape it and GC only ever deletes keys that are
 * replaceable for this id (cfs_key_replaceable).
 */
#include "core/manifest.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/ids.h"
#include "core/json.h"
#include "core/util.h"

struct cfs_manifest {
	cJSON *doc; /* always an object */
};

static const char *const default_layout[] = {
	"workspace", "memory", "artifacts", "logs", "cache", "config",
};

/* A non-negative integral JSON number that fits uint64 (and a double). */
static bool json_count(const cJSON *obj, const char *key, uint64_t *out)
{
	int64_t v;

	if (!cfs_json_int(obj, key, &v) || v < 0)
		return false;
	if (out)
		*out = (uint64_t)v;
	return true;
}

static int corrupt(const char *id, const char *what)
{
	const char *name = id ? id : "<id>";

	return cfs_error_set(CFS_ECORRUPT,
			     "manifest for %s is corrupt: %s; restore "
			     "contexts/%s/manifest.json from a backup (the "
			     "data objects are untouched)",
			     id ? id : "context", what, name);
}

/* Members that must have a given type when present. */
static int check_types(const cJSON *doc, const char *id)
{
	static const char *const counts[] = {
		"generation",
		"checkpointGeneration",
		"sizeBytes",
	};
	static const char *const strings[] = {
		"format",   "filesystem", "treeKey",
		"imageKey", "createdAt",  "updatedAt",
	};
	static const char *const objects[] = {
		"encryption",	 "treeEncryption",   "imageEncryption",
		"latestVersion", "latestCheckpoint",
	};
	char what[160];
	const cJSON *v;
	size_t i;

	for (i = 0; i < CFS_ARRAY_SIZE(counts); i++) {
		v = cJSON_GetObjectItemCaseSensitive(doc, counts[i]);
		if (v && !json_count(doc, counts[i], NULL)) {
			snprintf(what, sizeof(what),
				 "\"%s\" is not a non-negative integer",
				 counts[i]);
			return corrupt(id, what);
		}
	}
	for (i = 0; i < CFS_ARRAY_SIZE(strings); i++) {
		v = cJSON_GetObjectItemCaseSensitive(doc, strings[i]);
		if (v && (!cJSON_IsString(v) || !v->valuestring[0])) {
			snprintf(what, sizeof(what),
				 "\"%s\" is not a non-empty string",
				 strings[i]);
			return corrupt(id, what);
		}
	}
	for (i = 0; i < CFS_ARRAY_SIZE(objects); i++) {
		v = cJSON_GetObjectItemCaseSensitive(doc, objects[i]);
		if (v && !cJSON_IsObject(v)) {
			snprintf(what, sizeof(what), "\"%s\" is not an object",
				 objects[i]);
			return corrupt(id, what);
		}
	}
	v = cJSON_GetObjectItemCaseSensitive(doc, "versions");
	if (v && !cJSON_IsArray(v))
		return corrupt(id, "\"versions\" is not an array");
	v = cJSON_GetObjectItemCaseSensitive(doc, "checkpoints");
	if (v && !cJSON_IsArray(v))
		return corrupt(id, "\"checkpoints\" is not an array");
	if (!json_count(doc, "generation", NULL))
		return corrupt(id, "\"generation\" is missing");
	return 0;
}

static int set_dup(cJSON *doc, const char *key, const cJSON *val)
{
	return cfs_json_set(doc, key, cJSON_Duplicate(val, 1));
}

/* normalizeManifest: defaults appended in the reference's member order. */
static int normalize(cJSON *doc, const char *id)
{
	char key[CFS_KEY_MAX];
	const char *format;
	const cJSON *enc;
	bool tree;
	int rc;

	if (!cJSON_GetObjectItemCaseSensitive(doc, "format")) {
		rc = cfs_json_set_str(doc, "format", "ext4");
		if (rc)
			return rc;
	}
	format = cfs_json_str(doc, "format");
	tree = strcmp(format, "tree") == 0;
	if (!cJSON_GetObjectItemCaseSensitive(doc, "filesystem")) {
		/* §6: missing filesystem -> "ext4" (not a mirror of format) */
		rc = cfs_json_set_str(doc, "filesystem", "ext4");
		if (rc)
			return rc;
	}
	if (!cJSON_GetObjectItemCaseSensitive(doc, "imageKey")) {
		rc = cfs_key_legacy_image(key, id);
		if (!rc)
			rc = cfs_json_set_str(doc, "imageKey", key);
		if (rc)
			return rc;
	}
	if (!cJSON_GetObjectItemCaseSensitive(doc, "treeKey")) {
		rc = cfs_key_legacy_tree(key, id);
		if (!rc)
			rc = cfs_json_set_str(doc, "treeKey", key);
		if (rc)
			return rc;
	}
	enc = cJSON_GetObjectItemCaseSensitive(doc, "encryption");
	if (enc && tree &&
	    !cJSON_GetObjectItemCaseSensitive(doc, "treeEncryption")) {
		rc = set_dup(doc, "treeEncryption", enc);
		if (rc)
			return rc;
	}
	if (enc && !tree &&
	    !cJSON_GetObjectItemCaseSensitive(doc, "imageEncryption")) {
		rc = set_dup(doc, "imageEncryption", enc);
		if (rc)
			return rc;
	}
	return 0;
}

int cfs_manifest_parse(struct cfs_manifest **out, const char *buf, size_t len,
		       const char *id)
{
	struct cfs_manifest *m = NULL;
	cJSON *doc = NULL;
	const char *doc_id;
	char what[256];
	int rc;

	*out = NULL;
	if (len > CFS_MANIFEST_READ_MAX) {
		snprintf(what, sizeof(what),
			 "%zu bytes exceeds the %u byte cap", len,
			 CFS_MANIFEST_READ_MAX);
		return corrupt(id, what);
	}
	doc = cfs_json_parse(buf, len, "manifest.json");
	if (!doc) {
		if (cfs_error_last_code() == CFS_ENOMEM)
			return CFS_ENOMEM;
		snprintf(what, sizeof(what), "%s", cfs_error_last());
		return corrupt(id, what);
	}
	if (!cJSON_IsObject(doc)) {
		rc = corrupt(id, "not a JSON object");
		goto out;
	}
	doc_id = cfs_json_str(doc, "id");
	if (!doc_id || !cfs_id_valid(doc_id)) {
		rc = corrupt(id, "\"id\" is missing or not a valid context id");
		goto out;
	}
	if (id && strcmp(doc_id, id) != 0) {
		snprintf(what, sizeof(what), "it names context \"%.200s\"",
			 doc_id);
		rc = corrupt(id, what);
		goto out;
	}
	rc = check_types(doc, doc_id);
	if (rc)
		goto out;
	rc = normalize(doc, doc_id);
	if (rc)
		goto out;
	m = cfs_calloc(1, sizeof(*m));
	if (!m) {
		rc = CFS_ENOMEM;
		goto out;
	}
	m->doc = doc;
	doc = NULL;
	*out = m;
out:
	cJSON_Delete(doc);
	return rc;
}

static int add_str(cJSON *doc, const char *key, const char *val)
{
	return cJSON_AddStringToObject(doc, key, val) ? 0 : CFS_ENOMEM;
}

static int add_num(cJSON *doc, const char *key, uint64_t val)
{
	return cJSON_AddNumberToObject(doc, key, (double)val) ? 0 : CFS_ENOMEM;
}

static int add_dup(cJSON *doc, const char *key, const cJSON *val)
{
	cJSON *d = cJSON_Duplicate(val, 1);

	if (!d)
		return CFS_ENOMEM;
	if (!cJSON_AddItemToObject(doc, key, d)) {
		cJSON_Delete(d);
		return CFS_ENOMEM;
	}
	return 0;
}

int cfs_manifest_new_for_create(struct cfs_manifest **out,
				const struct cfs_manifest_init *init)
{
	struct cfs_manifest *m = NULL;
	cJSON *doc = NULL, *layout;
	char now[40];
	size_t i;
	int rc;

	*out = NULL;
	rc = cfs_id_check(init->id);
	if (rc)
		return rc;
	if (!init->format || !init->tree_key || !init->image_key ||
	    !cJSON_IsObject(init->encryption) ||
	    (init->tree_encryption && !cJSON_IsObject(init->tree_encryption)))
		return cfs_error_set(CFS_EINVAL,
				     "incomplete manifest for %s: format, "
				     "keys and encryption metadata required",
				     init->id);
	cfs_iso8601_ms(now, sizeof(now), init->now_ms);
	doc = cJSON_CreateObject();
	rc = doc ? 0 : CFS_ENOMEM;
	if (!rc)
		rc = add_num(doc, "version", 1);
	if (!rc)
		rc = add_str(doc, "id", init->id);
	if (!rc)
		rc = add_str(doc, "format", init->format);
	if (!rc)
		rc = add_str(doc, "filesystem", init->format);
	if (!rc)
		rc = add_num(doc, "sizeBytes", init->size_bytes);
	if (!rc)
		rc = add_num(doc, "generation", 1);
	if (!rc)
		rc = add_num(doc, "checkpointGeneration", 0);
	if (!rc)
		rc = add_str(doc, "imageKey", init->image_key);
	if (!rc)
		rc = add_str(doc, "treeKey", init->tree_key);
	if (!rc)
		rc = add_dup(doc, "encryption", init->encryption);
	if (!rc)
		rc = add_dup(doc, "treeEncryption",
			     init->tree_encryption ? init->tree_encryption
						   : init->encryption);
	if (!rc) {
		layout = cJSON_AddArrayToObject(doc, "layout");
		rc = layout ? 0 : CFS_ENOMEM;
		for (i = 0; !rc && i < CFS_ARRAY_SIZE(default_layout); i++) {
			if (!cJSON_AddItemToArray(
				    layout,
				    cJSON_CreateString(default_layout[i])))
				rc = CFS_ENOMEM;
		}
	}
	if (!rc)
		rc = cJSON_AddArrayToObject(doc, "versions") ? 0 : CFS_ENOMEM;
	if (!rc && init->policy)
		rc = add_dup(doc, "persistencePolicy", init->policy);
	if (!rc)
		rc = add_str(doc, "createdAt", now);
	if (!rc)
		rc = add_str(doc, "updatedAt", now);
	if (rc)
		goto out;
	m = cfs_calloc(1, sizeof(*m));
	if (!m) {
		rc = CFS_ENOMEM;
		goto out;
	}
	m->doc = doc;
	doc = NULL;
	*out = m;
out:
	cJSON_Delete(doc);
	if (rc == CFS_ENOMEM)
		cfs_error_set(CFS_ENOMEM, "out of memory building manifest");
	return rc;
}

int cfs_manifest_dup(struct cfs_manifest **out, const struct cfs_manifest *m)
{
	struct cfs_manifest *d;

	*out = NULL;
	d = cfs_calloc(1, sizeof(*d));
	if (!d)
		return CFS_ENOMEM;
	d->doc = cJSON_Duplicate(m->doc, 1);
	if (!d->doc) {
		free(d);
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	}
	*out = d;
	return 0;
}

void cfs_manifest_free(struct cfs_manifest *m)
{
	if (!m)
		return;
	cJSON_Delete(m->doc);
	free(m);
}

char *cfs_manifest_print(const struct cfs_manifest *m)
{
	return cfs_json_print(m->doc, CFS_JSON_PRETTY);
}

const cJSON *cfs_manifest_json(const struct cfs_manifest *m)
{
	return m->doc;
}

/* ---- getters ---------------------------------------------------------- */

static const cJSON *member(const struct cfs_manifest *m, const char *key)
{
	return cJSON_GetObjectItemCaseSensitive(m->doc, key);
}

static const cJSON *member_obj(const struct cfs_manifest *m, const char *key)
{
	const cJSON *v = member(m, key);

	return cJSON_IsObject(v) ? v : NULL;
}

static uint64_t member_count(const struct cfs_manifest *m, const char *key)
{
	uint64_t v = 0;

	return json_count(m->doc, key, &v) ? v : 0;
}

const char *cfs_manifest_id(const struct cfs_manifest *m)
{
	return cfs_json_str(m->doc, "id");
}

const char *cfs_manifest_format(const struct cfs_manifest *m)
{
	return cfs_json_str(m->doc, "format");
}

bool cfs_manifest_is_tree(const struct cfs_manifest *m)
{
	const char *f = cfs_manifest_format(m);

	return f && strcmp(f, "tree") == 0;
}

uint64_t cfs_manifest_generation(const struct cfs_manifest *m)
{
	return member_count(m, "generation");
}

uint64_t cfs_manifest_checkpoint_generation(const struct cfs_manifest *m)
{
	return member_count(m, "checkpointGeneration");
}

uint64_t cfs_manifest_size_bytes(const struct cfs_manifest *m)
{
	return member_count(m, "sizeBytes");
}

const char *cfs_manifest_tree_key(const struct cfs_manifest *m)
{
	return cfs_json_str(m->doc, "treeKey");
}

const char *cfs_manifest_image_key(const struct cfs_manifest *m)
{
	return cfs_json_str(m->doc, "imageKey");
}

const char *cfs_manifest_created_at(const struct cfs_manifest *m)
{
	return cfs_json_str(m->doc, "createdAt");
}

const char *cfs_manifest_updated_at(const struct cfs_manifest *m)
{
	return cfs_json_str(m->doc, "updatedAt");
}

const cJSON *cfs_manifest_encryption(const struct cfs_manifest *m)
{
	return member_obj(m, "encryption");
}

const cJSON *cfs_manifest_tree_encryption(const struct cfs_manifest *m)
{
	return member_obj(m, "treeEncryption");
}

const cJSON *cfs_manifest_image_encryption(const struct cfs_manifest *m)
{
	return member_obj(m, "imageEncryption");
}

const cJSON *cfs_manifest_policy(const struct cfs_manifest *m)
{
	return member_obj(m, "persistencePolicy");
}

const cJSON *cfs_manifest_runtime_state(const struct cfs_manifest *m)
{
	return member_obj(m, "runtimeState");
}

const cJSON *cfs_manifest_versions(const struct cfs_manifest *m)
{
	const cJSON *v = member(m, "versions");

	return cJSON_IsArray(v) ? v : NULL;
}

const cJSON *cfs_manifest_latest_version(const struct cfs_manifest *m)
{
	return member_obj(m, "latestVersion");
}

const cJSON *cfs_manifest_latest_checkpoint(const struct cfs_manifest *m)
{
	return member_obj(m, "latestCheckpoint");
}

const cJSON *cfs_manifest_checkpoints(const struct cfs_manifest *m)
{
	const cJSON *v = member(m, "checkpoints");

	return cJSON_IsArray(v) ? v : NULL;
}

/* ---- setters ---------------------------------------------------------- */

static int set_count(struct cfs_manifest *m, const char *key, uint64_t v)
{
	/* Doubles carry integers exactly up to 2^53 (JS Number). */
	if (v > (1ull << 53))
		return cfs_error_set(CFS_EINVAL,
				     "%s %" PRIu64 " is out of range", key, v);
	return cfs_json_set(m->doc, key, cJSON_CreateNumber((double)v));
}

static int set_obj(struct cfs_manifest *m, const char *key, const cJSON *v)
{
	if (!cJSON_IsObject(v))
		return cfs_error_set(CFS_EINVAL,
				     "manifest %s must be an object", key);
	return set_dup(m->doc, key, v);
}

static int set_nonempty(struct cfs_manifest *m, const char *key, const char *v)
{
	if (!v || !*v)
		return cfs_error_set(CFS_EINVAL,
				     "manifest %s must not be empty", key);
	return cfs_json_set_str(m->doc, key, v);
}

int cfs_manifest_set_format(struct cfs_manifest *m, const char *format)
{
	int rc = set_nonempty(m, "format", format);

	return rc ? rc : cfs_json_set_str(m->doc, "filesystem", format);
}

int cfs_manifest_set_generation(struct cfs_manifest *m, uint64_t gen)
{
	return set_count(m, "generation", gen);
}

int cfs_manifest_set_checkpoint_generation(struct cfs_manifest *m, uint64_t n)
{
	return set_count(m, "checkpointGeneration", n);
}

int cfs_manifest_set_size_bytes(struct cfs_manifest *m, uint64_t size)
{
	return set_count(m, "sizeBytes", size);
}

int cfs_manifest_set_tree_key(struct cfs_manifest *m, const char *key)
{
	return set_nonempty(m, "treeKey", key);
}

int cfs_manifest_set_image_key(struct cfs_manifest *m, const char *key)
{
	return set_nonempty(m, "imageKey", key);
}

int cfs_manifest_set_encryption(struct cfs_manifest *m, const cJSON *enc)
{
	int rc = set_obj(m, "encryption", enc);

	return rc ? rc : set_obj(m, "treeEncryption", enc);
}

int cfs_manifest_set_tree_encryption(struct cfs_manifest *m, const cJSON *enc)
{
	return set_obj(m, "treeEncryption", enc);
}

int cfs_manifest_set_image_encryption(struct cfs_manifest *m, const cJSON *enc)
{
	return set_obj(m, "imageEncryption", enc);
}

int cfs_manifest_set_policy(struct cfs_manifest *m, const cJSON *policy)
{
	return set_obj(m, "persistencePolicy", policy);
}

int cfs_manifest_set_runtime_state(struct cfs_manifest *m, const cJSON *state)
{
	return set_obj(m, "runtimeState", state);
}

int cfs_manifest_set_updated_at(struct cfs_manifest *m, int64_t now_ms)
{
	char now[40];

	cfs_iso8601_ms(now, sizeof(now), now_ms);
	return cfs_json_set_str(m->doc, "updatedAt", now);
}

/* ---- versions --------------------------------------------------------- */

/* obj[key] as an array, appended (empty) when missing. */
static cJSON *array_member(cJSON *obj, const char *key)
{
	cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, key);

	if (cJSON_IsArray(a))
		return a;
	if (cfs_json_set(obj, key, cJSON_CreateArray()))
		return NULL;
	return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/*
 * Keeps the first keep entries of summary's changedPaths; the number there
 * was is recorded as "changedPathsTotal" (kept if already there).
 */
static int cut_changed_paths(cJSON *summary, int keep)
{
	cJSON *cp = cJSON_GetObjectItemCaseSensitive(summary, "changedPaths");
	int n = cJSON_IsArray(cp) ? cJSON_GetArraySize(cp) : 0;
	int rc = 0;

	if (n <= keep)
		return 0;
	if (!cJSON_GetObjectItemCaseSensitive(summary, "changedPathsTotal"))
		rc = cfs_json_set(summary, "changedPathsTotal",
				  cJSON_CreateNumber((double)n));
	/* from the tail: cJSON's head->prev is the last item, O(1) each */
	for (; !rc && n > keep; n--)
		cJSON_Delete(cJSON_DetachItemViaPointer(cp, cp->child->prev));
	return rc;
}

int cfs_manifest_fit(struct cfs_manifest *m, size_t max_bytes)
{
	cJSON *versions = cJSON_GetObjectItemCaseSensitive(m->doc, "versions");
	char *body;
	size_t len;
	int i = 0, rc;

	for (;;) {
		body = cfs_manifest_print(m);
		if (!body)
			return CFS_ENOMEM;
		len = strlen(body);
		free(body);
		if (len <= max_bytes)
			return 0;
		/* the oldest summary that still lists paths */
		for (; cJSON_IsArray(versions) &&
		       i < cJSON_GetArraySize(versions);
		     i++) {
			cJSON *cp = cJSON_GetObjectItemCaseSensitive(
				cJSON_GetArrayItem(versions, i),
				"changedPaths");

			if (cJSON_IsArray(cp) && cJSON_GetArraySize(cp) > 0)
				break;
		}
		if (!cJSON_IsArray(versions) ||
		    i >= cJSON_GetArraySize(versions))
			return cfs_error_set(CFS_EUNSUPPORTED,
					     "the manifest would be %zu bytes, "
					     "above the %zu bytes readers "
					     "accept; nothing was written",
					     len, max_bytes);
		rc = cut_changed_paths(cJSON_GetArrayItem(versions, i), 0);
		if (rc)
			return rc;
	}
}

int cfs_manifest_add_version(struct cfs_manifest *m, const cJSON *record,
			     const char *tree_key, const cJSON *tree_enc,
			     uint64_t size_bytes, cJSON **dropped)
{
	cJSON *summary = NULL, *versions, *gone = NULL, *old;
	int rc;

	if (dropped)
		*dropped = NULL;
	if (!cJSON_IsObject(record) || !json_count(record, "generation", NULL))
		return cfs_error_set(CFS_EINVAL,
				     "version record must be an object with "
				     "a generation");
	summary = cJSON_Duplicate(record, 1);
	if (!summary)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	/* The manifest keeps summaries; file lists live in the bundle. */
	rc = cfs_json_set(summary, "files", cJSON_CreateArray());
	if (!rc)
		rc = cut_changed_paths(summary, CFS_MANIFEST_CHANGED_PATHS_MAX);
	if (!rc && tree_key)
		rc = cfs_json_set_str(summary, "treeKey", tree_key);
	if (!rc && tree_key && tree_enc)
		rc = set_dup(summary, "treeEncryption", tree_enc);
	if (!rc && tree_key)
		rc = cfs_json_set(summary, "sizeBytes",
				  cJSON_CreateNumber((double)size_bytes));
	if (rc)
		goto out;
	/* versions before latestVersion: the reference's member order when
	 * both are new. */
	versions = array_member(m->doc, "versions");
	if (!versions) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = set_dup(m->doc, "latestVersion", summary);
	if (rc)
		goto out;
	if (!cJSON_AddItemToArray(versions, summary)) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	summary = NULL;
	if (dropped) {
		gone = cJSON_CreateArray();
		if (!gone) {
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
			goto out;
		}
	}
	while (cJSON_GetArraySize(versions) > CFS_MANIFEST_VERSIONS_MAX) {
		old = cJSON_DetachItemFromArray(versions, 0);
		if (gone)
			cJSON_AddItemToArray(gone, old);
		else
			cJSON_Delete(old);
	}
	if (dropped) {
		*dropped = gone;
		gone = NULL;
	}
out:
	cJSON_Delete(summary);
	cJSON_Delete(gone);
	return rc;
}

static bool has_generation(const cJSON *rec, uint64_t gen)
{
	uint64_t g;

	return cJSON_IsObject(rec) && json_count(rec, "generation", &g) &&
	       g == gen;
}

const cJSON *cfs_manifest_version_find(const struct cfs_manifest *m,
				       uint64_t gen)
{
	const cJSON *versions = cfs_manifest_versions(m), *v, *found = NULL;

	cJSON_ArrayForEach(v, versions)
	{
		if (has_generation(v, gen))
			found = v; /* the last one wins */
	}
	if (found)
		return found;
	v = cfs_manifest_latest_version(m);
	return has_generation(v, gen) ? v : NULL;
}

/* ---- checkpoints ------------------------------------------------------ */

cJSON *cfs_manifest_checkpoint_record_new(uint64_t n, const char *reason,
					  int64_t now_ms, const char *tree_key,
					  uint64_t size_bytes, const cJSON *enc)
{
	cJSON *rec = cJSON_CreateObject();
	char now[40];
	int rc;

	if (!rec || !tree_key)
		goto fail;
	cfs_iso8601_ms(now, sizeof(now), now_ms);
	rc = add_num(rec, "version", 1);
	if (!rc)
		rc = add_num(rec, "generation", n);
	if (!rc)
		rc = add_str(rec, "reason", reason ? reason : "manual");
	if (!rc)
		rc = add_str(rec, "timestamp", now);
	if (!rc)
		rc = add_str(rec, "treeKey", tree_key);
	if (!rc)
		rc = add_num(rec, "sizeBytes", size_bytes);
	if (!rc && enc)
		rc = add_dup(rec, "encryption", enc);
	if (rc)
		goto fail;
	return rec;
fail:
	cJSON_Delete(rec);
	cfs_error_set(tree_key ? CFS_ENOMEM : CFS_EINVAL,
		      tree_key ? "out of memory" : "checkpoint needs a key");
	return NULL;
}

static void remove_checkpoint_entries(cJSON *arr, uint64_t n)
{
	cJSON *c = arr ? arr->child : NULL, *next;

	for (; c; c = next) {
		next = c->next;
		if (has_generation(c, n))
			cJSON_Delete(cJSON_DetachItemViaPointer(arr, c));
	}
}

int cfs_manifest_add_checkpoint(struct cfs_manifest *m, const cJSON *record)
{
	cJSON *arr, *copy;
	uint64_t n;
	int rc;

	if (!cJSON_IsObject(record) || !json_count(record, "generation", &n) ||
	    !cfs_json_str(record, "treeKey"))
		return cfs_error_set(CFS_EINVAL,
				     "checkpoint record needs a generation "
				     "and a treeKey");
	rc = set_dup(m->doc, "latestCheckpoint", record);
	if (rc)
		return rc;
	arr = array_member(m->doc, "checkpoints");
	if (!arr)
		return CFS_ENOMEM;
	remove_checkpoint_entries(arr, n);
	copy = cJSON_Duplicate(record, 1);
	if (!copy || !cJSON_AddItemToArray(arr, copy)) {
		cJSON_Delete(copy);
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	}
	return 0;
}

int cfs_manifest_remove_checkpoint(struct cfs_manifest *m, uint64_t n)
{
	cJSON *arr = cJSON_GetObjectItemCaseSensitive(m->doc, "checkpoints");

	if (cJSON_IsArray(arr))
		remove_checkpoint_entries(arr, n);
	return 0;
}

/* ---- lookups ---------------------------------------------------------- */

static uint64_t count_or_zero(const cJSON *obj, const char *key)
{
	uint64_t v = 0;

	return json_count(obj, key, &v) ? v : 0;
}

int cfs_manifest_generation_lookup(const struct cfs_manifest *m, uint64_t gen,
				   const char **tree_key, const cJSON **enc,
				   uint64_t *size)
{
	const char *id = cfs_manifest_id(m), *key = cfs_manifest_tree_key(m);
	uint64_t cur = cfs_manifest_generation(m);
	char ckpt[CFS_KEY_MAX];
	const cJSON *rec, *e;

	if (gen == 0 || gen > cur)
		return cfs_error_set(CFS_ENOTFOUND,
				     "context %s has no generation %" PRIu64
				     " (latest is %" PRIu64 ")",
				     id, gen, cur);
	/* The current bundle, unless a checkpoint has replaced it (a tree/
	 * key of this generation, or a legacy current.* key). */
	if (cfs_key_checkpoint_prefix(ckpt, id))
		return cfs_error_last_code();
	if (gen == cur && key && strncmp(key, ckpt, strlen(ckpt)) != 0) {
		e = cfs_manifest_tree_encryption(m);
		if (!e && cfs_manifest_is_tree(m))
			e = cfs_manifest_encryption(m);
		if (e) {
			if (tree_key)
				*tree_key = key;
			if (enc)
				*enc = e;
			if (size)
				*size = cfs_manifest_size_bytes(m);
			return 0;
		}
	}
	rec = cfs_manifest_version_find(m, gen);
	if (rec && cfs_json_str(rec, "treeKey") &&
	    cJSON_IsObject(
		    cJSON_GetObjectItemCaseSensitive(rec, "treeEncryption"))) {
		if (tree_key)
			*tree_key = cfs_json_str(rec, "treeKey");
		if (enc)
			*enc = cJSON_GetObjectItemCaseSensitive(
				rec, "treeEncryption");
		if (size)
			*size = count_or_zero(rec, "sizeBytes");
		return 0;
	}
	return cfs_error_set(CFS_ENOTFOUND,
			     "generation %" PRIu64 " of context %s is not "
			     "retained (its bundle was superseded; the "
			     "manifest records no key for it)",
			     gen, id);
}

int cfs_manifest_checkpoint_lookup(const struct cfs_manifest *m, uint64_t n,
				   const char **tree_key, const cJSON **enc,
				   uint64_t *size)
{
	const char *id = cfs_manifest_id(m), *key;
	const cJSON *arr = cfs_manifest_checkpoints(m), *c, *found = NULL, *e;

	if (n == 0 || n > cfs_manifest_checkpoint_generation(m))
		return cfs_error_set(CFS_ENOTFOUND,
				     "context %s has no checkpoint %" PRIu64
				     " (latest is %" PRIu64 ")",
				     id, n,
				     cfs_manifest_checkpoint_generation(m));
	cJSON_ArrayForEach(c, arr)
	{
		if (has_generation(c, n) && cfs_json_str(c, "treeKey") &&
		    cJSON_IsObject(
			    cJSON_GetObjectItemCaseSensitive(c, "encryption")))
			found = c;
	}
	c = cfs_manifest_latest_checkpoint(m);
	if (!found && has_generation(c, n) && cfs_json_str(c, "treeKey")) {
		e = cJSON_GetObjectItemCaseSensitive(c, "encryption");
		key = cfs_json_str(c, "treeKey");
		if (cJSON_IsObject(e)) {
			found = c;
		} else if (cfs_manifest_tree_key(m) &&
			   strcmp(cfs_manifest_tree_key(m), key) == 0 &&
			   cfs_manifest_tree_encryption(m)) {
			/* Still current: the reference keeps its metadata
			 * only in treeEncryption. */
			if (tree_key)
				*tree_key = key;
			if (enc)
				*enc = cfs_manifest_tree_encryption(m);
			if (size)
				*size = count_or_zero(c, "sizeBytes");
			return 0;
		}
	}
	if (found) {
		if (tree_key)
			*tree_key = cfs_json_str(found, "treeKey");
		if (enc)
			*enc = cJSON_GetObjectItemCaseSensitive(found,
								"encryption");
		if (size)
			*size = count_or_zero(found, "sizeBytes");
		return 0;
	}
	return cfs_error_set(CFS_ENOTFOUND,
			     "checkpoint %" PRIu64 " of context %s cannot be "
			     "read: the manifest no longer records its "
			     "encryption metadata (a later save replaced it)",
			     n, id);
}
