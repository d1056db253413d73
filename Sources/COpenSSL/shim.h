#ifndef MOONGATE_COPENSSL_H
#define MOONGATE_COPENSSL_H
#include <openssl/opensslv.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#endif
