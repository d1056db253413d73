#include "jose.h"

#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

static const signed char b64url_values[256] = {
    ['A'] = 1,  ['B'] = 2,  ['C'] = 3,  ['D'] = 4,  ['E'] = 5,  ['F'] = 6,  ['G'] = 7,  ['H'] = 8,  ['I'] = 9,  ['J'] = 10, ['K'] = 11,
    ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16, ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22,
    ['W'] = 23, ['X'] = 24, ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33,
    ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42, ['q'] = 43, ['r'] = 44,
    ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49, ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55,
    ['3'] = 56, ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['-'] = 63, ['_'] = 64,
};

ssize_t mg_b64url_decode(const char *in, size_t len, uint8_t *out) {
    if (len % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_values[(unsigned char)in[i]];
        if (v == 0) return -1;
        acc = (acc << 6) | (uint32_t)(v - 1);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    // Leftover bits must be zero: one encoding per value (RFC 4648 3.5).
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return -1;
    return (ssize_t)o;
}

size_t mg_b64url_encode(const uint8_t *in, size_t len, char *out) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
    }
    return o;
}

static const EVP_MD *digest(mg_alg alg) {
    switch (alg) {
    case MG_ALG_HS256: case MG_ALG_RS256: case MG_ALG_PS256: case MG_ALG_ES256: return EVP_sha256();
    case MG_ALG_HS384: case MG_ALG_RS384: case MG_ALG_PS384: case MG_ALG_ES384: return EVP_sha384();
    case MG_ALG_HS512: case MG_ALG_RS512: case MG_ALG_PS512: case MG_ALG_ES512: return EVP_sha512();
    case MG_ALG_EDDSA: return NULL;
    }
    return NULL;
}

size_t mg_hmac(mg_alg alg, const uint8_t *secret, size_t secret_len, const uint8_t *input, size_t input_len, uint8_t *out) {
    unsigned int len = 0;
    if (alg > MG_ALG_HS512) return 0;
    if (HMAC(digest(alg), secret, (int)secret_len, input, input_len, out, &len) == NULL) return 0;
    return len;
}

/// Bytes of each of R and S in a JOSE ECDSA signature.
static size_t ec_half(mg_alg alg) {
    return alg == MG_ALG_ES256 ? 32 : alg == MG_ALG_ES384 ? 48 : 66;
}

int mg_jws_verify(mg_alg alg, EVP_PKEY *key, const uint8_t *secret, size_t secret_len, const uint8_t *input, size_t input_len,
                  const uint8_t *sig, size_t sig_len) {
    if (alg <= MG_ALG_HS512) {
        uint8_t mac[EVP_MAX_MD_SIZE];
        size_t len = mg_hmac(alg, secret, secret_len, input, input_len, mac);
        return len != 0 && len == sig_len && CRYPTO_memcmp(mac, sig, len) == 0;
    }
    if (key == NULL) return 0;
    uint8_t der[160];
    const uint8_t *checked = sig;
    size_t checked_len = sig_len;
    if (alg >= MG_ALG_ES256 && alg <= MG_ALG_ES512) {
        // JOSE gives R||S, each padded to the curve size; OpenSSL wants a DER ECDSA-Sig-Value.
        size_t half = ec_half(alg);
        if (sig_len != 2 * half) return 0;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
        if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
            BN_free(r);
            BN_free(s);
            ECDSA_SIG_free(es);
            return 0;
        }
        uint8_t *p = der;
        int n = i2d_ECDSA_SIG(es, NULL);
        if (n <= 0 || (size_t)n > sizeof der) {
            ECDSA_SIG_free(es);
            return 0;
        }
        n = i2d_ECDSA_SIG(es, &p);
        ECDSA_SIG_free(es);
        checked = der;
        checked_len = (size_t)n;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = ctx != NULL && EVP_DigestVerifyInit(ctx, &pctx, digest(alg), NULL, key) == 1;
    if (ok && alg >= MG_ALG_PS256 && alg <= MG_ALG_PS512) {
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1;
    }
    ok = ok && EVP_DigestVerify(ctx, checked, checked_len, input, input_len) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

size_t mg_jws_sign(mg_alg alg, EVP_PKEY *key, const uint8_t *input, size_t input_len, uint8_t *out) {
    if (alg <= MG_ALG_HS512 || key == NULL) return 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    uint8_t der[1024];
    size_t len = sizeof der;
    int ok = ctx != NULL && EVP_DigestSignInit(ctx, &pctx, digest(alg), NULL, key) == 1;
    if (ok && alg >= MG_ALG_PS256 && alg <= MG_ALG_PS512) {
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1;
    }
    ok = ok && EVP_DigestSign(ctx, der, &len, input, input_len) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        ERR_clear_error();
        return 0;
    }
    if (alg < MG_ALG_ES256 || alg > MG_ALG_ES512) {
        memcpy(out, der, len);
        return len;
    }
    const uint8_t *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
    if (es == NULL) return 0;
    size_t half = ec_half(alg);
    int r_ok = BN_bn2binpad(ECDSA_SIG_get0_r(es), out, (int)half) == (int)half;
    int s_ok = BN_bn2binpad(ECDSA_SIG_get0_s(es), out + half, (int)half) == (int)half;
    ECDSA_SIG_free(es);
    return r_ok && s_ok ? 2 * half : 0;
}

EVP_PKEY *mg_pem_public_key(const char *pem, size_t len) {
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) return NULL;
    EVP_PKEY *key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    if (key == NULL) {
        // A certificate: its public key.
        BIO_free(bio);
        bio = BIO_new_mem_buf(pem, (int)len);
        X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        if (cert != NULL) {
            key = X509_get_pubkey(cert);
            X509_free(cert);
        }
    }
    BIO_free(bio);
    ERR_clear_error();
    return key;
}

EVP_PKEY *mg_pem_private_key(const char *pem, size_t len) {
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) return NULL;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    ERR_clear_error();
    return key;
}

static EVP_PKEY *from_params(const char *type, OSSL_PARAM_BLD *bld) {
    EVP_PKEY *key = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params != NULL && ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1) {
        if (EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1) key = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    ERR_clear_error();
    return key;
}

EVP_PKEY *mg_jwk_rsa(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len) {
    BIGNUM *bn_n = BN_bin2bn(n, (int)n_len, NULL), *bn_e = BN_bin2bn(e, (int)e_len, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *key = NULL;
    if (bn_n && bn_e && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e)) {
        key = from_params("RSA", bld);
    }
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    return key;
}

static const char *curve_name(mg_key_kind curve) {
    switch (curve) {
    case MG_KEY_EC_P256: return "P-256";
    case MG_KEY_EC_P384: return "P-384";
    case MG_KEY_EC_P521: return "P-521";
    default: return NULL;
    }
}

EVP_PKEY *mg_jwk_ec(mg_key_kind curve, const uint8_t *x, size_t x_len, const uint8_t *y, size_t y_len) {
    const char *name = curve_name(curve);
    if (name == NULL || x_len != y_len || x_len > 66) return NULL;
    uint8_t point[1 + 2 * 66];
    point[0] = 0x04;  // uncompressed
    memcpy(point + 1, x, x_len);
    memcpy(point + 1 + x_len, y, y_len);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *key = NULL;
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, name, 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * x_len)) {
        key = from_params("EC", bld);
    }
    OSSL_PARAM_BLD_free(bld);
    return key;
}

EVP_PKEY *mg_jwk_okp(mg_key_kind curve, const uint8_t *x, size_t x_len) {
    int type = curve == MG_KEY_ED25519 ? EVP_PKEY_ED25519 : curve == MG_KEY_ED448 ? EVP_PKEY_ED448 : 0;
    if (type == 0) return NULL;
    EVP_PKEY *key = EVP_PKEY_new_raw_public_key(type, NULL, x, x_len);
    ERR_clear_error();
    return key;
}

EVP_PKEY *mg_generate_key(mg_key_kind kind) {
    EVP_PKEY *key = NULL;
    switch (kind) {
    case MG_KEY_RSA: key = EVP_RSA_gen(2048); break;
    case MG_KEY_EC_P256: key = EVP_EC_gen("P-256"); break;
    case MG_KEY_EC_P384: key = EVP_EC_gen("P-384"); break;
    case MG_KEY_EC_P521: key = EVP_EC_gen("P-521"); break;
    case MG_KEY_ED25519: key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"); break;
    case MG_KEY_ED448: key = EVP_PKEY_Q_keygen(NULL, NULL, "ED448"); break;
    default: break;
    }
    ERR_clear_error();
    return key;
}

size_t mg_public_pem(EVP_PKEY *key, char *out, size_t cap) {
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL || PEM_write_bio_PUBKEY(bio, key) != 1) {
        BIO_free(bio);
        return 0;
    }
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    size_t n = len > 0 && (size_t)len <= cap ? (size_t)len : 0;
    if (n) memcpy(out, data, n);
    BIO_free(bio);
    return n;
}

mg_key_kind mg_key_kind_of(EVP_PKEY *key) {
    if (key == NULL) return MG_KEY_OTHER;
    switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA: return MG_KEY_RSA;
    case EVP_PKEY_ED25519: return MG_KEY_ED25519;
    case EVP_PKEY_ED448: return MG_KEY_ED448;
    case EVP_PKEY_EC: {
        char group[64];
        size_t len = 0;
        if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len) != 1) return MG_KEY_OTHER;
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0) return MG_KEY_EC_P256;
        if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0) return MG_KEY_EC_P384;
        if (strcmp(group, "secp521r1") == 0 || strcmp(group, "P-521") == 0) return MG_KEY_EC_P521;
        return MG_KEY_OTHER;
    }
    default: return MG_KEY_OTHER;
    }
}

void mg_key_free(EVP_PKEY *key) { EVP_PKEY_free(key); }

int mg_digest_equal(const uint8_t *a, const uint8_t *b) { return CRYPTO_memcmp(a, b, 32) == 0; }

int mg_thread_index(void) {
    static _Thread_local int index = -1;
    static int next = 0;
    if (index < 0) index = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
    return index;
}

int mg_atomic_exchange(int *flag, int value) { return __atomic_exchange_n(flag, value, __ATOMIC_ACQ_REL); }
