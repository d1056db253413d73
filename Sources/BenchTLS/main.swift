import ArgumentParser

// `moongate-bench-tls`: the TLS library comparison of `scripts/bench --tls-engines`, a binary
// of its own so that the gateway does not carry swift-nio-ssl's BoringSSL for it.
BenchTLS.main()
