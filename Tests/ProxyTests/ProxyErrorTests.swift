import Testing

@testable import Proxy

/// Every answer the gateway gives itself comes from one `ProxyError`: its status, message,
/// source, whether another try may mend it, and whether the connection closes after it.
@Suite struct ProxyErrorTests {
    @Test func eachErrorMapsToOneAnswer() {
        let cases: [(ProxyError, Int, String, ProxyError.Source, Bool, Bool)] = [
            (.head(.malformed("bad")), 400, "bad", .client, false, true),
            (.headerTooLarge, 431, "request header fields too large", .client, false, true),
            (.uriTooLong, 414, "request URI too long", .client, false, true),
            (.head(.unsupportedVersion), 505, "HTTP version not supported", .client, false, true),
            (.bodyTooLarge, 413, "request body too large", .client, false, true),
            (.clientTimeout, 408, "request timeout", .client, false, true),
            (.noRoute, 404, "no route", .config, false, false),
            (.scriptFailed(budget: true), 500, "script budget exceeded", .script, false, false),
            (.scriptFailed(budget: false), 500, "script error", .script, false, false),
            (.noLuaState, 503, "no Lua state free", .internal, false, false),
            (.noHealthyTarget, 503, "no healthy upstream target", .upstream, false, false),
            (.connectTimeout, 504, "upstream connect timeout", .upstream, true, false),
            (.unreachable, 502, "upstream unreachable", .upstream, true, false),
            (.upstreamClosed, 502, "upstream closed the connection", .upstream, true, false),
            (.upstreamTimeout, 504, "upstream timeout", .upstream, true, false),
            (.invalidResponse, 502, "invalid upstream response", .upstream, false, false),
            (.requestTimeout, 504, "request timeout", .upstream, false, true),
        ]
        for (error, status, message, source, retryable, closes) in cases {
            #expect(error.status == status, "\(error)")
            #expect(error.message == message, "\(error)")
            #expect(error.source == source, "\(error)")
            #expect(error.retryable == retryable, "\(error)")
            #expect(error.closesConnection == closes, "\(error)")
            // Messages go into JSON unescaped: none may need escaping.
            #expect(!error.message.contains("\"") && !error.message.contains("\\"), "\(error)")
        }
    }
}
