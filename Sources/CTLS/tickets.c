// Session ticket keys rotated on a period, shared by every context of a process so that a
// reload (which builds new contexts) and any worker can resume a session a ticket names.
//
// OpenSSL's own ticket key is random per context and never rotated: a reload would forget
// every ticket, and one key protecting every ticket for the life of the process weakens
// forward secrecy. Here a ticket is sealed with the key of the current period and opened
// with that key or the previous period's (then renewed); older keys are wiped, so a key
// stolen later opens no ticket older than two periods.
#include "tls.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { slots = 4, aes_key_size = 32, mac_key_size = 32 };

typedef struct {
    /// The period whose keys the slot holds; -1 while empty. Written last (release), so a
    /// reader that sees a period sees its keys.
    _Atomic int64_t period;
    unsigned char aes[aes_key_size];
    unsigned char mac[mac_key_size];
} ticket_slot;

struct mg_ticket_keys {
    /// Names this store in each ticket: a ticket of another process is not tried.
    unsigned char tag[8];
    int64_t period_seconds;
    _Atomic int64_t offset_seconds;
    /// Held only while a period's keys are made (once per period); lookups take no lock.
    pthread_mutex_t making;
    ticket_slot slot[slots];
};

mg_ticket_keys *mg_tls_ticket_keys_new(long long period_seconds) {
    if (period_seconds < 1) return NULL;
    mg_ticket_keys *keys = calloc(1, sizeof *keys);
    if (keys == NULL) return NULL;
    if (RAND_bytes(keys->tag, sizeof keys->tag) != 1) {
        free(keys);
        return NULL;
    }
    keys->period_seconds = period_seconds;
    pthread_mutex_init(&keys->making, NULL);
    for (int i = 0; i < slots; i++) atomic_store(&keys->slot[i].period, -1);
    return keys;
}

void mg_tls_ticket_keys_free(mg_ticket_keys *keys) {
    if (keys == NULL) return;
    pthread_mutex_destroy(&keys->making);
    OPENSSL_cleanse(keys, sizeof *keys);
    free(keys);
}

void mg_tls_ticket_keys_advance(mg_ticket_keys *keys, long long seconds) {
    atomic_fetch_add(&keys->offset_seconds, seconds);
}

static int64_t current_period(mg_ticket_keys *keys) {
    return ((int64_t)time(NULL) + atomic_load(&keys->offset_seconds)) / keys->period_seconds;
}

/// Copies the keys of `period` out of the store (making them when `make` and they are the
/// current period's). 0 when the store has none for it (wiped, or never made).
static int keys_of(mg_ticket_keys *keys, int64_t period, int make, unsigned char aes[aes_key_size], unsigned char mac[mac_key_size]) {
    ticket_slot *slot = &keys->slot[period % slots];
    for (int attempt = 0; attempt < 2; attempt++) {
        if (atomic_load_explicit(&slot->period, memory_order_acquire) == period) {
            memcpy(aes, slot->aes, aes_key_size);
            memcpy(mac, slot->mac, mac_key_size);
            // A slot is reused only `slots` periods later; a copy that raced with that is refused.
            atomic_thread_fence(memory_order_acquire);
            return atomic_load_explicit(&slot->period, memory_order_relaxed) == period;
        }
        if (!make) return 0;
        pthread_mutex_lock(&keys->making);
        if (atomic_load(&slot->period) != period) {
            atomic_store(&slot->period, -1);
            int made = RAND_bytes(slot->aes, aes_key_size) == 1 && RAND_bytes(slot->mac, mac_key_size) == 1;
            if (made) atomic_store_explicit(&slot->period, period, memory_order_release);
            // Wipe every key older than the previous period's.
            for (int i = 0; i < slots; i++) {
                ticket_slot *old = &keys->slot[i];
                int64_t p = atomic_load(&old->period);
                if (p >= 0 && p < period - 1) {
                    atomic_store(&old->period, -1);
                    OPENSSL_cleanse(old->aes, aes_key_size);
                    OPENSSL_cleanse(old->mac, mac_key_size);
                }
            }
            if (!made) {
                pthread_mutex_unlock(&keys->making);
                return 0;
            }
        }
        pthread_mutex_unlock(&keys->making);
        make = 0;
    }
    return 0;
}

static int ticket_keys_index = -1;
static pthread_once_t ticket_keys_once = PTHREAD_ONCE_INIT;

static void make_ticket_keys_index(void) {
    ticket_keys_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/// OpenSSL's ticket callback: seal with this period's key (`enc` 1), or open with the key the
/// ticket names (2: good, and a new ticket goes out; 0: unknown, a full handshake).
static int on_ticket(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cipher, EVP_MAC_CTX *mac, int enc) {
    mg_ticket_keys *keys = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ticket_keys_index);
    if (keys == NULL) return enc ? -1 : 0;
    unsigned char aes[aes_key_size], mac_key[mac_key_size];
    int64_t now = current_period(keys);
    int64_t period;
    int result;
    if (enc) {
        period = now;
        if (!keys_of(keys, period, 1, aes, mac_key)) return -1;
        memcpy(name, keys->tag, 8);
        for (int i = 0; i < 8; i++) name[8 + i] = (unsigned char)((uint64_t)period >> (56 - 8 * i));
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1) return -1;
        result = 1;
    } else {
        if (memcmp(name, keys->tag, 8) != 0) return 0;
        uint64_t named = 0;
        for (int i = 0; i < 8; i++) named = (named << 8) | name[8 + i];
        period = (int64_t)named;
        if (period != now && period != now - 1) return 0;
        if (!keys_of(keys, period, period == now, aes, mac_key)) return 0;
        // Always renewed: a TLS 1.3 client uses a ticket once, so a resumption that sends no
        // new one leaves the next connection a full handshake (measured with wrk, which
        // resumed every other connection before). Older-period tickets get the current key.
        result = 2;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, mac_key, mac_key_size),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    int ok = enc ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, aes, iv) : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, aes, iv);
    ok = ok == 1 && EVP_MAC_CTX_set_params(mac, params) == 1;
    OPENSSL_cleanse(aes, sizeof aes);
    OPENSSL_cleanse(mac_key, sizeof mac_key);
    if (!ok) return enc ? -1 : 0;
    return result;
}

int mg_tls_use_ticket_keys(SSL_CTX *ctx, mg_ticket_keys *keys) {
    pthread_once(&ticket_keys_once, make_ticket_keys_index);
    if (ticket_keys_index < 0 || keys == NULL) return 0;
    if (SSL_CTX_set_ex_data(ctx, ticket_keys_index, keys) != 1) return 0;
    // A ticket outlives its key by no more than a period: clients are told so.
    SSL_CTX_set_timeout(ctx, (long)keys->period_seconds);
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket) == 1;
}

void mg_tls_disable_tickets(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
}
