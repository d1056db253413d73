/// Why the gateway answers a request itself instead of passing the upstream's answer on: the
/// one error type of the data plane. Each carries whose fault it is (`source`), whether
/// another try could succeed (`retryable`), and, decided here in one place, the status and
/// message the client gets (`{"error": message, "request_id": ...}`) and whether the
/// connection must close after it. A struct around a private enum, as NIO's errors are, so
/// reasons can be added without breaking callers; the source is Pingora's error model.
struct ProxyError: Error, Equatable, CustomStringConvertible {
    /// Whose fault it is.
    enum Source: String, Sendable {
        /// The request was wrong or too large, or the client too slow.
        case client
        /// The origin could not be reached, failed, or answered wrongly.
        case upstream
        /// The route's policy failed (an error or a budget).
        case script
        /// The configuration has no answer for the request (no route).
        case config
        /// The gateway itself ran out of something (Lua states).
        case `internal`
    }

    private enum Reason: Equatable {
        case head(HeadError)
        case absolutePathRequired
        case dotSegments
        case bodyTooLarge
        case malformedChunkedBody
        case clientTimeout
        case noRoute
        case policyUnavailable
        case noLuaState
        case scriptFailed(budget: Bool)
        case tooManyScriptTargets
        case noHealthyTarget
        case poolFull
        case poolWaitTimeout
        case connectTimeout
        case unreachable
        case upstreamTLS
        case upstreamClosed
        case upstreamTimeout
        case responseHeadTooLarge
        case invalidResponse
        case switchedProtocols
        case requestTimeout
    }

    private let reason: Reason

    private init(_ reason: Reason) { self.reason = reason }

    // MARK: the client's

    /// A head the parser refused (400, 414, 431, 501, 505).
    static func head(_ error: HeadError) -> ProxyError { ProxyError(.head(error)) }
    static let headerTooLarge = ProxyError(.head(.headerTooLarge))
    static let uriTooLong = ProxyError(.head(.uriTooLong))
    static let absolutePathRequired = ProxyError(.absolutePathRequired)
    static let dotSegments = ProxyError(.dotSegments)
    static let bodyTooLarge = ProxyError(.bodyTooLarge)
    static let malformedChunkedBody = ProxyError(.malformedChunkedBody)
    /// The head did not arrive within the request timeout.
    static let clientTimeout = ProxyError(.clientTimeout)

    // MARK: the configuration's and the script's

    static let noRoute = ProxyError(.noRoute)
    static let policyUnavailable = ProxyError(.policyUnavailable)
    static let noLuaState = ProxyError(.noLuaState)
    static func scriptFailed(budget: Bool) -> ProxyError { ProxyError(.scriptFailed(budget: budget)) }
    static let tooManyScriptTargets = ProxyError(.tooManyScriptTargets)

    // MARK: the upstream's

    static let noHealthyTarget = ProxyError(.noHealthyTarget)
    static let poolFull = ProxyError(.poolFull)
    static let poolWaitTimeout = ProxyError(.poolWaitTimeout)
    static let connectTimeout = ProxyError(.connectTimeout)
    static let unreachable = ProxyError(.unreachable)
    /// The TLS handshake with the target failed (its certificate did not verify, say).
    static let upstreamTLS = ProxyError(.upstreamTLS)
    static let upstreamClosed = ProxyError(.upstreamClosed)
    static let upstreamTimeout = ProxyError(.upstreamTimeout)
    static let responseHeadTooLarge = ProxyError(.responseHeadTooLarge)
    static let invalidResponse = ProxyError(.invalidResponse)
    static let switchedProtocols = ProxyError(.switchedProtocols)
    /// The request as a whole ran past its timeout after its head arrived.
    static let requestTimeout = ProxyError(.requestTimeout)

    var source: Source {
        switch reason {
        case .head, .absolutePathRequired, .dotSegments, .bodyTooLarge, .malformedChunkedBody, .clientTimeout: return .client
        case .noRoute: return .config
        case .policyUnavailable, .scriptFailed, .tooManyScriptTargets: return .script
        case .noLuaState: return .internal
        case .noHealthyTarget, .poolFull, .poolWaitTimeout, .connectTimeout, .unreachable, .upstreamTLS, .upstreamClosed, .upstreamTimeout,
            .responseHeadTooLarge, .invalidResponse, .switchedProtocols, .requestTimeout:
            return .upstream
        }
    }

    /// Whether the request may go to another target: the try failed before any answer.
    var retryable: Bool {
        switch reason {
        case .connectTimeout, .unreachable, .upstreamTLS, .upstreamClosed, .upstreamTimeout: return true
        case .head, .absolutePathRequired, .dotSegments, .bodyTooLarge, .malformedChunkedBody, .clientTimeout, .noRoute,
            .policyUnavailable, .noLuaState, .scriptFailed, .tooManyScriptTargets, .noHealthyTarget, .poolFull, .poolWaitTimeout,
            .responseHeadTooLarge, .invalidResponse, .switchedProtocols, .requestTimeout:
            return false
        }
    }

    /// Whether the connection closes after the answer: the request's framing cannot be
    /// trusted (or its rest cannot be read past), or time ran out.
    var closesConnection: Bool {
        switch reason {
        case .head, .absolutePathRequired, .dotSegments, .bodyTooLarge, .malformedChunkedBody, .clientTimeout, .requestTimeout:
            return true
        case .noRoute, .policyUnavailable, .noLuaState, .scriptFailed, .tooManyScriptTargets, .noHealthyTarget, .poolFull,
            .poolWaitTimeout, .connectTimeout, .unreachable, .upstreamTLS, .upstreamClosed, .upstreamTimeout, .responseHeadTooLarge,
            .invalidResponse, .switchedProtocols:
            return false
        }
    }

    /// The status the client gets.
    var status: Int {
        switch reason {
        case .head(let error): return error.status
        case .absolutePathRequired, .dotSegments, .malformedChunkedBody: return 400
        case .clientTimeout: return 408
        case .bodyTooLarge: return 413
        case .noRoute: return 404
        case .policyUnavailable, .scriptFailed: return 500
        case .noLuaState, .tooManyScriptTargets, .noHealthyTarget, .poolFull, .poolWaitTimeout: return 503
        case .unreachable, .upstreamTLS, .upstreamClosed, .responseHeadTooLarge, .invalidResponse, .switchedProtocols: return 502
        case .connectTimeout, .upstreamTimeout, .requestTimeout: return 504
        }
    }

    /// The message the client gets: ours, with no quote or backslash to escape.
    var message: String {
        switch reason {
        case .head(let error): return error.message
        case .absolutePathRequired: return "request target must be an absolute path"
        case .dotSegments: return "dot segments are not allowed in the path"
        case .bodyTooLarge: return "request body too large"
        case .malformedChunkedBody: return "malformed chunked body"
        case .clientTimeout, .requestTimeout: return "request timeout"
        case .noRoute: return "no route"
        case .policyUnavailable: return "policy unavailable"
        case .noLuaState: return "no Lua state free"
        case .scriptFailed(let budget): return budget ? "script budget exceeded" : "script error"
        case .tooManyScriptTargets: return "too many script-chosen targets"
        case .noHealthyTarget: return "no healthy upstream target"
        case .poolFull: return "upstream connection pool full"
        case .poolWaitTimeout: return "no upstream connection free in time"
        case .connectTimeout: return "upstream connect timeout"
        case .unreachable: return "upstream unreachable"
        case .upstreamTLS: return "upstream TLS handshake failed"
        case .upstreamClosed: return "upstream closed the connection"
        case .upstreamTimeout: return "upstream timeout"
        case .responseHeadTooLarge: return "upstream response head too large"
        case .invalidResponse: return "invalid upstream response"
        case .switchedProtocols: return "upstream switched protocols"
        }
    }

    var description: String { "\(status) \(message) (\(source.rawValue)\(retryable ? ", retryable" : ""))" }
}
