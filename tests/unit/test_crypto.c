/*
 * Unit tests for core/crypto: AES-256-GCM round trips, tamper and wrong-key
 * detection, metadata validation in the reference's order and messages,
 * derive-once key handling, scrypt and reference-fixture known answers.
 */
#include "core/crypto.h"
#include "core/error.h"
#include "core/util.h"
#include "tests/unit/tap.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PASS "correct horse battery staple"
#define RAW_HEX \
	"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define RAW_HEX2 \
	"ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

static const struct cfs_scrypt_params fast = {1024, 8, 1};
static char *tmp;

int main(void);

static bool msg_has(const char *needle)
{
	return strstr(cfs_error_last(), needle) != NULL;
}

static void fill_pattern(uint8_t *buf, size_t len, uint32_t seed)
{
	size_t i;

	for (i = 0; i < len; i++) {
		seed = seed * 1103515245u + 12345u;
		buf[i] = (uint8_t)(seed >> 16);
	}
}

/* A fresh temp file with contents; returns an fd at offset 0. */
static int file_with(const char *name, const void *data, size_t len)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", tmp, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || cfs_write_all(fd, data, len) != 0 ||
	    lseek(fd, 0, SEEK_SET) != 0) {
		printf("Bail out! cannot write %s\n", path);
		exit(1);
	}
	return fd;
}

static int empty_file(const char *name)
{
	return file_with(name, "", 0);
}

static size_t fd_size(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 ? (size_t)st.st_size : (size_t)-1;
}

/* Whole contents of fd from offset 0 (malloc'ed). */
static uint8_t *fd_slurp(int fd, size_t *len)
{
	size_t n = fd_size(fd), got = 0;
	uint8_t *buf = malloc(n + 1);

	if (!buf || lseek(fd, 0, SEEK_SET) != 0 ||
	    cfs_read_all(fd, buf, n, &got) != 0 || got != n) {
		printf("Bail out! cannot read back a file\n");
		exit(1);
	}
	*len = n;
	return buf;
}

/* Encrypts a buffer with the streaming API into a malloc'ed buffer. */
static int enc_buf(struct cfs_keys *k, const uint8_t *pt, size_t len,
		   uint8_t **ct, struct cfs_encmeta *meta)
{
	struct cfs_cipher *c = NULL;
	int rc;

	*ct = malloc(len ? len : 1);
	rc = cfs_cipher_encrypt_new(&c, k, meta);
	if (!rc)
		rc = cfs_cipher_update(c, pt, len, *ct);
	if (!rc)
		rc = cfs_cipher_final(c);
	cfs_cipher_free(c);
	return rc;
}

static int dec_buf(struct cfs_keys *k, const struct cfs_encmeta *meta,
		   const uint8_t *ct, size_t len, uint8_t *pt)
{
	struct cfs_cipher *c = NULL;
	int rc;

	rc = cfs_cipher_decrypt_new(&c, k, meta);
	if (!rc)
		rc = cfs_cipher_update(c, ct, len, pt);
	if (!rc)
		rc = cfs_cipher_final(c);
	cfs_cipher_free(c);
	return rc;
}

static struct cfs_keys *keys_pass(const char *pass)
{
	struct cfs_keys *k = NULL;

	if (cfs_keys_new(&k, pass, NULL) != 0 ||
	    cfs_keys_set_scrypt(k, &fast) != 0) {
		printf("Bail out! keys: %s\n", cfs_error_last());
		exit(1);
	}
	return k;
}

static struct cfs_keys *keys_raw(const char *hex)
{
	struct cfs_keys *k = NULL;

	if (cfs_keys_new(&k, NULL, hex) != 0) {
		printf("Bail out! keys: %s\n", cfs_error_last());
		exit(1);
	}
	return k;
}

static void test_scrypt_kat(void)
{
	static const char expect[] =
		"fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b3731"
		"622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc"
		"0640";
	struct cfs_scrypt_params p = {1024, 8, 16};
	uint8_t out[64];
	char hex[129];

	TAP_EQ_INT(cfs_scrypt(out, sizeof(out), "password", 8,
			      (const uint8_t *)"NaCl", 4, &p),
		   0, "scrypt(password, NaCl, 1024, 8, 16) runs");
	cfs_hex_encode(hex, out, sizeof(out));
	TAP_EQ_STR(hex, expect, "scrypt RFC 7914 test vector");
}

static void test_params(void)
{
	struct cfs_scrypt_params p;
	struct cfs_keys *k = keys_pass(PASS);

	TAP_OK(cfs_scrypt_defaults.cost == 131072 &&
		       cfs_scrypt_defaults.block_size == 8 &&
		       cfs_scrypt_defaults.parallelization == 1,
	       "defaults are 131072/8/1");
	TAP_OK(cfs_scrypt_legacy.cost == 16384 &&
		       cfs_scrypt_legacy.block_size == 8 &&
		       cfs_scrypt_legacy.parallelization == 1,
	       "legacy parameters are 16384/8/1");
	p = (struct cfs_scrypt_params){1000, 8, 1};
	TAP_EQ_INT(cfs_keys_set_scrypt(k, &p), CFS_EINVAL, "cost 1000 refused");
	TAP_OK(msg_has("scrypt cost must be a power of two greater than one"),
	       "cost message: %s", cfs_error_last());
	TAP_EQ_INT(cfs_keys_set_scrypt(k, &cfs_scrypt_defaults), 0,
		   "defaults accepted");
	p = (struct cfs_scrypt_params){1, 8, 1};
	TAP_EQ_INT(cfs_scrypt_params_validate(&p), CFS_EINVAL,
		   "cost 1 refused");
	p = (struct cfs_scrypt_params){2, 8, 1};
	TAP_EQ_INT(cfs_scrypt_params_validate(&p), 0, "cost 2 accepted");
	p = (struct cfs_scrypt_params){1024, 0, 1};
	TAP_EQ_INT(cfs_scrypt_params_validate(&p), CFS_EINVAL, "r 0 refused");
	TAP_OK(msg_has("scrypt blockSize must be a positive integer"),
	       "blockSize message");
	p = (struct cfs_scrypt_params){1024, 8, 0};
	TAP_EQ_INT(cfs_scrypt_params_validate(&p), CFS_EINVAL, "p 0 refused");
	TAP_OK(msg_has("scrypt parallelization must be a positive integer"),
	       "parallelization message");
	p = (struct cfs_scrypt_params){(uint64_t)1 << 40, 8, 1};
	TAP_EQ_INT(cfs_scrypt_params_validate(&p), CFS_EINVAL,
		   "cost 2^40 refused by the memory cap");
	cfs_keys_free(k);
}

static void test_keys_new(void)
{
	struct cfs_keys *k = NULL;

	TAP_EQ_INT(cfs_keys_new(&k, NULL, NULL), CFS_EKEY, "no key material");
	TAP_OK(msg_has("encryption passphrase is required"), "no-key message");
	TAP_EQ_INT(cfs_keys_new(&k, "", ""), CFS_EKEY,
		   "empty strings = absent");
	TAP_EQ_INT(cfs_keys_new(&k, NULL, "abcd"), CFS_EKEY, "short raw key");
	TAP_OK(msg_has("raw encryption key must be exactly 32 bytes encoded as "
		       "hex"),
	       "raw key message: %s", cfs_error_last());
	TAP_EQ_INT(cfs_keys_new(&k, NULL, RAW_HEX "00"), CFS_EKEY,
		   "long raw key");
	TAP_EQ_INT(cfs_keys_new(&k, NULL,
				"zz0102030405060708090a0b0c0d0e0f1011121314151"
				"61718191a1b1c1d1e1f"),
		   CFS_EKEY, "non-hex raw key");
	TAP_OK(k == NULL, "no keys object on failure");
	TAP_OK(strstr(cfs_error_last(), "zz01") == NULL,
	       "the key is not echoed in the message");
	TAP_EQ_INT(cfs_keys_new(&k, NULL,
				"000102030405060708090A0B0C0D0E0F1011121314151"
				"61718191A1B1C1D1E1F"),
		   0, "upper-case hex accepted");
	cfs_keys_free(k);
	k = NULL;
	TAP_EQ_INT(cfs_keys_new(&k, NULL, " " RAW_HEX "\r\n"), 0,
		   "surrounding whitespace ignored");
	cfs_keys_free(k);
	k = NULL;
	TAP_EQ_INT(cfs_keys_new(&k, NULL, RAW_HEX "\n\n\n"), 0,
		   "several trailing newlines ignored");
	cfs_keys_free(k);
	k = NULL;
	TAP_EQ_INT(cfs_keys_new(&k, NULL, RAW_HEX " 00"), CFS_EKEY,
		   "inner garbage refused");
	TAP_EQ_INT(cfs_keys_new(&k, PASS, RAW_HEX), 0, "both accepted");
	TAP_OK(k && cfs_keys_has_raw(k) && cfs_keys_has_passphrase(k),
	       "both present");
	cfs_keys_free(k);
	cfs_keys_free(NULL);
}

static void test_roundtrip_raw(void)
{
	struct cfs_keys *k = keys_raw(RAW_HEX);
	struct cfs_encmeta m;
	uint8_t pt[1000], *ct = NULL, back[1000];
	cJSON *j;

	fill_pattern(pt, sizeof(pt), 1);
	TAP_EQ_INT(enc_buf(k, pt, sizeof(pt), &ct, &m), 0, "raw encrypt");
	TAP_OK(m.kdf == CFS_KDF_RAW && m.salt_len == 0 && !m.has_scrypt,
	       "raw metadata has no salt or scrypt");
	TAP_OK(m.nonce_len == 12 && m.tag_len == 16, "nonce 12, tag 16");
	TAP_OK(memcmp(ct, pt, sizeof(pt)) != 0, "ciphertext differs");
	{
		struct cfs_cipher *c = NULL;

		TAP_EQ_INT(cfs_cipher_decrypt_new(&c, k, &m), 0, "decrypt_new");
		TAP_EQ_INT(cfs_cipher_update(c, ct, 10, back), 0, "update");
		TAP_EQ_INT(cfs_cipher_final(c), CFS_EAUTH,
			   "final after a partial stream -> CFS_EAUTH");
		TAP_EQ_INT(cfs_cipher_update(c, ct, 10, back), CFS_EINVAL,
			   "update after final refused");
		TAP_EQ_INT(cfs_cipher_final(c), CFS_EINVAL,
			   "second final refused");
		cfs_cipher_free(c);
	}
	TAP_EQ_INT(dec_buf(k, &m, ct, sizeof(pt), back), 0, "raw decrypt");
	TAP_OK(memcmp(back, pt, sizeof(pt)) == 0, "raw round trip");
	TAP_EQ_INT(cfs_keys_derivations(k), 0, "raw keys never run scrypt");

	j = cfs_encmeta_to_json(&m);
	TAP_OK(j && !cJSON_GetObjectItem(j, "salt") &&
		       !cJSON_GetObjectItem(j, "scrypt"),
	       "raw JSON has no salt/scrypt");
	cJSON_Delete(j);
	free(ct);
	cfs_keys_free(k);

	/* Raw wins over a passphrase for encryption. */
	TAP_EQ_INT(cfs_keys_new(&k, PASS, RAW_HEX), 0, "keys with both");
	TAP_EQ_INT(enc_buf(k, pt, sizeof(pt), &ct, &m), 0, "encrypt with both");
	TAP_OK(m.kdf == CFS_KDF_RAW, "raw wins when both are present");
	TAP_EQ_INT(cfs_keys_derivations(k), 0, "no derivation");
	free(ct);
	cfs_keys_free(k);
}

static void test_roundtrip_scrypt(void)
{
	struct cfs_keys *k = keys_pass(PASS), *k2 = keys_pass(PASS);
	struct cfs_encmeta m, m2;
	uint8_t pt[4096], *ct = NULL, *ct2 = NULL, back[4096];

	fill_pattern(pt, sizeof(pt), 2);
	TAP_EQ_INT(enc_buf(k, pt, sizeof(pt), &ct, &m), 0, "scrypt encrypt");
	TAP_OK(m.kdf == CFS_KDF_SCRYPT && m.salt_len == 16 && m.has_scrypt &&
		       m.scrypt.cost == 1024 && m.scrypt.block_size == 8 &&
		       m.scrypt.parallelization == 1,
	       "scrypt metadata records salt and params 1024/8/1");
	TAP_EQ_INT(dec_buf(k2, &m, ct, sizeof(pt), back), 0,
		   "decrypt with another keys object");
	TAP_OK(memcmp(back, pt, sizeof(pt)) == 0, "scrypt round trip");

	TAP_EQ_INT(enc_buf(k, pt, sizeof(pt), &ct2, &m2), 0, "encrypt again");
	TAP_OK(memcmp(m.nonce, m2.nonce, 12) != 0, "fresh nonce");
	TAP_OK(memcmp(ct, ct2, sizeof(pt)) != 0, "different ciphertext");
	TAP_OK(memcmp(m.salt, m2.salt, 16) == 0,
	       "same salt within one keys object (derive once)");
	free(ct);
	free(ct2);
	cfs_keys_free(k);
	cfs_keys_free(k2);
}

static void test_fd_roundtrip(void)
{
	const size_t sizes[] = {0,
				1,
				CFS_CRYPTO_CHUNK - 1,
				CFS_CRYPTO_CHUNK,
				CFS_CRYPTO_CHUNK + 1,
				3 * 1024 * 1024 + 12345};
	struct cfs_keys *k = keys_pass(PASS);
	size_t i, n, len = sizes[CFS_ARRAY_SIZE(sizes) - 1];
	uint8_t *pt = malloc(len), *back;
	char hex_a[65], hex_b[65];

	fill_pattern(pt, len, 3);
	for (i = 0; i < CFS_ARRAY_SIZE(sizes); i++) {
		struct cfs_encmeta m;
		int in = file_with("pt", pt, sizes[i]);
		int ct = empty_file("ct");
		int out = empty_file("out");
		int rc;

		rc = cfs_encrypt_fd(&m, k, in, ct);
		TAP_EQ_INT(rc, 0, "encrypt_fd");
		TAP_EQ_INT(fd_size(ct), sizes[i],
			   "ciphertext length == plaintext length");
		lseek(ct, 0, SEEK_SET);
		TAP_EQ_INT(cfs_decrypt_fd(k, &m, ct, out), 0, "decrypt_fd");
		back = fd_slurp(out, &n);
		cfs_sha256_hex(hex_a, pt, sizes[i]);
		cfs_sha256_hex(hex_b, back, n);
		tap_ok(n == sizes[i] && strcmp(hex_a, hex_b) == 0,
		       "fd round trip of %zu bytes", sizes[i]);
		free(back);
		close(in);
		close(ct);
		close(out);
	}
	TAP_EQ_INT(cfs_keys_derivations(k), 1,
		   "6 encryptions + 6 decryptions, 1 derivation");
	free(pt);
	cfs_keys_free(k);
}

/* Encrypts pt to a fresh file "ct"; returns its fd at offset 0. */
static int encrypt_to_file(struct cfs_keys *k, const uint8_t *pt, size_t len,
			   struct cfs_encmeta *m)
{
	int in = file_with("pt", pt, len), ct = empty_file("ct");

	if (cfs_encrypt_fd(m, k, in, ct) != 0) {
		printf("Bail out! encrypt: %s\n", cfs_error_last());
		exit(1);
	}
	close(in);
	lseek(ct, 0, SEEK_SET);
	return ct;
}

static void flip_byte(int fd, off_t off)
{
	uint8_t b;

	if (pread(fd, &b, 1, off) != 1) {
		printf("Bail out! pread\n");
		exit(1);
	}
	b ^= 0x01;
	if (pwrite(fd, &b, 1, off) != 1) {
		printf("Bail out! pwrite\n");
		exit(1);
	}
	lseek(fd, 0, SEEK_SET);
}

static void test_auth_failures(void)
{
	struct cfs_keys *k = keys_pass(PASS), *wrong = keys_pass("not it");
	struct cfs_keys *rk = keys_raw(RAW_HEX), *rwrong = keys_raw(RAW_HEX2);
	size_t len = 600 * 1024, n;
	uint8_t *pt = malloc(len), *back;
	struct cfs_encmeta m, bad;
	struct stat st;
	int ct, out, dirfd;

	fill_pattern(pt, len, 4);
	ct = encrypt_to_file(k, pt, len, &m);

	/* Wrong passphrase; output starts after a prefix that must survive. */
	out = file_with("out", "PREFIX", 6);
	lseek(out, 6, SEEK_SET);
	TAP_EQ_INT(cfs_decrypt_fd(wrong, &m, ct, out), CFS_EAUTH,
		   "wrong passphrase -> CFS_EAUTH");
	TAP_OK(msg_has("key is wrong") && msg_has("modified"),
	       "auth message: %s", cfs_error_last());
	TAP_EQ_INT(fd_size(out), 6, "partial plaintext truncated away");
	back = fd_slurp(out, &n);
	TAP_OK(n == 6 && memcmp(back, "PREFIX", 6) == 0,
	       "bytes before the start offset kept");
	free(back);
	close(out);

	/* O_APPEND output: the start is the end of the file. */
	{
		char path[512];

		snprintf(path, sizeof(path), "%s/appendee", tmp);
		out = file_with("appendee", "KEEP", 4);
		close(out);
		out = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
		lseek(ct, 0, SEEK_SET);
		TAP_EQ_INT(cfs_decrypt_fd(wrong, &m, ct, out), CFS_EAUTH,
			   "O_APPEND output, wrong passphrase");
		TAP_EQ_INT(fd_size(out), 4, "O_APPEND: only the prefix kept");
		close(out);
	}

	/* File variant: the output file is gone. */
	dirfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	lseek(ct, 0, SEEK_SET);
	TAP_EQ_INT(cfs_decrypt_file(wrong, &m, ct, dirfd, "plain.out"),
		   CFS_EAUTH, "decrypt_file with wrong passphrase");
	TAP_OK(fstatat(dirfd, "plain.out", &st, 0) < 0,
	       "output file removed after auth failure");
	lseek(ct, 0, SEEK_SET);
	TAP_EQ_INT(cfs_decrypt_file(k, &m, ct, dirfd, "plain.out"), 0,
		   "decrypt_file with the right passphrase");
	TAP_OK(fstatat(dirfd, "plain.out", &st, 0) == 0 &&
		       (size_t)st.st_size == len && (st.st_mode & 0777) == 0600,
	       "output file complete, mode 0600");
	lseek(ct, 0, SEEK_SET);
	TAP_EQ_INT(cfs_decrypt_file(k, &m, ct, dirfd, "plain.out"), CFS_EEXISTS,
		   "decrypt_file never overwrites");
	TAP_OK(fstatat(dirfd, "plain.out", &st, 0) == 0 &&
		       (size_t)st.st_size == len,
	       "existing file left alone");
	unlinkat(dirfd, "plain.out", 0);

	/* Flipped ciphertext byte (in the second chunk). */
	flip_byte(ct, CFS_CRYPTO_CHUNK + 7);
	out = empty_file("out");
	TAP_EQ_INT(cfs_decrypt_fd(k, &m, ct, out), CFS_EAUTH,
		   "flipped ciphertext byte -> CFS_EAUTH");
	TAP_EQ_INT(fd_size(out), 0, "no plaintext left (flipped byte)");
	close(out);
	flip_byte(ct, CFS_CRYPTO_CHUNK + 7);

	/* Flipped tag bit. */
	bad = m;
	bad.tag[5] ^= 0x80;
	out = empty_file("out");
	TAP_EQ_INT(cfs_decrypt_fd(k, &bad, ct, out), CFS_EAUTH,
		   "flipped tag -> CFS_EAUTH");
	TAP_EQ_INT(fd_size(out), 0, "no plaintext left (flipped tag)");
	close(out);

	/* Truncated ciphertext. */
	lseek(ct, 0, SEEK_SET);
	TAP_OK(ftruncate(ct, (off_t)len - 1) == 0, "truncate ciphertext");
	out = empty_file("out");
	TAP_EQ_INT(cfs_decrypt_fd(k, &m, ct, out), CFS_EAUTH,
		   "truncated ciphertext -> CFS_EAUTH");
	close(out);
	close(ct);

	/* Wrong raw key. */
	ct = encrypt_to_file(rk, pt, len, &m);
	out = empty_file("out");
	TAP_EQ_INT(cfs_decrypt_fd(rwrong, &m, ct, out), CFS_EAUTH,
		   "wrong raw key -> CFS_EAUTH");
	TAP_EQ_INT(fd_size(out), 0, "no plaintext left (wrong raw key)");
	close(out);
	close(ct);
	close(dirfd);

	free(pt);
	cfs_keys_free(k);
	cfs_keys_free(wrong);
	cfs_keys_free(rk);
	cfs_keys_free(rwrong);
}

/* Parses JSON text into *m (0 or the code). */
static int meta_from(struct cfs_encmeta *m, const char *text)
{
	cJSON *j = cJSON_Parse(text);
	int rc;

	if (!j) {
		printf("Bail out! bad test JSON\n");
		exit(1);
	}
	rc = cfs_encmeta_from_json(m, j);
	cJSON_Delete(j);
	return rc;
}

/* Decrypts 0 bytes with metadata text; returns the code. */
static int try_decrypt(struct cfs_keys *k, const char *text)
{
	struct cfs_encmeta m;
	struct cfs_cipher *c = NULL;
	int rc = meta_from(&m, text);

	if (rc)
		return rc;
	rc = cfs_cipher_decrypt_new(&c, k, &m);
	cfs_cipher_free(c);
	return rc;
}

#define SALT "\"salt\":\"q9C2u1Yb1qJ3b0mJ9mQ0Xw==\","
#define NONCE12 "\"nonce\":\"3q2+7wABAgMEBQYH\","
#define TAG16 "\"authTag\":\"AAECAwQFBgcICQoLDA0ODw==\""
#define HEAD(v, alg, kdf)                         \
	"{\"version\":" v ",\"algorithm\":\"" alg \
	"\",\"keyDerivation\":\"" kdf "\","

static void test_metadata_validation(void)
{
	struct cfs_keys *k = keys_pass(PASS), *rk = keys_raw(RAW_HEX);
	struct cfs_encmeta m;

	TAP_EQ_INT(try_decrypt(k, HEAD("1", "aes-256-gcm", "scrypt") SALT
			       "\"nonce\":\"AAECAwQFBgcICQoLDA0ODw==\"," TAG16
			       "}"),
		   CFS_ECORRUPT, "16-byte nonce rejected");
	TAP_EQ_STR(cfs_error_last(),
		   "encryption metadata nonce must be 12 bytes, got 16",
		   "nonce message");
	TAP_EQ_INT(try_decrypt(k,
			       HEAD("1", "aes-256-gcm", "scrypt") SALT NONCE12
			       "\"authTag\":\"AAECAwQFBgc=\"}"),
		   CFS_ECORRUPT, "8-byte tag rejected");
	TAP_EQ_STR(cfs_error_last(),
		   "encryption metadata authTag must be 16 bytes, got 8",
		   "authTag message");
	TAP_EQ_INT(try_decrypt(k, HEAD("2", "aes-256-gcm", "scrypt") SALT
			       "\"nonce\":\"AAECAwQFBgcICQoLDA0ODw==\"," TAG16
			       "}"),
		   CFS_ECORRUPT, "version 2 rejected (before the nonce)");
	TAP_EQ_STR(cfs_error_last(),
		   "unsupported encryption metadata version: 2",
		   "version message");
	TAP_EQ_INT(try_decrypt(k, HEAD("1", "aes-128-gcm", "scrypt") SALT
			       "\"nonce\":\"AAECAwQFBgcICQoLDA0ODw==\"," TAG16
			       "}"),
		   CFS_ECORRUPT, "other algorithm rejected (before the nonce)");
	TAP_EQ_STR(cfs_error_last(),
		   "unsupported encryption algorithm: aes-128-gcm",
		   "algorithm message");
	TAP_EQ_INT(try_decrypt(k, HEAD("1", "aes-256-gcm", "scrypt")
					  NONCE12 TAG16 "}"),
		   CFS_ECORRUPT, "scrypt without salt rejected");
	TAP_EQ_STR(cfs_error_last(),
		   "scrypt encryption metadata is missing salt",
		   "missing salt message");
	TAP_EQ_INT(try_decrypt(k, HEAD("1", "aes-256-gcm", "raw") NONCE12 TAG16
			       "}"),
		   CFS_EKEY, "raw metadata with only a passphrase");
	TAP_EQ_STR(cfs_error_last(),
		   "this context was encrypted with a raw key; rawKeyHex is "
		   "required to decrypt it",
		   "raw key required message");
	TAP_EQ_INT(try_decrypt(rk, HEAD("1", "aes-256-gcm", "scrypt")
					   SALT NONCE12 TAG16 "}"),
		   CFS_EKEY, "scrypt metadata with only a raw key");
	TAP_OK(msg_has("passphrase is required"),
	       "passphrase required message");
	TAP_EQ_INT(try_decrypt(k, HEAD("1", "aes-256-gcm", "argon2")
					  SALT NONCE12 TAG16 "}"),
		   CFS_ECORRUPT, "unknown key derivation rejected");
	TAP_EQ_INT(try_decrypt(k, HEAD("1", "aes-256-gcm", "scrypt")
					  SALT NONCE12 TAG16
			       ",\"scrypt\":{\"cost\":1000,"
			       "\"blockSize\":8,\"parallelization\":1}}"),
		   CFS_ECORRUPT, "recorded cost 1000 rejected");
	TAP_OK(msg_has("power of two"), "recorded cost message");
	TAP_EQ_INT(try_decrypt(k, HEAD("1", "aes-256-gcm", "scrypt")
					  SALT NONCE12 TAG16
			       ",\"scrypt\":{\"cost\":1099511627776,"
			       "\"blockSize\":8,\"parallelization\":1}}"),
		   CFS_ECORRUPT, "recorded cost 2^40 refused by the cap");

	/* Codec errors. */
	TAP_EQ_INT(meta_from(&m, HEAD("1", "aes-256-gcm",
				      "raw") "\"nonce\":\"not base64!\"," TAG16
					     "}"),
		   CFS_ECORRUPT, "invalid base64 nonce");
	TAP_EQ_INT(meta_from(&m, HEAD("1", "aes-256-gcm", "raw") TAG16 "}"),
		   CFS_ECORRUPT, "missing nonce");
	TAP_EQ_INT(
		meta_from(&m, HEAD("1", "aes-256-gcm", "raw") NONCE12
			  "\"authTag\":\"AAECAwQFBgcICQoLDA0ODwABAgMEBQYHCAkK"
			  "CwwNDg8AAQIDBAUGBwgJCgsMDQ4PAAECAwQFBgcICQoLDA0O"
			  "DwA=\"}"),
		CFS_ECORRUPT, "65-byte authTag refused");
	TAP_OK(msg_has("longer than 64 bytes"), "cap message: %s",
	       cfs_error_last());
	TAP_EQ_INT(meta_from(&m,
			     HEAD("1", "aes-256-gcm",
				  "raw") "\"nonce\":\"3q2+7wABAgMEBQYH\"," TAG16
					 "}"),
		   0, "valid metadata parses");
	TAP_EQ_INT(meta_from(&m,
			     HEAD("1", "aes-256-gcm",
				  "raw") "\"nonce\":\"3q2+7wABAgMEBQY\"," TAG16
					 "}"),
		   CFS_ECORRUPT, "unpadded base64 refused");
	TAP_EQ_INT(meta_from(&m, HEAD("1", "aes-256-gcm", "scrypt")
					 SALT NONCE12 TAG16
			     ",\"scrypt\":{\"cost\":-2,"
			     "\"blockSize\":8,\"parallelization\":1}}"),
		   CFS_ECORRUPT, "negative cost");
	TAP_EQ_INT(meta_from(&m, HEAD("1", "aes-256-gcm", "scrypt")
					 SALT NONCE12 TAG16
			     ",\"scrypt\":{\"cost\":1024.5,"
			     "\"blockSize\":8,\"parallelization\":1}}"),
		   CFS_ECORRUPT, "fractional cost");
	cfs_keys_free(k);
	cfs_keys_free(rk);
}

static void test_json_codec(void)
{
	static const char text[] =
		"{\"version\":1,\"algorithm\":\"aes-256-gcm\","
		"\"keyDerivation\":\"scrypt\","
		"\"salt\":\"q9C2u1Yb1qJ3b0mJ9mQ0Xw==\","
		"\"nonce\":\"3q2+7wABAgMEBQYH\","
		"\"authTag\":\"AAECAwQFBgcICQoLDA0ODw==\","
		"\"scrypt\":{\"cost\":131072,\"blockSize\":8,"
		"\"parallelization\":1}}";
	static const char raw_text[] =
		"{\"version\":1,\"algorithm\":\"aes-256-gcm\","
		"\"keyDerivation\":\"raw\","
		"\"nonce\":\"3q2+7wABAgMEBQYH\","
		"\"authTag\":\"AAECAwQFBgcICQoLDA0ODw==\"}";
	/* Members in another order parse the same. */
	static const char shuffled[] =
		"{\"scrypt\":{\"parallelization\":1,\"blockSize\":8,"
		"\"cost\":131072},\"authTag\":\"AAECAwQFBgcICQoLDA0ODw==\","
		"\"nonce\":\"3q2+7wABAgMEBQYH\","
		"\"salt\":\"q9C2u1Yb1qJ3b0mJ9mQ0Xw==\","
		"\"keyDerivation\":\"scrypt\",\"algorithm\":\"aes-256-gcm\","
		"\"version\":1}";
	struct cfs_encmeta m;
	cJSON *j;
	char *s;

	TAP_EQ_INT(meta_from(&m, text), 0, "parse scrypt metadata");
	TAP_OK(m.version == 1 && m.kdf == CFS_KDF_SCRYPT && m.salt_len == 16 &&
		       m.nonce_len == 12 && m.tag_len == 16 && m.has_scrypt &&
		       m.scrypt.cost == 131072 && m.nonce[0] == 0xde &&
		       m.tag[15] == 0x0f,
	       "decoded fields");
	j = cfs_encmeta_to_json(&m);
	s = j ? cJSON_PrintUnformatted(j) : NULL;
	TAP_EQ_STR(s, text, "scrypt metadata re-encodes in reference order");
	free(s);
	cJSON_Delete(j);

	TAP_EQ_INT(meta_from(&m, shuffled), 0, "parse shuffled members");
	j = cfs_encmeta_to_json(&m);
	s = j ? cJSON_PrintUnformatted(j) : NULL;
	TAP_EQ_STR(s, text, "shuffled input re-encodes in reference order");
	free(s);
	cJSON_Delete(j);

	TAP_EQ_INT(meta_from(&m, raw_text), 0, "parse raw metadata");
	j = cfs_encmeta_to_json(&m);
	s = j ? cJSON_PrintUnformatted(j) : NULL;
	TAP_EQ_STR(s, raw_text, "raw metadata round trip");
	free(s);
	cJSON_Delete(j);
}

static void test_legacy_params(void)
{
	struct cfs_keys *k = NULL, *k2 = keys_pass(PASS);
	struct cfs_encmeta m;
	uint8_t pt[100], *ct = NULL, back[100];
	cJSON *j;

	TAP_EQ_INT(cfs_keys_new(&k, PASS, NULL), 0, "keys");
	TAP_EQ_INT(cfs_keys_set_scrypt(k, &cfs_scrypt_legacy), 0,
		   "legacy params for encryption");
	fill_pattern(pt, sizeof(pt), 5);
	TAP_EQ_INT(enc_buf(k, pt, sizeof(pt), &ct, &m), 0, "encrypt (legacy)");
	m.has_scrypt = false; /* as 0.1.0 wrote it */
	TAP_EQ_INT(cfs_encmeta_scrypt_params(&m).cost, 16384,
		   "no recorded params -> legacy cost");
	j = cfs_encmeta_to_json(&m);
	TAP_OK(j && !cJSON_GetObjectItem(j, "scrypt") &&
		       cJSON_GetObjectItem(j, "salt"),
	       "legacy JSON has salt but no scrypt");
	cJSON_Delete(j);
	TAP_EQ_INT(dec_buf(k2, &m, ct, sizeof(pt), back), 0,
		   "metadata without scrypt decrypts with 16384/8/1");
	TAP_OK(memcmp(back, pt, sizeof(pt)) == 0, "legacy round trip");
	free(ct);
	cfs_keys_free(k);
	cfs_keys_free(k2);
}

static void test_derive_once(void)
{
	struct cfs_keys *k = keys_pass(PASS), *k2 = keys_pass(PASS);
	struct cfs_encmeta m[10];
	uint8_t pt[10][64], *ct[10], back[64];
	struct cfs_scrypt_params p2 = {2048, 8, 1};
	int i, ok = 1;

	for (i = 0; i < 10; i++) {
		fill_pattern(pt[i], 64, (uint32_t)i + 10);
		if (enc_buf(k, pt[i], 64, &ct[i], &m[i]) != 0)
			ok = 0;
	}
	TAP_OK(ok, "10 encryptions");
	TAP_EQ_INT(cfs_keys_derivations(k), 1, "10 encryptions, 1 derivation");
	for (i = 0; i < 10; i++) {
		if (dec_buf(k2, &m[i], ct[i], 64, back) != 0 ||
		    memcmp(back, pt[i], 64) != 0)
			ok = 0;
	}
	TAP_OK(ok, "10 decryptions with a fresh keys object");
	TAP_EQ_INT(cfs_keys_derivations(k2), 1, "10 decryptions, 1 derivation");
	for (i = 0; i < 10; i++) {
		if (dec_buf(k, &m[i], ct[i], 64, back) != 0)
			ok = 0;
	}
	TAP_OK(ok, "decrypt with the encrypting keys object");
	TAP_EQ_INT(cfs_keys_derivations(k), 1,
		   "the encryption key serves decryption too");

	TAP_EQ_INT(cfs_keys_set_scrypt(k, &p2), 0, "change params");
	free(ct[0]);
	TAP_EQ_INT(enc_buf(k, pt[0], 64, &ct[0], &m[0]), 0, "encrypt");
	TAP_OK(m[0].scrypt.cost == 2048 && memcmp(m[0].salt, m[1].salt, 16),
	       "new params -> new salt");
	TAP_EQ_INT(cfs_keys_derivations(k), 2, "new params -> one derivation");
	for (i = 0; i < 10; i++)
		free(ct[i]);
	cfs_keys_free(k);
	cfs_keys_free(k2);
}

struct thread_arg {
	struct cfs_keys *keys;
	const struct cfs_encmeta *meta;
	const uint8_t *ct, *pt;
	int ok;
};

static void *decrypt_thread(void *p)
{
	struct thread_arg *a = p;
	uint8_t back[64];

	a->ok = dec_buf(a->keys, a->meta, a->ct, 64, back) == 0 &&
		memcmp(back, a->pt, 64) == 0;
	return NULL;
}

static void test_threads(void)
{
	struct cfs_keys *k = keys_pass(PASS), *k2 = keys_pass(PASS);
	struct thread_arg args[4];
	pthread_t th[4];
	struct cfs_encmeta m;
	uint8_t pt[64], *ct = NULL;
	int i, ok = 1;

	fill_pattern(pt, sizeof(pt), 7);
	TAP_EQ_INT(enc_buf(k, pt, sizeof(pt), &ct, &m), 0, "encrypt");
	for (i = 0; i < 4; i++) {
		args[i] = (struct thread_arg){k2, &m, ct, pt, 0};
		pthread_create(&th[i], NULL, decrypt_thread, &args[i]);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ok &= args[i].ok;
	}
	TAP_OK(ok, "4 concurrent decryptions");
	TAP_EQ_INT(cfs_keys_derivations(k2), 1,
		   "concurrent decryptions derive once");
	free(ct);
	cfs_keys_free(k);
	cfs_keys_free(k2);
}

/* Decrypts the reference's fresh fixture (scrypt 131072/8/1). */
static void test_fixture_kat(void)
{
	const char *fx = getenv("CFS_FIXTURES");
	char path[1024], hex[65];
	char *text = NULL, *exp_text = NULL;
	size_t len;
	cJSON *man = NULL, *exp = NULL;
	const cJSON *want;
	struct cfs_encmeta m;
	struct cfs_keys *k = NULL;
	int in = -1, out = -1;

	if (!fx) {
		tap_skip("CFS_FIXTURES not set");
		return;
	}
	snprintf(path, sizeof(path),
		 "%s/contextsdk-0.4/fresh/store/contexts/interop-fresh/"
		 "manifest.json",
		 fx);
	TAP_EQ_INT(cfs_read_file_at(&text, &len, AT_FDCWD, path, 1 << 20), 0,
		   "read fixture manifest");
	snprintf(path, sizeof(path), "%s/contextsdk-0.4/fresh/expected.json",
		 fx);
	TAP_EQ_INT(cfs_read_file_at(&exp_text, &len, AT_FDCWD, path, 1 << 22),
		   0, "read fixture expected.json");
	man = text ? cJSON_Parse(text) : NULL;
	exp = exp_text ? cJSON_Parse(exp_text) : NULL;
	want = cJSON_GetObjectItem(
		cJSON_GetObjectItem(cJSON_GetObjectItem(exp, "trees"),
				    "latest"),
		"plaintextZstSha256");
	TAP_OK(man && cJSON_IsString(want), "fixture JSON parsed");
	if (!man || !cJSON_IsString(want))
		goto out;
	TAP_EQ_INT(cfs_encmeta_from_json(
			   &m, cJSON_GetObjectItem(man, "treeEncryption")),
		   0, "treeEncryption decodes");
	TAP_OK(m.has_scrypt && m.scrypt.cost == 131072, "cost 131072");

	snprintf(path, sizeof(path), "%s/contextsdk-0.4/fresh/%s", fx,
		 "store/contexts/interop-fresh/tree/"
		 "00000001-ba128037.tree.tar.zst.enc");
	in = open(path, O_RDONLY | O_CLOEXEC);
	out = empty_file("fixture.tar.zst");
	TAP_EQ_INT(cfs_keys_new(&k, "interop-passphrase-1", NULL), 0, "keys");
	TAP_EQ_INT(cfs_decrypt_fd(k, &m, in, out), 0,
		   "reference object decrypts");
	TAP_EQ_INT(cfs_sha256_fd(hex, out), 0, "hash plaintext");
	TAP_EQ_STR(hex, want->valuestring,
		   "plaintext sha256 == expected plaintextZstSha256");
out:
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	cfs_keys_free(k);
	cJSON_Delete(man);
	cJSON_Delete(exp);
	free(text);
	free(exp_text);
}

int main(void)
{
	if (cfs_init() != 0) {
		printf("Bail out! cfs_init\n");
		return 1;
	}
	tmp = tap_tmpdir("crypto");
	test_scrypt_kat();
	test_params();
	test_keys_new();
	test_roundtrip_raw();
	test_roundtrip_scrypt();
	test_fd_roundtrip();
	test_auth_failures();
	test_metadata_validation();
	test_json_codec();
	test_legacy_params();
	test_derive_once();
	test_threads();
	test_fixture_kat();
	cfs_rmtree_at(AT_FDCWD, tmp);
	free(tmp);
	return tap_done();
}
