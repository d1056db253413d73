// TLS on OpenSSL, driven by Moongate's own event loops: server and client contexts with
// modern settings only, certificates chosen by SNI. C because most of OpenSSL's
// configuration is macros Swift cannot call.
#ifndef MOONGATE_TLS_H
#define MOONGATE_TLS_H

#include <stddef.h>
#include <openssl/ssl.h>

/// A server context for one certificate chain and key (PEM files): TLS `min_version` (12 or
/// 13) to 1.3, ECDHE with AES-GCM or ChaCha20-Poly1305 only, no renegotiation, no
/// compression, session tickets on. NULL with a reason in `error` (naming the file) on failure.
SSL_CTX *mg_tls_server_context(const char *cert_file, const char *key_file, int min_version, char *error, size_t error_size);

/// Asks clients of `ctx` for a certificate verified against `ca_file` (PEM); `required`
/// refuses a handshake without one. 0 with a reason in `error` on failure.
int mg_tls_verify_clients(SSL_CTX *ctx, const char *ca_file, int required, char *error, size_t error_size);

/// The verified peer certificate's subject (RFC 2253), SHA-256 fingerprint (hex) and DNS
/// names, through `each(context, kind, text, length)` with kind 's', 'f' or 'n'. 0 when the
/// peer sent none or it did not verify.
int mg_tls_peer_certificate(SSL *ssl, void (*each)(void *context, int kind, const char *text, size_t length), void *context);

/// Calls `each` with every DNS name the context's certificate is for: its subjectAltName DNS
/// entries, or its subject's common name when it has none. Returns how many.
int mg_tls_certificate_names(SSL_CTX *ctx, void (*each)(void *context, const char *name, size_t length), void *context);

/// Seconds from now until the context's certificate expires (negative: expired).
long long mg_tls_certificate_seconds_left(SSL_CTX *ctx);

/// Picks the context of each handshake on `ctx` (a listener's default) by its server name:
/// `choose(context, name, length)` returns the context to use, or NULL for the default. A
/// handshake without a name keeps the default.
void mg_tls_set_sni_chooser(SSL_CTX *ctx, SSL_CTX *(*choose)(void *context, const char *name, size_t length), void *context);

/// A client context: the same versions and suites, peer verification on with `ca_file`
/// (NULL: the system's roots).
SSL_CTX *mg_tls_client_context(const char *ca_file, int min_version, char *error, size_t error_size);

/// Loads the certificate chain and key a client context shows servers that ask (mTLS).
int mg_tls_use_client_certificate(SSL_CTX *ctx, const char *cert_file, const char *key_file, char *error, size_t error_size);

/// ALPN http/1.1, peer verification on or off, sessions kept by the caller.
void mg_tls_client_settings(SSL_CTX *ctx, int verify);

/// A client connection verifies the server's certificate is for the IP address `ip`.
int mg_tls_expect_ip(SSL *ssl, const char *ip);

/// Why the peer's certificate did not verify (NULL: it did, or none was checked).
const char *mg_tls_verify_failure(SSL *ssl);

/// Sends `name` (SNI) without verifying the certificate against it.
int mg_tls_send_server_name(SSL *ssl, const char *name);

/// Sets the server name a client connection sends and verifies the certificate against.
int mg_tls_set_server_name(SSL *ssl, const char *name);

/// The server name a server connection was asked for (NULL when none).
const char *mg_tls_server_name(SSL *ssl);
/// Whether ALPN offers `h2` (HTTP/2) besides `http/1.1` on a server context.
void mg_tls_offer_h2(SSL_CTX *ctx, int on);
/// A client connection offers only `h2` through ALPN (an HTTP/2 upstream).
int mg_tls_client_offer_h2(SSL *ssl);
/// Whether the handshake chose `h2`.
int mg_tls_alpn_is_h2(SSL *ssl);

/// Session ticket keys for every context of a process: a fresh random key each period,
/// tickets of the previous period still opened (and renewed), older keys wiped.
typedef struct mg_ticket_keys mg_ticket_keys;

/// A key store rotating every `period_seconds` (NULL when below 1 or out of memory).
mg_ticket_keys *mg_tls_ticket_keys_new(long long period_seconds);
void mg_tls_ticket_keys_free(mg_ticket_keys *keys);
/// Moves the store's clock forward (tests of rotation).
void mg_tls_ticket_keys_advance(mg_ticket_keys *keys, long long seconds);
/// Seals and opens the tickets of `ctx` with `keys`, which must outlive it; sessions last a
/// period. 0 on failure.
int mg_tls_use_ticket_keys(SSL_CTX *ctx, mg_ticket_keys *keys);
/// No tickets: TLS 1.2 resumes from the server's session cache only.
void mg_tls_disable_tickets(SSL_CTX *ctx);

#endif
