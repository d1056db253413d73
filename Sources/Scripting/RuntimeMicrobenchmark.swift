import Config
#if canImport(Glibc)
import Glibc
#endif

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

    /// A pattern-heavy policy: routing on `match`, rewrites with `gsub`, a query split with
    /// `gmatch`, a prefix checked with `find`.
    static let patternPolicy = #"""
        local paths = {"/api/v1/users/42", "/api/v2/orders/ab12/items/7", "/static/css/site.min.css", "/health", "/api//v1//x"}
        local routes = {
          {"^/api/v(%d+)/users/(%d+)$", "users"},
          {"^/api/v(%d+)/orders/(%w+)/items/(%d+)$", "items"},
          {"^/static/(.+)%.(%a+)$", "static"},
          {"^/health$", "health"},
        }
        local n = 0
        return { access = function(ctx)
          n = n % #paths + 1
          local path = paths[n]
          for i = 1, #routes do
            local a = path:match(routes[i][1])
            if a then ctx.route = routes[i][2] ctx.a = a break end
          end
          ctx.path = path:gsub("^/api/v%d+/", "/internal/"):gsub("/+", "/")
          ctx.query = ("a=1&b=two&c=%20x%41"):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
          ctx.host = ("API.Example.COM"):lower():match("^([%w%-]+)%.")
          for k, v in ("a=1&b=2&c=3"):gmatch("([^&=]+)=([^&=]*)") do ctx[k] = v end
          if ("Bearer abc.def.ghi"):find("^Bearer%s+") then ctx.token = true end
        end }
        """#

    /// CPU nanoseconds per request of the pattern-heavy policy with our pattern functions and
    /// with the system's, measured alternately in `rounds` rounds (medians).
    /// `only`: measure just the system's (true) or just ours (false), once.
    public static func patterns(iterations: Int = 200_000, rounds: Int = 7, only: Bool? = nil) throws -> (ours: Double, stock: Double) {
        let file = ScriptFile(module: "patterns", path: "patterns.lua", source: Array(patternPolicy.utf8))
        func pool(stock: Bool) -> LuaStatePool {
            let program = ScriptProgram(
                scripts: ScriptSet(directory: "bench", files: [file]), policies: ["patterns"], routers: [], modules: [],
                settings: ScriptsConfig(), clock: SystemClock(), logger: Logger(label: "bench"), extensions: [], coverage: nil,
                stockPatterns: stock)
            return LuaStatePool(program: program)
        }
        let pools = [pool(stock: false), pool(stock: true)]
        let host = SilentHost()
        let current = Unmanaged.passUnretained(host).toOpaque()
        let budget = ScriptBudget()
        func measure(_ pool: LuaStatePool, _ n: Int) throws -> Double {
            let start = threadCPUNanoseconds()
            for _ in 0..<n {
                guard let state = try pool.checkout() else { fatalError("pool exhausted") }
                state.beginRequest(host: host)
                if case .failed(let failure) = state.run(.access, policy: 0, budget: budget, current: current) {
                    fatalError("the pattern policy failed: \(failure.message)")
                }
                pool.release(state)
            }
            return Double(threadCPUNanoseconds() - start) / Double(n)
        }
        for p in pools { _ = try measure(p, iterations / 10) }
        if let only {
            // One side alone, for an instruction count under callgrind (this machine's timings vary).
            let ns = try measure(pools[only ? 1 : 0], iterations)
            return only ? (0, ns) : (ns, 0)
        }
        var ours: [Double] = [], stock: [Double] = []
        for round in 0..<rounds {
            // Alternate which goes first, so drift on a noisy machine falls on both.
            if round % 2 == 0 {
                ours.append(try measure(pools[0], iterations))
                stock.append(try measure(pools[1], iterations))
            } else {
                stock.append(try measure(pools[1], iterations))
                ours.append(try measure(pools[0], iterations))
            }
        }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        return (median(ours), median(stock))
    }

    private static func threadCPUNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

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
