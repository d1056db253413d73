import CLuaRuntime
import Config
import FoundationEssentials
import Logging
import Proxy
import Scripting

/// One test's outcome.
public struct TestResult: Sendable {
    public enum Status: Sendable { case passed, failed, pending }

    public var name: String
    /// `file:line` where the test is defined.
    public var location: String
    public var status: Status
    /// Why it failed, starting with the `file:line` of the failing check when known.
    public var message: String?
    public var seconds: Double
}

/// A test file's outcome: its tests, or why it could not be loaded.
public struct FileResult: Sendable {
    public var path: String
    public var tests: [TestResult]
    public var loadError: String?
    public var seconds: Double

    public var failed: Int { tests.filter { $0.status == .failed }.count + (loadError == nil ? 0 : 1) }
}

/// Runs `*_test.lua` files against the gateway as configured: each file gets a simulated
/// gateway (the same routes, policies, sandbox and budgets, no sockets, a fake clock) and a
/// test state in which the file's `describe`/`it` blocks run, one test per call, so a test
/// that breaks its budget fails alone and the run goes on.
public final class TestRunner {
    public let config: GatewayConfig
    let modules: [any LuaModule]
    let helpers: [any LuaModule]
    public let coverage: CoverageRecorder?
    /// The time every simulated gateway and test sees; reset before each test.
    public let clock: FakeClock
    let beforeEach: () -> Void

    /// What one test may use: generous, but a test that loops forever still ends.
    static let testBudget: ScriptBudget = {
        var b = ScriptBudget()
        b.instructions = 200_000_000
        b.time = .seconds(10)
        b.memory = 256 * 1024 * 1024
        b.coroutines = 10_000
        return b
    }()

    /// `modules`: Lua modules beyond `request` and `response` (for policies and tests alike),
    /// made with `clock` if they keep time (bucket refill); `helpers`: their test helpers, each
    /// as `harness.<name>`; `beforeEach`: what modules reset between tests (their stores).
    public init(
        config: GatewayConfig, clock: FakeClock = FakeClock(), modules: [any LuaModule] = [], helpers: [any LuaModule] = [],
        coverage: Bool = false, beforeEach: @escaping () -> Void = {}
    ) {
        self.config = config
        self.clock = clock
        self.beforeEach = beforeEach
        self.modules = modules
        self.helpers = helpers
        self.coverage = coverage ? CoverageRecorder() : nil
    }

    /// The `*_test.lua` files in `paths` (files, or folders searched recursively), sorted.
    public static func discover(_ paths: [String]) -> [String] {
        var found: [String] = []
        let fm = FileManager.default
        for path in paths {
            var isDirectory = false
            guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
            if !isDirectory {
                found.append(path)
                continue
            }
            for relative in (try? fm.subpathsOfDirectory(atPath: path)) ?? [] where relative.hasSuffix("_test.lua") {
                found.append(path.hasSuffix("/") ? path + relative : path + "/" + relative)
            }
        }
        return Array(Set(found.map(ScriptSet.shortPath))).sorted()
    }

    /// Runs every test of `files` whose full name contains `filter`.
    public func run(_ files: [String], filter: String? = nil) -> [FileResult] {
        files.map { run(file: $0, filter: filter) }
    }

    func run(file: String, filter: String?) -> FileResult {
        let started = ContinuousClock.now
        func finish(_ tests: [TestResult], _ error: String? = nil) -> FileResult {
            FileResult(path: file, tests: tests, loadError: error, seconds: seconds(since: started))
        }
        guard let source = FileManager.default.contents(atPath: file) else { return finish([], "\(file): cannot read the file") }
        let logs = LogStore()
        let simulation: SimulatedGateway
        let scripts: ScriptSet
        do {
            let generation = try ProxyGeneration(id: 1, config: config, modules: modules, clock: clock, logger: logs.logger(), coverage: coverage)
            simulation = SimulatedGateway(generation: generation, logger: logs.logger())
            scripts = try generation.scripts?.scripts ?? ScriptSet.load(directory: config.scripts.directory)
        } catch let error as ScriptErrors {
            return finish([], error.description)
        } catch {
            return finish([], "\(error)")
        }
        let context = TestContext(simulation: simulation, clock: clock, logs: logs)
        context.scriptFamilies = modules.lazy.compactMap { ($0 as? MetricsModule)?.families }.first
        let program = ScriptProgram(
            scripts: ScriptSet(directory: scripts.directory, files: Array(scripts.files.values) + [ScriptFile(module: Self.testModule, path: file, source: Array(source))]),
            policies: [], modules: [HarnessModule(helpers: helpers)] + modules, settings: config.scripts, clock: clock,
            logger: logs.logger(), extensions: [HarnessLua.source], coverage: coverage)

        var state: LuaState
        do {
            state = try load(program)
        } catch {
            return finish([], error.description)
        }
        let count = integer(state, "count") ?? 0
        var results: [TestResult] = []
        for index in 1...max(count, 1) where index <= count {
            if state.broken {
                // The last test broke its state (a budget): the next ones get a fresh one.
                do { state = try load(program) } catch { return finish(results, error.description) }
            }
            let (name, location, pending) = info(state, index)
            if let filter, !name.contains(filter) { continue }
            if pending {
                results.append(TestResult(name: name, location: location, status: .pending, message: nil, seconds: 0))
                continue
            }
            context.reset(state.L)
            beforeEach()
            let testStarted = ContinuousClock.now
            var outcome = "fail"
            var message: String?
            let run = state.call(
                extension: 0, "run", budget: Self.testBudget, current: Unmanaged.passUnretained(context).toOpaque(),
                arguments: { L in
                    lua_pushinteger(L, lua_Integer(index))
                    return 1
                },
                results: { L, n in
                    outcome = Lua.string(L, -n) ?? "fail"
                    if n >= 2 { message = Lua.string(L, -n + 1) }
                })
            if case .failed(let failure) = run {
                outcome = "fail"
                // The message carries the script's file:line where it was stopped.
                message = failure.message
            }
            results.append(
                TestResult(
                    name: name, location: location, status: outcome == "pass" ? .passed : .failed, message: outcome == "pass" ? nil : message,
                    seconds: seconds(since: testStarted)))
        }
        return finish(results)
    }

    static let testModule = "__moongate_test__"

    private func load(_ program: ScriptProgram) throws(ScriptError) -> LuaState {
        let state = try LuaState(program: program)
        try state.load(module: Self.testModule)
        return state
    }

    private func integer(_ state: LuaState, _ field: String) -> Int? {
        var value: Int?
        _ = state.call(
            extension: 0, field, budget: Self.testBudget, current: nil, arguments: { _ in 0 },
            results: { L, n in if n >= 1 { value = Lua.integer(L, -n) } })
        return value
    }

    private func info(_ state: LuaState, _ index: Int) -> (String, String, Bool) {
        var out = ("?", "?", false)
        _ = state.call(
            extension: 0, "info", budget: Self.testBudget, current: nil,
            arguments: { L in
                lua_pushinteger(L, lua_Integer(index))
                return 1
            },
            results: { L, n in
                guard n >= 3 else { return }
                out = (Lua.string(L, -n) ?? "?", Lua.string(L, -n + 1) ?? "?", lua_toboolean(L, -n + 2) != 0)
            })
        return out
    }
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}
