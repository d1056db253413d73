import FoundationEssentials
import NIOConcurrencyHelpers
import Logging
import Scripting

/// The clock scripts see under `moongate test`: still unless a test sets or advances it
/// (`harness.clock`). Starts each test at the same instant, so tests do not depend on the day.
public final class FakeClock: ScriptClock, @unchecked Sendable {
    /// 2023-11-14T22:13:20Z.
    public static let start = 1_700_000_000.0
    private let lock = NIOLock()
    /// Kept in whole nanoseconds, so that advancing by 0.1 s ten times is exactly one second
    /// (a bucket's refill depends on it).
    private var nanos = Int64(FakeClock.start) * 1_000_000_000

    public init() {}

    public func now() -> Double { Double(nanoseconds()) / 1e9 }
    public func nanoseconds() -> Int64 { lock.withLock { nanos } }
    /// Sets the time, to the microsecond.
    public func set(_ seconds: Double) {
        let whole = seconds.rounded(.down)
        let micros = ((seconds - whole) * 1e6).rounded()
        lock.withLock { nanos = Int64(whole) * 1_000_000_000 + Int64(micros) * 1000 }
    }
    public func advance(_ seconds: Double) { lock.withLock { nanos += Int64((seconds * 1e9).rounded()) } }
    public func reset() { set(Self.start) }
}

/// One line the gateway or a script logged during a test.
public struct CapturedLog: Sendable {
    public var level: Logger.Level
    public var message: String
    public var metadata: [String: String]
}

/// Where the simulated gateway's log lines go under `moongate test`: kept for `harness.logs()`.
public final class LogStore: @unchecked Sendable {
    private let lock = NIOLock()
    private var lines: [CapturedLog] = []

    public init() {}

    func append(_ line: CapturedLog) { lock.withLock { lines.append(line) } }
    public var all: [CapturedLog] { lock.withLock { lines } }
    public func clear() { lock.withLock { lines.removeAll() } }

    /// A logger that writes here.
    public func logger() -> Logger {
        var logger = Logger(label: "moongate.test") { _ in StoreHandler(store: self) }
        logger.logLevel = .trace
        return logger
    }

    private struct StoreHandler: LogHandler {
        let store: LogStore
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            store.append(CapturedLog(level: event.level, message: event.message.description, metadata: merged.mapValues { "\($0)" }))
        }
    }
}
