/*
 * AES-256-GCM object encryption, scrypt/raw key handling and the
 * EncryptionMetadata codec (see core/crypto.h and REFERENCE §4).
 *
 * Secrets (passphrase, raw key, derived keys) live in sodium_malloc memory
 * owned by struct cfs_keys. A cipher copies its key onto the stack only for
 * the EVP setup call and wipes the copy right after.
 */
#include "core/crypto.h"
#include "core/error.h"
#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const struct cfs_scrypt_params cfs_scrypt_defaults = {131072, 8, 1};
const struct cfs_scrypt_params cfs_scrypt_legacy = {16384, 8, 1};

#define ALGORITHM "aes-256-gcm"
/* GCM's limit on one message: 2^39 - 256 bits. */
#define GCM_MAX_BYTES ((((uint64_t)1 << 39) - 256) / 8)
/* Derived keys kept for decryption (LRU). */
#define KEY_CACHE_SLOTS 8

#define AUTH_FAILED_MSG                                                        \
	"decryption failed: the key is wrong or the encrypted object (or its " \
	"metadata) was modified"

/* ------------------------------------------------------------------ */
/* scrypt */

int cfs_scrypt_params_validate(const struct cfs_scrypt_params *p)
{
	uint64_t mem;

	if (p->cost < 2 || (p->cost & (p->cost - 1)) != 0)
		return cfs_error_set(
			CFS_EINVAL,
			"scrypt cost must be a power of two greater than one");
	if (p->block_size < 1)
		return cfs_error_set(
			CFS_EINVAL,
			"scrypt blockSize must be a positive integer");
	if (p->parallelization < 1)
		return cfs_error_set(
			CFS_EINVAL,
			"scrypt parallelization must be a positive integer");
	if (p->cost > CFS_SCRYPT_MAX_MEM / 128 / p->block_size)
		return cfs_error_set(
			CFS_EINVAL,
			"scrypt cost %" PRIu64 " with blockSize %" PRIu32
			" needs more than the %" PRIu64 " MiB cap",
			p->cost, p->block_size, CFS_SCRYPT_MAX_MEM >> 20);
	mem = (uint64_t)p->block_size * p->parallelization;
	if (p->parallelization > CFS_SCRYPT_MAX_P || mem >= ((uint64_t)1 << 30))
		return cfs_error_set(CFS_EINVAL,
				     "scrypt parallelization %" PRIu32
				     " is above the cap of %d",
				     p->parallelization, CFS_SCRYPT_MAX_P);
	return 0;
}

int cfs_scrypt(uint8_t *out, size_t outlen, const void *pass, size_t passlen,
	       const uint8_t *salt, size_t saltlen,
	       const struct cfs_scrypt_params *p)
{
	int rc = cfs_scrypt_params_validate(p);

	if (rc)
		return rc;
	if (crypto_pwhash_scryptsalsa208sha256_ll(
		    (const uint8_t *)pass, passlen, salt, saltlen, p->cost,
		    p->block_size, p->parallelization, out, outlen) != 0) {
		if (errno == ENOMEM)
			return cfs_error_set(CFS_ENOMEM,
					     "out of memory running scrypt");
		return cfs_error_set(CFS_EINVAL,
				     "scrypt rejected its parameters");
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Metadata codec */

/*
 * Decodes obj[name] (standard base64, padded) into out (CFS_ENCMETA_MAX_BIN
 * bytes). Anything that would decode to more is refused before decoding.
 */
static int b64_member(uint8_t *out, size_t *outlen, const cJSON *obj,
		      const char *name, bool required)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	uint8_t scratch[CFS_ENCMETA_MAX_BIN + 3];
	size_t slen, n = 0;

	*outlen = 0;
	if (!v || cJSON_IsNull(v)) {
		if (required)
			return cfs_error_set(
				CFS_ECORRUPT,
				"encryption metadata is missing %s", name);
		return 0;
	}
	if (!cJSON_IsString(v))
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata %s is not a string",
				     name);
	slen = strlen(v->valuestring);
	if (slen > (CFS_ENCMETA_MAX_BIN + 2) / 3 * 4)
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata %s is longer than "
				     "%d bytes",
				     name, CFS_ENCMETA_MAX_BIN);
	if (sodium_base642bin(scratch, sizeof(scratch), v->valuestring, slen,
			      NULL, &n, NULL,
			      sodium_base64_VARIANT_ORIGINAL) != 0)
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata %s is not valid "
				     "base64",
				     name);
	if (n > CFS_ENCMETA_MAX_BIN)
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata %s is longer than "
				     "%d bytes",
				     name, CFS_ENCMETA_MAX_BIN);
	memcpy(out, scratch, n);
	*outlen = n;
	return 0;
}

static int name_member(char *out, const cJSON *obj, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	size_t n;

	if (!v)
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata is missing %s", name);
	if (!cJSON_IsString(v))
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata %s is not a string",
				     name);
	n = strlen(v->valuestring);
	if (n >= CFS_ENCMETA_MAX_NAME)
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata %s is too long",
				     name);
	memcpy(out, v->valuestring, n + 1);
	return 0;
}

/* A JSON number that is a non-negative integer <= max. */
static int uint_member(uint64_t *out, const cJSON *obj, const char *name,
		       uint64_t max)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	double d;

	if (!v || !cJSON_IsNumber(v))
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata scrypt.%s is missing "
				     "or not a number",
				     name);
	d = v->valuedouble;
	if (!(d >= 0) || d > (double)max || d != (double)(uint64_t)d)
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata scrypt.%s is not a "
				     "valid integer",
				     name);
	*out = (uint64_t)d;
	return 0;
}

int cfs_encmeta_from_json(struct cfs_encmeta *out, const cJSON *obj)
{
	const cJSON *v;
	uint64_t u = 0;
	double d;
	int rc;

	memset(out, 0, sizeof(*out));
	if (!cJSON_IsObject(obj))
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata is not an object");

	v = cJSON_GetObjectItemCaseSensitive(obj, "version");
	if (!v || !cJSON_IsNumber(v))
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata version is missing "
				     "or not a number");
	d = v->valuedouble;
	/* Out-of-range or fractional versions are reported as "unsupported". */
	if (d != d || d > 1e15 || d < -1e15 || d != (double)(int64_t)d)
		out->version = -1;
	else
		out->version = (int64_t)d;

	rc = name_member(out->algorithm, obj, "algorithm");
	if (rc)
		return rc;
	rc = name_member(out->kdf_name, obj, "keyDerivation");
	if (rc)
		return rc;
	if (strcmp(out->kdf_name, "raw") == 0)
		out->kdf = CFS_KDF_RAW;
	else if (strcmp(out->kdf_name, "scrypt") == 0)
		out->kdf = CFS_KDF_SCRYPT;
	else
		out->kdf = CFS_KDF_UNKNOWN;

	rc = b64_member(out->salt, &out->salt_len, obj, "salt", false);
	if (!rc)
		rc = b64_member(out->nonce, &out->nonce_len, obj, "nonce",
				true);
	if (!rc)
		rc = b64_member(out->tag, &out->tag_len, obj, "authTag", true);
	if (rc)
		return rc;

	v = cJSON_GetObjectItemCaseSensitive(obj, "scrypt");
	if (v && !cJSON_IsNull(v)) {
		if (!cJSON_IsObject(v))
			return cfs_error_set(
				CFS_ECORRUPT,
				"encryption metadata scrypt is not "
				"an object");
		rc = uint_member(&out->scrypt.cost, v, "cost",
				 (uint64_t)1 << 53);
		if (!rc)
			rc = uint_member(&u, v, "blockSize", UINT32_MAX);
		if (!rc) {
			out->scrypt.block_size = (uint32_t)u;
			rc = uint_member(&u, v, "parallelization", UINT32_MAX);
		}
		if (rc)
			return rc;
		out->scrypt.parallelization = (uint32_t)u;
		out->has_scrypt = true;
	}
	return 0;
}

struct cfs_scrypt_params cfs_encmeta_scrypt_params(const struct cfs_encmeta *m)
{
	return m->has_scrypt ? m->scrypt : cfs_scrypt_legacy;
}

static int add_b64(cJSON *obj, const char *name, const uint8_t *bin, size_t len)
{
	char buf[sodium_base64_ENCODED_LEN(CFS_ENCMETA_MAX_BIN,
					   sodium_base64_VARIANT_ORIGINAL)];

	if (len > CFS_ENCMETA_MAX_BIN)
		return CFS_EINVAL;
	sodium_bin2base64(buf, sizeof(buf), bin, len,
			  sodium_base64_VARIANT_ORIGINAL);
	return cJSON_AddStringToObject(obj, name, buf) ? 0 : CFS_ENOMEM;
}

cJSON *cfs_encmeta_to_json(const struct cfs_encmeta *m)
{
	cJSON *obj = NULL, *s;
	const char *kdf;

	switch (m->kdf) {
	case CFS_KDF_RAW:
		kdf = "raw";
		break;
	case CFS_KDF_SCRYPT:
		kdf = "scrypt";
		break;
	default:
		cfs_error_set(CFS_EINVAL,
			      "cannot encode encryption metadata with key "
			      "derivation \"%s\"",
			      m->kdf_name);
		return NULL;
	}
	obj = cJSON_CreateObject();
	if (!obj)
		goto nomem;
	if (!cJSON_AddNumberToObject(obj, "version", (double)m->version) ||
	    !cJSON_AddStringToObject(obj, "algorithm", m->algorithm) ||
	    !cJSON_AddStringToObject(obj, "keyDerivation", kdf))
		goto nomem;
	if (m->kdf == CFS_KDF_SCRYPT && m->salt_len &&
	    add_b64(obj, "salt", m->salt, m->salt_len))
		goto nomem;
	if (add_b64(obj, "nonce", m->nonce, m->nonce_len) ||
	    add_b64(obj, "authTag", m->tag, m->tag_len))
		goto nomem;
	if (m->kdf == CFS_KDF_SCRYPT && m->has_scrypt) {
		s = cJSON_AddObjectToObject(obj, "scrypt");
		if (!s ||
		    !cJSON_AddNumberToObject(s, "cost",
					     (double)m->scrypt.cost) ||
		    !cJSON_AddNumberToObject(s, "blockSize",
					     m->scrypt.block_size) ||
		    !cJSON_AddNumberToObject(s, "parallelization",
					     m->scrypt.parallelization))
			goto nomem;
	}
	return obj;
nomem:
	cJSON_Delete(obj);
	cfs_error_set(CFS_ENOMEM, "out of memory encoding encryption metadata");
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Keys */

/* A derived key and what it was derived from. */
struct key_slot {
	bool used;
	uint8_t salt[CFS_ENCMETA_MAX_BIN];
	size_t salt_len;
	struct cfs_scrypt_params params;
	uint64_t last_use; /* LRU tick */
	uint8_t key[CFS_KEY_BYTES];
};

/* Everything secret; one sodium_malloc region (guarded, mlocked). */
struct keys_secret {
	uint8_t raw[CFS_KEY_BYTES];
	struct key_slot enc; /* current encryption key */
	struct key_slot cache[KEY_CACHE_SLOTS]; /* decryption keys */
};

/*
 * Lock order: derive_lock, then lock. derive_lock serialises scrypt runs
 * (each takes ~128 MiB and 0.3 s; two threads needing the same key should
 * derive it once); lock protects the slots and counters and is never held
 * across a derivation, so cache hits never wait for scrypt.
 */
struct cfs_keys {
	char *passphrase; /* sodium_malloc, NULL if absent */
	size_t passphrase_len;
	bool has_raw;
	pthread_mutex_t derive_lock;
	pthread_mutex_t lock;
	struct keys_secret *s; /* protected by lock */
	struct cfs_scrypt_params enc_params; /* protected by lock */
	uint64_t derivations; /* protected by lock */
	uint64_t tick; /* protected by lock */
};

int cfs_keys_new(struct cfs_keys **out, const char *passphrase,
		 const char *raw_hex)
{
	struct cfs_keys *k = NULL;
	size_t n = 0, hexlen;
	int rc = 0;

	*out = NULL;
	if (passphrase && !*passphrase)
		passphrase = NULL;
	if (raw_hex && !*raw_hex)
		raw_hex = NULL;
	if (!passphrase && !raw_hex)
		return cfs_error_set(CFS_EKEY,
				     "encryption passphrase is required");
	if (sodium_init() < 0)
		return cfs_error_set(CFS_ERROR,
				     "libsodium failed to initialise");

	k = cfs_calloc(1, sizeof(*k));
	if (!k)
		return CFS_ENOMEM;
	pthread_mutex_init(&k->lock, NULL);
	pthread_mutex_init(&k->derive_lock, NULL);
	k->enc_params = cfs_scrypt_defaults;
	k->s = sodium_malloc(sizeof(*k->s));
	if (!k->s) {
		rc = cfs_error_set(CFS_ENOMEM, "out of secure memory");
		goto out;
	}
	sodium_memzero(k->s, sizeof(*k->s));

	if (raw_hex) {
		/*
		 * Surrounding whitespace (a key file's newline) is ignored,
		 * as the reference's lenient hex decoder stops at it.
		 */
		while (*raw_hex == ' ' || *raw_hex == '\t' ||
		       *raw_hex == '\n' || *raw_hex == '\r')
			raw_hex++;
		hexlen = strnlen(raw_hex, 4096);
		while (hexlen > 2 * CFS_KEY_BYTES &&
		       (raw_hex[hexlen - 1] == '\n' ||
			raw_hex[hexlen - 1] == '\r' ||
			raw_hex[hexlen - 1] == ' ' ||
			raw_hex[hexlen - 1] == '\t'))
			hexlen--;
		if (hexlen != 2 * CFS_KEY_BYTES ||
		    sodium_hex2bin(k->s->raw, sizeof(k->s->raw), raw_hex,
				   hexlen, NULL, &n, NULL) != 0 ||
		    n != CFS_KEY_BYTES) {
			rc = cfs_error_set(CFS_EKEY,
					   "raw encryption key must be exactly "
					   "32 bytes encoded as hex");
			goto out;
		}
		k->has_raw = true;
	}
	if (passphrase) {
		n = strnlen(passphrase, CFS_PASSPHRASE_MAX + 1);
		if (n > CFS_PASSPHRASE_MAX) {
			rc = cfs_error_set(CFS_EKEY,
					   "passphrase is longer than %d bytes",
					   CFS_PASSPHRASE_MAX);
			goto out;
		}
		k->passphrase = sodium_malloc(n + 1);
		if (!k->passphrase) {
			rc = cfs_error_set(CFS_ENOMEM, "out of secure memory");
			goto out;
		}
		memcpy(k->passphrase, passphrase, n + 1);
		k->passphrase_len = n;
	}
	*out = k;
	k = NULL;
out:
	cfs_keys_free(k);
	return rc;
}

int cfs_keys_set_scrypt(struct cfs_keys *keys,
			const struct cfs_scrypt_params *p)
{
	int rc = cfs_scrypt_params_validate(p);

	if (rc)
		return rc;
	pthread_mutex_lock(&keys->lock);
	keys->enc_params = *p;
	pthread_mutex_unlock(&keys->lock);
	return 0;
}

bool cfs_keys_has_passphrase(const struct cfs_keys *keys)
{
	return keys->passphrase != NULL;
}

bool cfs_keys_has_raw(const struct cfs_keys *keys)
{
	return keys->has_raw;
}

uint64_t cfs_keys_derivations(struct cfs_keys *keys)
{
	uint64_t n;

	pthread_mutex_lock(&keys->lock);
	n = keys->derivations;
	pthread_mutex_unlock(&keys->lock);
	return n;
}

void cfs_keys_free(struct cfs_keys *keys)
{
	if (!keys)
		return;
	if (keys->s)
		sodium_free(keys->s); /* wipes before unmapping */
	if (keys->passphrase)
		sodium_free(keys->passphrase);
	pthread_mutex_destroy(&keys->lock);
	pthread_mutex_destroy(&keys->derive_lock);
	free(keys);
}

static bool params_eq(const struct cfs_scrypt_params *a,
		      const struct cfs_scrypt_params *b)
{
	return a->cost == b->cost && a->block_size == b->block_size &&
	       a->parallelization == b->parallelization;
}

static bool slot_matches(const struct key_slot *sl, const uint8_t *salt,
			 size_t salt_len, const struct cfs_scrypt_params *p)
{
	return sl->used && sl->salt_len == salt_len &&
	       sodium_memcmp(sl->salt, salt, salt_len) == 0 &&
	       params_eq(&sl->params, p);
}

/* Copies a cached key for (salt, p) into key; caller holds keys->lock. */
static bool cache_lookup_locked(struct cfs_keys *keys, const uint8_t *salt,
				size_t salt_len,
				const struct cfs_scrypt_params *p,
				uint8_t key[CFS_KEY_BYTES])
{
	struct keys_secret *s = keys->s;
	size_t i;

	if (slot_matches(&s->enc, salt, salt_len, p)) {
		memcpy(key, s->enc.key, CFS_KEY_BYTES);
		return true;
	}
	for (i = 0; i < KEY_CACHE_SLOTS; i++) {
		if (slot_matches(&s->cache[i], salt, salt_len, p)) {
			s->cache[i].last_use = ++keys->tick;
			memcpy(key, s->cache[i].key, CFS_KEY_BYTES);
			return true;
		}
	}
	return false;
}

static void slot_fill(struct key_slot *sl, const uint8_t *salt, size_t salt_len,
		      const struct cfs_scrypt_params *p,
		      const uint8_t key[CFS_KEY_BYTES], uint64_t tick)
{
	sl->used = true;
	memcpy(sl->salt, salt, salt_len);
	sl->salt_len = salt_len;
	sl->params = *p;
	sl->last_use = tick;
	memcpy(sl->key, key, CFS_KEY_BYTES);
}

/* Caller holds keys->lock. */
static void cache_insert_locked(struct cfs_keys *keys, const uint8_t *salt,
				size_t salt_len,
				const struct cfs_scrypt_params *p,
				const uint8_t key[CFS_KEY_BYTES])
{
	struct key_slot *victim = &keys->s->cache[0];
	size_t i;

	for (i = 0; i < KEY_CACHE_SLOTS; i++) {
		struct key_slot *sl = &keys->s->cache[i];

		if (!sl->used) {
			victim = sl;
			break;
		}
		if (sl->last_use < victim->last_use)
			victim = sl;
	}
	slot_fill(victim, salt, salt_len, p, key, ++keys->tick);
}

/* Runs scrypt with the passphrase; caller holds derive_lock, not lock. */
static int derive(struct cfs_keys *keys, const uint8_t *salt, size_t salt_len,
		  const struct cfs_scrypt_params *p, uint8_t key[CFS_KEY_BYTES])
{
	int rc = cfs_scrypt(key, CFS_KEY_BYTES, keys->passphrase,
			    keys->passphrase_len, salt, salt_len, p);

	if (rc)
		return rc;
	pthread_mutex_lock(&keys->lock);
	keys->derivations++;
	pthread_mutex_unlock(&keys->lock);
	return 0;
}

/* The key for decrypting (salt, p): cached, or derived once and cached. */
static int key_for_decrypt(struct cfs_keys *keys, const uint8_t *salt,
			   size_t salt_len, const struct cfs_scrypt_params *p,
			   uint8_t key[CFS_KEY_BYTES])
{
	bool hit;
	int rc;

	pthread_mutex_lock(&keys->lock);
	hit = cache_lookup_locked(keys, salt, salt_len, p, key);
	pthread_mutex_unlock(&keys->lock);
	if (hit)
		return 0;

	pthread_mutex_lock(&keys->derive_lock);
	/* Another thread may have derived it while we waited. */
	pthread_mutex_lock(&keys->lock);
	hit = cache_lookup_locked(keys, salt, salt_len, p, key);
	pthread_mutex_unlock(&keys->lock);
	if (!hit) {
		rc = derive(keys, salt, salt_len, p, key);
		if (rc)
			goto out;
		pthread_mutex_lock(&keys->lock);
		cache_insert_locked(keys, salt, salt_len, p, key);
		pthread_mutex_unlock(&keys->lock);
	}
	rc = 0;
out:
	pthread_mutex_unlock(&keys->derive_lock);
	return rc;
}

/*
 * The key for a new passphrase encryption, with its salt and params: the
 * keys object's one encryption key, derived (with a fresh random salt) on
 * first use or after the configured params changed.
 */
static int key_for_encrypt(struct cfs_keys *keys, uint8_t salt[CFS_SALT_BYTES],
			   struct cfs_scrypt_params *p,
			   uint8_t key[CFS_KEY_BYTES])
{
	struct key_slot *enc = &keys->s->enc;
	bool ready;
	int rc = 0;

	pthread_mutex_lock(&keys->derive_lock);
	pthread_mutex_lock(&keys->lock);
	*p = keys->enc_params;
	ready = enc->used && params_eq(&enc->params, p);
	if (ready) {
		memcpy(salt, enc->salt, CFS_SALT_BYTES);
		memcpy(key, enc->key, CFS_KEY_BYTES);
	}
	pthread_mutex_unlock(&keys->lock);
	if (!ready) {
		randombytes_buf(salt, CFS_SALT_BYTES);
		rc = derive(keys, salt, CFS_SALT_BYTES, p, key);
		if (!rc) {
			pthread_mutex_lock(&keys->lock);
			slot_fill(enc, salt, CFS_SALT_BYTES, p, key, 0);
			pthread_mutex_unlock(&keys->lock);
		}
	}
	pthread_mutex_unlock(&keys->derive_lock);
	return rc;
}

int cfs_keys_adopt_salt(struct cfs_keys *keys, const struct cfs_encmeta *meta)
{
	uint8_t key[CFS_KEY_BYTES];
	struct cfs_scrypt_params p;
	int rc;

	if (!keys->passphrase || keys->has_raw || meta->kdf != CFS_KDF_SCRYPT ||
	    meta->salt_len != CFS_SALT_BYTES)
		return 0;
	p = meta->has_scrypt ? meta->scrypt : cfs_scrypt_legacy;
	if (cfs_scrypt_params_validate(&p)) {
		cfs_error_clear();
		return 0;
	}
	rc = key_for_decrypt(keys, meta->salt, meta->salt_len, &p, key);
	if (rc)
		return rc;
	pthread_mutex_lock(&keys->lock);
	slot_fill(&keys->s->enc, meta->salt, meta->salt_len, &p, key, 0);
	keys->enc_params = p;
	pthread_mutex_unlock(&keys->lock);
	sodium_memzero(key, sizeof(key));
	return 0;
}

/* ------------------------------------------------------------------ */
/* Cipher */

struct cfs_cipher {
	EVP_CIPHER_CTX *ctx;
	bool encrypt;
	bool done;
	uint64_t total; /* bytes processed so far */
	struct cfs_encmeta *meta_out; /* encrypt: receives the tag */
};

static int cipher_setup(struct cfs_cipher **out, bool encrypt,
			uint8_t key[CFS_KEY_BYTES], const uint8_t *nonce,
			const uint8_t *tag)
{
	struct cfs_cipher *c;
	int ok;

	c = cfs_calloc(1, sizeof(*c));
	if (!c)
		goto fail;
	c->encrypt = encrypt;
	c->ctx = EVP_CIPHER_CTX_new();
	if (!c->ctx)
		goto fail;
	ok = EVP_CipherInit_ex(c->ctx, EVP_aes_256_gcm(), NULL, NULL, NULL,
			       encrypt) == 1 &&
	     EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_SET_IVLEN,
				 CFS_NONCE_BYTES, NULL) == 1 &&
	     EVP_CipherInit_ex(c->ctx, NULL, NULL, key, nonce, encrypt) == 1;
	/* OpenSSL keeps its own key schedule; our copy goes now. */
	sodium_memzero(key, CFS_KEY_BYTES);
	if (!ok)
		goto fail;
	if (!encrypt && EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_SET_TAG,
					    CFS_TAG_BYTES, (void *)tag) != 1)
		goto fail;
	*out = c;
	return 0;
fail:
	sodium_memzero(key, CFS_KEY_BYTES);
	cfs_cipher_free(c);
	return cfs_error_set(CFS_ERROR, "could not set up AES-256-GCM");
}

int cfs_cipher_encrypt_new(struct cfs_cipher **out, struct cfs_keys *keys,
			   struct cfs_encmeta *meta_out)
{
	uint8_t key[CFS_KEY_BYTES];
	struct cfs_encmeta m;
	int rc;

	*out = NULL;
	memset(&m, 0, sizeof(m));
	m.version = 1;
	memcpy(m.algorithm, ALGORITHM, sizeof(ALGORITHM));
	if (keys->has_raw) {
		m.kdf = CFS_KDF_RAW;
		memcpy(m.kdf_name, "raw", 4);
		pthread_mutex_lock(&keys->lock);
		memcpy(key, keys->s->raw, CFS_KEY_BYTES);
		pthread_mutex_unlock(&keys->lock);
	} else {
		m.kdf = CFS_KDF_SCRYPT;
		memcpy(m.kdf_name, "scrypt", 7);
		rc = key_for_encrypt(keys, m.salt, &m.scrypt, key);
		if (rc) {
			sodium_memzero(key, sizeof(key));
			return rc;
		}
		m.salt_len = CFS_SALT_BYTES;
		m.has_scrypt = true;
	}
	/* Fresh random 96-bit nonce per object: see crypto.h. */
	randombytes_buf(m.nonce, CFS_NONCE_BYTES);
	m.nonce_len = CFS_NONCE_BYTES;
	m.tag_len = 0; /* filled by cfs_cipher_final() */

	rc = cipher_setup(out, true, key, m.nonce, NULL);
	if (rc)
		return rc;
	*meta_out = m;
	(*out)->meta_out = meta_out;
	return 0;
}

/* Checks meta in the reference's order; returns 0 or a code with message. */
static int validate_meta(const struct cfs_encmeta *meta,
			 const struct cfs_keys *keys)
{
	if (meta->version != 1) {
		if (meta->version < 0)
			return cfs_error_set(CFS_ECORRUPT,
					     "unsupported encryption metadata "
					     "version: (not an integer)");
		return cfs_error_set(CFS_ECORRUPT,
				     "unsupported encryption metadata version: "
				     "%" PRId64,
				     meta->version);
	}
	if (strcmp(meta->algorithm, ALGORITHM) != 0)
		return cfs_error_set(CFS_ECORRUPT,
				     "unsupported encryption algorithm: %s",
				     meta->algorithm);
	if (meta->nonce_len != CFS_NONCE_BYTES)
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata nonce must be %d "
				     "bytes, got %zu",
				     CFS_NONCE_BYTES, meta->nonce_len);
	if (meta->tag_len != CFS_TAG_BYTES)
		return cfs_error_set(CFS_ECORRUPT,
				     "encryption metadata authTag must be %d "
				     "bytes, got %zu",
				     CFS_TAG_BYTES, meta->tag_len);
	switch (meta->kdf) {
	case CFS_KDF_RAW:
		if (!keys->has_raw)
			return cfs_error_set(
				CFS_EKEY, "this context was encrypted with a "
					  "raw key; rawKeyHex is required to "
					  "decrypt it");
		return 0;
	case CFS_KDF_SCRYPT:
		if (!keys->passphrase)
			return cfs_error_set(
				CFS_EKEY, "encryption passphrase is required");
		if (!meta->salt_len)
			return cfs_error_set(CFS_ECORRUPT,
					     "scrypt encryption metadata is "
					     "missing salt");
		return 0;
	default:
		return cfs_error_set(CFS_ECORRUPT,
				     "unsupported key derivation: %s",
				     meta->kdf_name);
	}
}

int cfs_cipher_decrypt_new(struct cfs_cipher **out, struct cfs_keys *keys,
			   const struct cfs_encmeta *meta)
{
	uint8_t key[CFS_KEY_BYTES];
	struct cfs_scrypt_params p;
	int rc;

	*out = NULL;
	rc = validate_meta(meta, keys);
	if (rc)
		return rc;
	if (meta->kdf == CFS_KDF_RAW) {
		pthread_mutex_lock(&keys->lock);
		memcpy(key, keys->s->raw, CFS_KEY_BYTES);
		pthread_mutex_unlock(&keys->lock);
	} else {
		p = cfs_encmeta_scrypt_params(meta);
		rc = cfs_scrypt_params_validate(&p);
		if (rc) {
			char why[256];

			snprintf(why, sizeof(why), "%s", cfs_error_last());
			return cfs_error_set(CFS_ECORRUPT,
					     "encryption metadata: %s", why);
		}
		rc = key_for_decrypt(keys, meta->salt, meta->salt_len, &p, key);
		if (rc) {
			sodium_memzero(key, sizeof(key));
			return rc;
		}
	}
	return cipher_setup(out, false, key, meta->nonce, meta->tag);
}

int cfs_cipher_update(struct cfs_cipher *c, const void *in, size_t len,
		      void *out)
{
	const uint8_t *ip = in;
	uint8_t *op = out;
	int outl;

	if (c->done)
		return cfs_error_set(CFS_EINVAL, "cipher already finished");
	if (len > GCM_MAX_BYTES - c->total)
		return cfs_error_set(CFS_EINVAL,
				     "object is larger than AES-GCM allows "
				     "(64 GiB)");
	while (len) {
		size_t n = len < (1u << 30) ? len : (1u << 30);

		if (EVP_CipherUpdate(c->ctx, op, &outl, ip, (int)n) != 1 ||
		    (size_t)outl != n)
			return cfs_error_set(CFS_ERROR,
					     "AES-256-GCM update failed");
		ip += n;
		op += n;
		len -= n;
		c->total += n;
	}
	return 0;
}

int cfs_cipher_final(struct cfs_cipher *c)
{
	uint8_t dummy[32];
	int outl = 0;

	if (c->done)
		return cfs_error_set(CFS_EINVAL, "cipher already finished");
	c->done = true;
	if (!c->encrypt) {
		if (EVP_CipherFinal_ex(c->ctx, dummy, &outl) != 1)
			return cfs_error_set(CFS_EAUTH, AUTH_FAILED_MSG);
		return 0;
	}
	if (EVP_CipherFinal_ex(c->ctx, dummy, &outl) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_GET_TAG, CFS_TAG_BYTES,
				c->meta_out->tag) != 1)
		return cfs_error_set(CFS_ERROR,
				     "AES-256-GCM finalisation failed");
	c->meta_out->tag_len = CFS_TAG_BYTES;
	return 0;
}

void cfs_cipher_free(struct cfs_cipher *c)
{
	if (!c)
		return;
	EVP_CIPHER_CTX_free(c->ctx); /* cleanses the key schedule */
	free(c);
}

/* ------------------------------------------------------------------ */
/* fd helpers */

/* read() until len bytes or EOF; *got < len only at EOF. */
static int read_chunk(int fd, uint8_t *buf, size_t len, size_t *got)
{
	size_t n = 0;
	ssize_t r;

	while (n < len) {
		r = read(fd, buf + n, len - n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			*got = n;
			return cfs_error_errno(errno, "read failed");
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	*got = n;
	return 0;
}

/* Streams in_fd through c into out_fd. */
static int pump(struct cfs_cipher *c, int in_fd, int out_fd)
{
	uint8_t *buf;
	size_t got;
	int rc;

	buf = cfs_malloc(CFS_CRYPTO_CHUNK);
	if (!buf)
		return CFS_ENOMEM;
	for (;;) {
		rc = read_chunk(in_fd, buf, CFS_CRYPTO_CHUNK, &got);
		if (rc || !got)
			break;
		rc = cfs_cipher_update(c, buf, got, buf);
		if (!rc)
			rc = cfs_write_all(out_fd, buf, got);
		if (rc || got < CFS_CRYPTO_CHUNK)
			break;
	}
	/* Plaintext passed through this buffer either way. */
	sodium_memzero(buf, CFS_CRYPTO_CHUNK);
	free(buf);
	return rc;
}

int cfs_encrypt_fd(struct cfs_encmeta *meta_out, struct cfs_keys *keys,
		   int in_fd, int out_fd)
{
	struct cfs_cipher *c = NULL;
	int rc;

	rc = cfs_cipher_encrypt_new(&c, keys, meta_out);
	if (!rc)
		rc = pump(c, in_fd, out_fd);
	if (!rc)
		rc = cfs_cipher_final(c);
	cfs_cipher_free(c);
	return rc;
}

int cfs_decrypt_fd(struct cfs_keys *keys, const struct cfs_encmeta *meta,
		   int in_fd, int out_fd)
{
	struct cfs_cipher *c = NULL;
	struct stat st;
	off_t start;
	int flags, rc;

	if (fstat(out_fd, &st) < 0)
		return cfs_error_errno(errno, "cannot stat decryption output");
	if (!S_ISREG(st.st_mode))
		return cfs_error_set(CFS_EINVAL,
				     "decryption output must be a regular file "
				     "(unauthenticated plaintext must be "
				     "removable)");
	start = lseek(out_fd, 0, SEEK_CUR);
	if (start < 0)
		return cfs_error_errno(errno, "cannot seek decryption output");
	flags = fcntl(out_fd, F_GETFL);
	if (flags >= 0 && (flags & O_APPEND) && start < st.st_size)
		start = st.st_size; /* appends land at the end */

	rc = cfs_cipher_decrypt_new(&c, keys, meta);
	if (rc)
		goto out;
	rc = pump(c, in_fd, out_fd);
	if (!rc)
		rc = cfs_cipher_final(c);
	if (rc) {
		/* GCM verifies at the end: drop what we wrote. */
		if (ftruncate(out_fd, start) < 0 ||
		    lseek(out_fd, start, SEEK_SET) < 0) {
			cfs_error_prefix("could not remove unauthenticated "
					 "plaintext (%s)",
					 strerror(errno));
		}
	}
out:
	cfs_cipher_free(c);
	return rc;
}

int cfs_decrypt_file(struct cfs_keys *keys, const struct cfs_encmeta *meta,
		     int in_fd, int dirfd, const char *path)
{
	int fd, rc;

	fd = openat(dirfd, path,
		    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 && errno == EEXIST)
		return cfs_error_set(
			CFS_EEXISTS,
			"cannot decrypt into %s: it already exists", path);
	if (fd < 0)
		return cfs_error_errno(errno, "cannot create %s", path);
	rc = cfs_decrypt_fd(keys, meta, in_fd, fd);
	if (close(fd) < 0 && !rc)
		rc = cfs_error_errno(errno, "cannot close %s", path);
	if (rc)
		unlinkat(dirfd, path, 0);
	return rc;
}
