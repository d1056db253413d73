import Logging
import Telemetry

/// The request a script serves, as API modules outside the data plane see it (`Lua.host`):
/// what they may read and do without knowing the proxy's types.
public protocol ScriptHost: AnyObject {
    /// A line a script logs (`log.info(...)`, `print(...)`), with its `file:line`.
    func scriptLog(_ level: Logger.Level, _ message: String, location: String?)
    /// The route being served, as an index into the generation's `config.routes`; nil in a
    /// listener's router.
    var scriptRouteIndex: Int? { get }
    /// Adds a header to the response the client will get (any phase before it is sent).
    /// False if the response's header edits are full.
    func scriptAddResponseHeader(_ name: String, _ value: String) -> Bool
    /// The same for a fixed name and a whole number (rate-limit headers on every request),
    /// without making strings.
    func scriptAddResponseHeader(_ name: StaticString, decimal value: Int64) -> Bool
    /// Ends the running phase with an answer from the gateway; the calling Swift function
    /// must then return `Lua.yield(L)`, so that nothing after the call runs.
    func scriptAnswer(_ answer: ScriptAnswer)
    /// Whether the running phase may wait for an API call (the access phase may).
    var scriptCanWait: Bool { get }
    /// Suspends the running phase: the calling Swift function returns `Lua.yield(L)`, and
    /// the module later (on the same event loop) resumes the script or answers for it.
    /// Only when `scriptCanWait`.
    func scriptSuspend() -> ScriptResumer
    /// The metric values of the event loop serving the request (`metrics`, and what modules
    /// count: auth failures, rate-limit decisions).
    var scriptMetrics: MetricStore? { get }
    /// The route being served as a `MetricNames.routes` id (-1: none, a router).
    var scriptMetricRoute: Int { get }
    /// A phase ran (or ran on after a wait) for `nanoseconds`: the access log's Lua time.
    func scriptRan(nanoseconds: UInt64)
    /// `log.field(name, value)`: a field for the request's access-log line. False if the
    /// line has no room for more.
    func scriptAddLogField(_ name: String, _ value: String) -> Bool
}

/// An answer a module gives in place of the upstream's (`redis_bucket.limit`'s `429`): the
/// gateway's JSON error body, `{"error": message, "request_id": ...}`, with `headers`.
public struct ScriptAnswer: Sendable {
    public var status: Int
    public var message: String
    public var headers: [(String, String)]

    public init(status: Int, message: String, headers: [(String, String)] = []) {
        self.status = status
        self.message = message
        self.headers = headers
    }
}

/// Continues a script suspended in an API call. Use one of its two functions once; either
/// does nothing if the request has gone meanwhile (the client left, a timeout answered).
public struct ScriptResumer {
    /// Resumes the script; `push` pushes the call's results and returns how many (as in a
    /// Swift function: small pushes cannot fail).
    public let resume: ((OpaquePointer) -> Int32) -> Void
    /// Ends the phase with `answer` instead; the script does not run again.
    public let answer: (ScriptAnswer) -> Void

    public init(resume: @escaping ((OpaquePointer) -> Int32) -> Void, answer: @escaping (ScriptAnswer) -> Void) {
        self.resume = resume
        self.answer = answer
    }
}

extension Lua {
    /// The request the running script serves.
    public static func host(_ L: OpaquePointer) -> ScriptHost? {
        owner(L).active?.host
    }
}

/// For hosts that serve no real request (benchmarks, unit tests): nothing to answer, no waits.
extension ScriptHost {
    public var scriptRouteIndex: Int? { nil }
    public func scriptAddResponseHeader(_ name: String, _ value: String) -> Bool { false }
    public func scriptAddResponseHeader(_ name: StaticString, decimal value: Int64) -> Bool {
        scriptAddResponseHeader("\(name)", String(value))
    }
    public func scriptAnswer(_ answer: ScriptAnswer) {}
    public var scriptCanWait: Bool { false }
    public var scriptMetrics: MetricStore? { nil }
    public var scriptMetricRoute: Int { -1 }
    public func scriptRan(nanoseconds: UInt64) {}
    public func scriptAddLogField(_ name: String, _ value: String) -> Bool { false }
    public func scriptSuspend() -> ScriptResumer {
        preconditionFailure("scriptSuspend without scriptCanWait")
    }
}
