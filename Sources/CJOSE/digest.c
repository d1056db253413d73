#include "jose.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/// SHA-256 fetched once for the process; a lost race frees its own copy.
static EVP_MD *sha256_md(void) {
    static EVP_MD *md = NULL;
    EVP_MD *m = __atomic_load_n(&md, __ATOMIC_ACQUIRE);
    if (m != NULL) return m;
    EVP_MD *fetched = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD *expected = NULL;
    if (fetched == NULL) return NULL;
    if (__atomic_compare_exchange_n(&md, &expected, fetched, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return fetched;
    EVP_MD_free(fetched);
    return expected;
}

void mg_sha256(const uint8_t *in, size_t len, uint8_t *out) {
    // One context per thread for the thread's life (event loops live as long as the process).
    static _Thread_local EVP_MD_CTX *ctx = NULL;
    EVP_MD *md = sha256_md();
    unsigned int n = 0;
    if (ctx == NULL) ctx = EVP_MD_CTX_new();
    if (ctx != NULL && md != NULL && EVP_DigestInit_ex2(ctx, md, NULL) == 1 && EVP_DigestUpdate(ctx, in, len) == 1 &&
        EVP_DigestFinal_ex(ctx, out, &n) == 1)
        return;
    // Out of memory or a broken provider: the slow path, which reports nothing either way.
    EVP_Digest(in, len, out, &n, EVP_sha256(), NULL);
}

#define POOL_BYTES 1024
#define POOL_MAX_CALL 64

int mg_random_bytes(uint8_t *out, size_t n) {
    static _Thread_local uint8_t pool[POOL_BYTES];
    static _Thread_local size_t left = 0;
    if (n > POOL_MAX_CALL) return RAND_bytes(out, (int)n) == 1;
    if (left < n) {
        if (RAND_bytes(pool, POOL_BYTES) != 1) return 0;
        left = POOL_BYTES;
    }
    uint8_t *from = pool + (POOL_BYTES - left);
    memcpy(out, from, n);
    OPENSSL_cleanse(from, n);
    left -= n;
    return 1;
}
