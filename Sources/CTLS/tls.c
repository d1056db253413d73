#include "tls.h"

#include <openssl/err.h>
#include <pthread.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/// TLS 1.2 suites: forward secret and AEAD only. TLS 1.3's are all acceptable (OpenSSL's defaults).
static const char *const tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// The first queued OpenSSL error as text, after `what`.
static void describe(char *error, size_t size, const char *what, const char *file) {
    unsigned long code = ERR_get_error();
    char reason[256] = "unknown error";
    if (code != 0) ERR_error_string_n(code, reason, sizeof reason);
    ERR_clear_error();
    snprintf(error, size, "%s: %s (%s)", file, what, reason);
}

static int apply_common(SSL_CTX *ctx, int min_version) {
    int version = min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (SSL_CTX_set_min_proto_version(ctx, version) != 1) return 0;
    if (SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) return 0;
    if (SSL_CTX_set_cipher_list(ctx, tls12_ciphers) != 1) return 0;
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    // Writes may be retried with a different buffer address (the loop's buffers move).
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
    return 1;
}

/// ALPN: the client's preference among what the listener speaks, `h2` only where the listener
/// offers HTTP/2 (`arg` non-NULL, set by `mg_tls_offer_h2`). A client offering only other
/// protocols gets no ALPN answer and may go on or give up.
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl;
    static const unsigned char with_h2[] = "\x02h2\x08http/1.1";
    static const unsigned char http1[] = "\x08http/1.1";
    const unsigned char *ours = arg != NULL ? with_h2 : http1;
    unsigned int ours_length = arg != NULL ? sizeof with_h2 - 1 : sizeof http1 - 1;
    // The client's order decides (RFC 7301 leaves it to the server; browsers list h2 first).
    for (unsigned int i = 0; i < inlen;) {
        unsigned int length = in[i];
        if (i + 1 + length > inlen) return SSL_TLSEXT_ERR_NOACK;
        for (unsigned int j = 0; j < ours_length; j += 1 + ours[j]) {
            if (ours[j] == length && memcmp(ours + j + 1, in + i + 1, length) == 0) {
                *out = in + i + 1;
                *outlen = (unsigned char)length;
                return SSL_TLSEXT_ERR_OK;
            }
        }
        i += 1 + length;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

void mg_tls_offer_h2(SSL_CTX *ctx, int on) {
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, on ? (void *)1 : NULL);
}

int mg_tls_alpn_is_h2(SSL *ssl) {
    const unsigned char *chosen = NULL;
    unsigned int length = 0;
    SSL_get0_alpn_selected(ssl, &chosen, &length);
    return length == 2 && chosen[0] == 'h' && chosen[1] == '2';
}

SSL_CTX *mg_tls_server_context(const char *cert_file, const char *key_file, int min_version, char *error, size_t error_size) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        describe(error, error_size, "cannot create a TLS context", cert_file);
        return NULL;
    }
    if (!apply_common(ctx, min_version)) {
        describe(error, error_size, "cannot set the TLS versions and suites", cert_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        describe(error, error_size, "not a PEM certificate chain", cert_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        int mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
        describe(error, error_size, mismatch ? "the key does not match the certificate" : "not a PEM private key", key_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        describe(error, error_size, "the key does not match the certificate", key_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    // Every context: SNI may switch a handshake to any of them before ALPN is decided.
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    return ctx;
}

/// Calls `each` with the certificate's subjectAltName DNS names; returns how many.
static int each_dns_name(X509 *cert, void (*each)(void *, const char *, size_t), void *context) {
    int count = 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (names == NULL) return 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
        if (name->type != GEN_DNS) continue;
        const unsigned char *text = ASN1_STRING_get0_data(name->d.dNSName);
        int length = ASN1_STRING_length(name->d.dNSName);
        if (text == NULL || length <= 0) continue;
        each(context, (const char *)text, (size_t)length);
        count++;
    }
    GENERAL_NAMES_free(names);
    return count;
}

int mg_tls_certificate_names(SSL_CTX *ctx, void (*each)(void *, const char *, size_t), void *context) {
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    if (cert == NULL) return 0;
    int count = each_dns_name(cert, each, context);
    if (count > 0) return count;
    X509_NAME *subject = X509_get_subject_name(cert);
    int index = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
    if (index < 0) return 0;
    ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
    const unsigned char *text = ASN1_STRING_get0_data(cn);
    int length = ASN1_STRING_length(cn);
    if (text == NULL || length <= 0) return 0;
    each(context, (const char *)text, (size_t)length);
    return 1;
}

long long mg_tls_certificate_seconds_left(SSL_CTX *ctx) {
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    if (cert == NULL) return 0;
    int days = 0, seconds = 0;
    if (ASN1_TIME_diff(&days, &seconds, NULL, X509_get0_notAfter(cert)) != 1) return 0;
    return (long long)days * 86400 + seconds;
}

typedef struct {
    SSL_CTX *(*choose)(void *, const char *, size_t);
    void *context;
} sni_chooser;

static int sni_index = -1;
static pthread_once_t sni_index_once = PTHREAD_ONCE_INIT;

static int on_server_name(SSL *ssl, int *alert, void *arg) {
    (void)alert;
    sni_chooser *chooser = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL || chooser == NULL) return SSL_TLSEXT_ERR_OK;
    SSL_CTX *chosen = chooser->choose(chooser->context, name, strlen(name));
    if (chosen != NULL && chosen != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, chosen);
    return SSL_TLSEXT_ERR_OK;
}

static void free_chooser(void *parent, void *pointer, CRYPTO_EX_DATA *data, int index, long argl, void *argp) {
    (void)parent; (void)data; (void)index; (void)argl; (void)argp;
    OPENSSL_free(pointer);
}

static void make_sni_index(void) {
    sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_chooser);
}

void mg_tls_set_sni_chooser(SSL_CTX *ctx, SSL_CTX *(*choose)(void *, const char *, size_t), void *context) {
    pthread_once(&sni_index_once, make_sni_index);
    if (sni_index < 0) return;
    sni_chooser *chooser = OPENSSL_malloc(sizeof *chooser);
    if (chooser == NULL) return;
    chooser->choose = choose;
    chooser->context = context;
    // The context owns the chooser: freed with it (through the ex_data's free function).
    SSL_CTX_set_ex_data(ctx, sni_index, chooser);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_server_name);
    SSL_CTX_set_tlsext_servername_arg(ctx, chooser);
}

SSL_CTX *mg_tls_client_context(const char *ca_file, int min_version, char *error, size_t error_size) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        describe(error, error_size, "cannot create a TLS context", ca_file ? ca_file : "system roots");
        return NULL;
    }
    if (!apply_common(ctx, min_version)) {
        describe(error, error_size, "cannot set the TLS versions and suites", ca_file ? ca_file : "system roots");
        SSL_CTX_free(ctx);
        return NULL;
    }
    int loaded = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx);
    if (loaded != 1) {
        describe(error, error_size, "cannot load the CA certificates", ca_file ? ca_file : "system roots");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

int mg_tls_set_server_name(SSL *ssl, const char *name) {
    if (SSL_set_tlsext_host_name(ssl, name) != 1) return 0;
    // Verify the certificate is for this name, not merely signed by a trusted CA.
    return SSL_set1_host(ssl, name) == 1;
}

const char *mg_tls_server_name(SSL *ssl) {
    return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
}

int mg_tls_verify_clients(SSL_CTX *ctx, const char *ca_file, int required, char *error, size_t error_size) {
    ERR_clear_error();
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
    if (names == NULL || SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        if (names != NULL) sk_X509_NAME_pop_free(names, X509_NAME_free);
        describe(error, error_size, "not a PEM file of CA certificates", ca_file);
        return 0;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (required ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    // Resumed sessions keep the client's identity: they need a session id context.
    static const unsigned char sid[] = "moongate";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    return 1;
}

typedef struct {
    void (*each)(void *, int, const char *, size_t);
    void *context;
} peer_names;

static void peer_name(void *names, const char *text, size_t length) {
    peer_names *adapter = names;
    adapter->each(adapter->context, 'n', text, length);
}

int mg_tls_peer_certificate(SSL *ssl, void (*each)(void *, int, const char *, size_t), void *context) {
    if (SSL_get_verify_result(ssl) != X509_V_OK) return 0;
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cert == NULL) return 0;
    BIO *out = BIO_new(BIO_s_mem());
    if (out != NULL && X509_NAME_print_ex(out, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
        char *text = NULL;
        long length = BIO_get_mem_data(out, &text);
        if (length > 0) each(context, 's', text, (size_t)length);
    }
    BIO_free(out);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (X509_digest(cert, EVP_sha256(), digest, &size) == 1) {
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        for (unsigned int i = 0; i < size; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
        each(context, 'f', hex, 2 * (size_t)size);
    }
    peer_names adapter = {each, context};
    each_dns_name(cert, peer_name, &adapter);
    return 1;
}

int mg_tls_use_client_certificate(SSL_CTX *ctx, const char *cert_file, const char *key_file, char *error, size_t error_size) {
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        describe(error, error_size, "not a PEM certificate chain", cert_file);
        return 0;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        int mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
        describe(error, error_size, mismatch ? "the key does not match the certificate" : "not a PEM private key", key_file);
        return 0;
    }
    return 1;
}

void mg_tls_client_settings(SSL_CTX *ctx, int verify) {
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    // Sessions are kept by the caller (one per target pool), not in OpenSSL's cache.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
}

int mg_tls_client_offer_h2(SSL *ssl) {
    static const unsigned char alpn[] = "\x02h2";
    return SSL_set_alpn_protos(ssl, alpn, sizeof alpn - 1) == 0;
}

int mg_tls_expect_ip(SSL *ssl, const char *ip) {
    return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip) == 1;
}

const char *mg_tls_verify_failure(SSL *ssl) {
    long result = SSL_get_verify_result(ssl);
    return result == X509_V_OK ? NULL : X509_verify_cert_error_string(result);
}

int mg_tls_send_server_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name) == 1;
}
