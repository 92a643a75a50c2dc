/*
 * Encryption of bundle objects, compatible with @contextsdk/core 0.4:
 * AES-256-GCM over the whole object (no header, no AAD; ciphertext length ==
 * plaintext length), with the 12-byte nonce, the 16-byte tag and the scrypt
 * salt/parameters held in the manifest's EncryptionMetadata (REFERENCE §4).
 *
 * Key material lives in a struct cfs_keys (sodium_malloc memory, wiped on
 * free). Unlike the reference, which runs scrypt (~0.3 s, 128 MiB) for every
 * object it encrypts, a keys object derives ONE encryption key per process
 * (one random salt per keys object and scrypt parameters) and reuses it with
 * a fresh random 96-bit nonce per object; decryption keeps a small cache of
 * derived keys by (salt, parameters). See the comment above
 * cfs_cipher_encrypt_new() for why this is safe.
 *
 * Thread safety: a struct cfs_keys may be shared by any number of threads;
 * a struct cfs_cipher belongs to one thread at a time.
 */
#ifndef CFS_CORE_CRYPTO_H
#define CFS_CORE_CRYPTO_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFS_KEY_BYTES 32
#define CFS_NONCE_BYTES 12
#define CFS_TAG_BYTES 16
#define CFS_SALT_BYTES 16
/* Cap on any decoded binary field of the metadata (salt, nonce, authTag). */
#define CFS_ENCMETA_MAX_BIN 64
/* Cap on the algorithm / keyDerivation strings kept from the metadata. */
#define CFS_ENCMETA_MAX_NAME 64
/* Cap on a passphrase. */
#define CFS_PASSPHRASE_MAX 65536
/* Chunk size of the fd helpers. */
#define CFS_CRYPTO_CHUNK (256 * 1024)
/*
 * Caps on scrypt parameters, recorded or configured (metadata is
 * attacker-influenceable; without caps it could ask for terabytes):
 * 128 * cost * blockSize <= 1 GiB, parallelization <= 64.
 */
#define CFS_SCRYPT_MAX_MEM ((uint64_t)1 << 30)
#define CFS_SCRYPT_MAX_P 64

struct cfs_scrypt_params {
	uint64_t cost; /* N, a power of two >= 2 */
	uint32_t block_size; /* r >= 1 */
	uint32_t parallelization; /* p >= 1 */
};

/* Defaults for new encryptions (2^17/8/1, ~128 MiB). */
extern const struct cfs_scrypt_params cfs_scrypt_defaults;
/* Parameters of metadata without a "scrypt" member (written by 0.1.0). */
extern const struct cfs_scrypt_params cfs_scrypt_legacy;

/*
 * Validates params with the reference's messages ("scrypt cost must be a
 * power of two greater than one", "scrypt blockSize must be a positive
 * integer", "scrypt parallelization must be a positive integer") plus our
 * caps. Returns 0 or CFS_EINVAL.
 */
int cfs_scrypt_params_validate(const struct cfs_scrypt_params *p);

/*
 * Raw scrypt (libsodium's crypto_pwhash_scryptsalsa208sha256_ll). Validates
 * the parameters first. Exposed for known-answer tests. Returns 0,
 * CFS_EINVAL or CFS_ENOMEM.
 */
int cfs_scrypt(uint8_t *out, size_t outlen, const void *pass, size_t passlen,
	       const uint8_t *salt, size_t saltlen,
	       const struct cfs_scrypt_params *p);

enum cfs_kdf {
	CFS_KDF_UNKNOWN = 0, /* neither "raw" nor "scrypt" (name in kdf_name) */
	CFS_KDF_RAW,
	CFS_KDF_SCRYPT,
};

/*
 * EncryptionMetadata, decoded. The binary fields keep their decoded length
 * (up to CFS_ENCMETA_MAX_BIN) so that a wrong length can be reported; the
 * values (version 1, algorithm, 12-byte nonce, 16-byte tag) are checked at
 * decryption, in the reference's order.
 */
struct cfs_encmeta {
	int64_t version;
	char algorithm[CFS_ENCMETA_MAX_NAME];
	enum cfs_kdf kdf;
	char kdf_name[CFS_ENCMETA_MAX_NAME];
	uint8_t salt[CFS_ENCMETA_MAX_BIN];
	size_t salt_len; /* 0: absent */
	uint8_t nonce[CFS_ENCMETA_MAX_BIN];
	size_t nonce_len;
	uint8_t tag[CFS_ENCMETA_MAX_BIN];
	size_t tag_len;
	bool has_scrypt; /* false: legacy parameters apply (scrypt kdf) */
	struct cfs_scrypt_params scrypt;
};

/*
 * Decodes an EncryptionMetadata object (binary fields in standard base64
 * with padding). Checks only types, encodings and caps; returns 0 or
 * CFS_ECORRUPT ("encryption metadata ...").
 */
int cfs_encmeta_from_json(struct cfs_encmeta *out, const cJSON *obj);

/*
 * The scrypt parameters m's object was (or would be) derived with: the
 * recorded ones, or cfs_scrypt_legacy when the metadata has none. Useful to
 * keep a context's recorded parameters for its next encryption
 * (cfs_keys_set_scrypt()).
 */
struct cfs_scrypt_params cfs_encmeta_scrypt_params(const struct cfs_encmeta *m);

/*
 * Encodes m in the reference's member order: version, algorithm,
 * keyDerivation, salt, nonce, authTag, scrypt{cost, blockSize,
 * parallelization}; salt and scrypt are omitted when absent (raw). NULL with
 * CFS_ENOMEM (or CFS_EINVAL for an unknown kdf) set on failure.
 */
cJSON *cfs_encmeta_to_json(const struct cfs_encmeta *m);

/* Key material: passphrase and/or raw key, plus derived-key caches. */
struct cfs_keys;

/*
 * Copies the secrets into sodium_malloc memory. NULL or "" means absent (as
 * the reference's truthiness checks). raw_hex must be 64 hex digits
 * ("raw encryption key must be exactly 32 bytes encoded as hex", CFS_EKEY);
 * at least one of the two is required ("encryption passphrase is required",
 * CFS_EKEY). New encryptions use the raw key when both are present, else
 * scrypt with cfs_scrypt_defaults.
 */
int cfs_keys_new(struct cfs_keys **out, const char *passphrase,
		 const char *raw_hex);

/*
 * Sets the scrypt parameters of new passphrase encryptions (validated,
 * CFS_EINVAL). Changing them makes the next encryption pick a new salt and
 * derive again. Decryption always uses the parameters in the metadata.
 */
int cfs_keys_set_scrypt(struct cfs_keys *keys,
			const struct cfs_scrypt_params *p);

bool cfs_keys_has_passphrase(const struct cfs_keys *keys);
bool cfs_keys_has_raw(const struct cfs_keys *keys);

/* Number of scrypt derivations this keys object has run (for tests). */
uint64_t cfs_keys_derivations(struct cfs_keys *keys);

/*
 * Makes new passphrase encryptions reuse the salt and parameters of meta,
 * an object this keys object has just authenticated (so its key is in the
 * decryption cache): a context then keeps one salt and a commit derives
 * once, for the check of the current object, instead of twice. A no-op for
 * raw metadata and for salts or parameters contextfs would not pick itself.
 */
int cfs_keys_adopt_salt(struct cfs_keys *keys, const struct cfs_encmeta *meta);

/* Wipes and frees; NULL-safe. */
void cfs_keys_free(struct cfs_keys *keys);

/* One streaming AES-256-GCM operation. */
struct cfs_cipher;

/*
 * Starts an encryption: fills *meta_out (version 1, aes-256-gcm, kdf, salt,
 * a fresh random nonce, scrypt params); the tag is filled by
 * cfs_cipher_final(), so meta_out must stay valid until then.
 *
 * Why one derived key for many objects is safe: AES-GCM's requirement is
 * that a (key, nonce) pair never repeats. Every object gets a fresh random
 * 96-bit nonce from the OS CSPRNG; NIST SP 800-38D bounds random-nonce use
 * at 2^32 messages per key to keep the collision probability below 2^-32,
 * and a keys object encrypts a handful of objects per session (the salt and
 * key change with each process or keys object). Each object's metadata still
 * records its salt and parameters, so the reference decrypts it unchanged.
 */
int cfs_cipher_encrypt_new(struct cfs_cipher **out, struct cfs_keys *keys,
			   struct cfs_encmeta *meta_out);

/*
 * Starts a decryption after validating meta in the reference's order:
 * version 1, algorithm aes-256-gcm, nonce 12 bytes, authTag 16 bytes
 * (CFS_ECORRUPT), then key material: raw metadata needs the raw key, scrypt
 * metadata a passphrase (CFS_EKEY) and a salt (CFS_ECORRUPT). meta is copied.
 */
int cfs_cipher_decrypt_new(struct cfs_cipher **out, struct cfs_keys *keys,
			   const struct cfs_encmeta *meta);

/*
 * Processes len bytes; writes exactly len bytes to out (in == out allowed).
 * Decrypted output is unauthenticated until cfs_cipher_final() returns 0.
 */
int cfs_cipher_update(struct cfs_cipher *c, const void *in, size_t len,
		      void *out);

/*
 * Encrypt: computes the tag into meta_out. Decrypt: verifies the tag;
 * CFS_EAUTH when the key is wrong or the data/metadata was modified.
 */
int cfs_cipher_final(struct cfs_cipher *c);

/* Wipes and frees; NULL-safe. */
void cfs_cipher_free(struct cfs_cipher *c);

/*
 * Encrypts in_fd (from its current offset to EOF) to out_fd (at its current
 * offset), in CFS_CRYPTO_CHUNK chunks, and fills *meta_out.
 */
int cfs_encrypt_fd(struct cfs_encmeta *meta_out, struct cfs_keys *keys,
		   int in_fd, int out_fd);

/*
 * Decrypts in_fd (from its current offset to EOF) into out_fd, which must be
 * a regular file (so that it can be cut back). On any failure, including
 * CFS_EAUTH, out_fd is truncated back to its starting offset: unauthenticated
 * plaintext is never left behind.
 */
int cfs_decrypt_fd(struct cfs_keys *keys, const struct cfs_encmeta *meta,
		   int in_fd, int out_fd);

/*
 * Decrypts in_fd into a new file path (relative to dirfd; created 0600 with
 * O_EXCL|O_NOFOLLOW), which is unlinked on any failure.
 */
int cfs_decrypt_file(struct cfs_keys *keys, const struct cfs_encmeta *meta,
		     int in_fd, int dirfd, const char *path);

#endif
