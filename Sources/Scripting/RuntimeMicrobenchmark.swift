import Config

/// Measures what entering the runtime costs a request: borrowing a state from the pool,
/// a fresh `ctx`, running a phase, and giving the state back (reset included). Used by
/// `scripts/bench --lua`, never by tests.
public enum RuntimeMicrobenchmark {
    public struct Figures: Sendable {
        /// Nanoseconds per request for each policy measured, by name.
        public var nanoseconds: [(String, Double)]
        /// Heap bytes of one pooled state with the policies loaded.
        public var stateBytes: Int
    }

    static let policies: [(String, String)] = [
        ("noop", "return { access = function(ctx) end }"),
        ("ctx+3 phases", "return { access = function(ctx) ctx.a = 1 end, response = function(ctx) end, log = function(ctx) end }"),
        ("string work", "return { access = function(ctx) local s = ('Bearer abc.def.ghi'):match('^Bearer%s+(.+)$') ctx.user = s:upper() end }"),
        ("json encode", "return { access = function(ctx) ctx.body = json.encode({user = 'bench', n = 42, ok = true}) end }"),
    ]

    public static func run(iterations: Int = 1_000_000) throws -> Figures {
        let files = policies.map { ScriptFile(module: $0.0.filter(\.isLetter), path: "\($0.0).lua", source: Array($0.1.utf8)) }
        let program = ScriptProgram(
            scripts: ScriptSet(directory: "bench", files: files), policies: files.map(\.module), modules: [], settings: ScriptsConfig())
        let pool = LuaStatePool(program: program)
        let host = SilentHost()
        let current = Unmanaged.passUnretained(host).toOpaque()
        let budget = ScriptBudget()
        var results: [(String, Double)] = []
        for (index, (name, _)) in policies.enumerated() {
            let phases = Phase.policyPhases
            func once() throws {
                guard let state = try pool.checkout() else { fatalError("pool exhausted") }
                state.beginRequest(host: host)
                for phase in phases { _ = state.run(phase, policy: index, budget: budget, current: current) }
                pool.release(state)
            }
            for _ in 0..<(iterations / 10) { try once() }
            let start = ContinuousClock.now
            for _ in 0..<iterations { try once() }
            let elapsed = ContinuousClock.now - start
            let ns = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
            results.append((name, ns / Double(iterations)))
        }
        let state = try LuaState(program: program)
        return Figures(nanoseconds: results, stateBytes: state.footprint)
    }
}

private final class SilentHost: ScriptHost {
    func scriptLog(_ level: Logger.Level, _ message: String, location: String?) {}
}

import Logging
