// JOSE signature checks on OpenSSL's EVP interfaces, for the `jwt` module. C because the
// OpenSSL API is C (macros, out-parameters, ownership rules), kept to a few functions.
#ifndef MOONGATE_JOSE_H
#define MOONGATE_JOSE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <openssl/evp.h>

/// JWS algorithms (RFC 7518, RFC 8037).
typedef enum {
    MG_ALG_HS256, MG_ALG_HS384, MG_ALG_HS512,
    MG_ALG_RS256, MG_ALG_RS384, MG_ALG_RS512,
    MG_ALG_PS256, MG_ALG_PS384, MG_ALG_PS512,
    MG_ALG_ES256, MG_ALG_ES384, MG_ALG_ES512,
    MG_ALG_EDDSA,
} mg_alg;

/// What a public key is, so that a key is only used with algorithms of its own type.
typedef enum {
    MG_KEY_OTHER = 0,
    MG_KEY_RSA = 1,
    MG_KEY_EC_P256 = 2,
    MG_KEY_EC_P384 = 3,
    MG_KEY_EC_P521 = 4,
    MG_KEY_ED25519 = 5,
    MG_KEY_ED448 = 6,
} mg_key_kind;

/// base64url without padding (RFC 7515 2) into `out` (at least len * 3 / 4 + 3 bytes);
/// returns the length, or -1 for a character outside the alphabet or a bad length.
ssize_t mg_b64url_decode(const char *in, size_t len, uint8_t *out);

/// base64url without padding; `out` holds at least (len + 2) / 3 * 4 bytes. Returns the length.
size_t mg_b64url_encode(const uint8_t *in, size_t len, char *out);

/// Verifies a JWS signature: 1 valid, 0 not valid. For HS*, `secret` is the key and `key`
/// is ignored; for the others `key` is the public key (checked to be of the right kind by
/// the caller). ES* signatures are JOSE's raw R||S, converted to DER here.
int mg_jws_verify(mg_alg alg, EVP_PKEY *key, const uint8_t *secret, size_t secret_len, const uint8_t *input, size_t input_len,
                  const uint8_t *sig, size_t sig_len);

/// HS* signature (for tests' tokens): writes up to 64 bytes to `out`, returns the length or 0.
size_t mg_hmac(mg_alg alg, const uint8_t *secret, size_t secret_len, const uint8_t *input, size_t input_len, uint8_t *out);

/// Signs with a private key (RS*, PS*, ES* as raw R||S, EdDSA); returns the length, or 0.
/// `out` holds at least 1024 bytes.
size_t mg_jws_sign(mg_alg alg, EVP_PKEY *key, const uint8_t *input, size_t input_len, uint8_t *out);

/// A public key from PEM (SubjectPublicKeyInfo or a certificate), or NULL.
EVP_PKEY *mg_pem_public_key(const char *pem, size_t len);

/// A private key from PEM (PKCS#8 or traditional), or NULL. For signing test tokens.
EVP_PKEY *mg_pem_private_key(const char *pem, size_t len);

/// Public keys from a JWK's members (already base64url-decoded), or NULL.
EVP_PKEY *mg_jwk_rsa(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len);
EVP_PKEY *mg_jwk_ec(mg_key_kind curve, const uint8_t *x, size_t x_len, const uint8_t *y, size_t y_len);
EVP_PKEY *mg_jwk_okp(mg_key_kind curve, const uint8_t *x, size_t x_len);

/// A fresh key pair for tests (RSA 2048, a P-curve, or Ed25519), or NULL.
EVP_PKEY *mg_generate_key(mg_key_kind kind);

/// The public half of `key` as PEM (SubjectPublicKeyInfo); returns the length, writes at most `cap`.
size_t mg_public_pem(EVP_PKEY *key, char *out, size_t cap);

mg_key_kind mg_key_kind_of(EVP_PKEY *key);

/// A small number for the calling thread, the same for its life, from 0 up in the order
/// threads first ask: lets per-thread caches be plain arrays without locks.
int mg_thread_index(void);

/// Atomically sets `*flag` to `value` and returns what it was (a flag shared by threads).
int mg_atomic_exchange(int *flag, int value);

/// SHA-256 of `len` bytes into `out` (32 bytes). Per request (API keys, `crypto.sha256`):
/// the digest is fetched from the provider once and each thread reuses one context, where
/// `EVP_Digest(..., EVP_sha256())` fetches and allocates on every call (about 4K
/// instructions for a short key against about 1K).
void mg_sha256(const uint8_t *in, size_t len, uint8_t *out);

/// `n` random bytes from OpenSSL's generator into `out`; 0 if it failed. Calls for at most
/// 64 bytes (ids, salts, session ids) are served from a per-thread pool filled 1 KB at a
/// time, as `RAND_bytes` costs about 6K instructions a call in OpenSSL 3 whatever the size;
/// bytes handed out are wiped from the pool.
int mg_random_bytes(uint8_t *out, size_t n);

/// Constant-time comparison of two 32-byte digests: 1 if equal.
int mg_digest_equal(const uint8_t *a, const uint8_t *b);

void mg_key_free(EVP_PKEY *key);

#endif
