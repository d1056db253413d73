import Foundation
import Config
import Logging
import Scripting

/// What a test script reports through the `probe` module: `probe.put(value)` appends the
/// value's text to the running request's recorder.
final class Recorder: ScriptHost {
    var values: [String] = []
    /// What `probe.mode()` returns to the script.
    var mode = "attack"
    var logs: [(Logger.Level, String, String?)] = []

    func scriptLog(_ level: Logger.Level, _ message: String, location: String?) {
        logs.append((level, message, location))
    }
}

struct ProbeModule: LuaModule {
    let name = "probe"

    func register(_ L: OpaquePointer) {
        Lua.setFunction(L, "put") { L in
            let L = L!
            guard let current = Lua.current(L) else { return Lua.raise(L, "probe.put: no request") }
            let recorder = Unmanaged<Recorder>.fromOpaque(current).takeUnretainedValue()
            recorder.values.append(Lua.string(L, 1) ?? Lua.integer(L, 1).map(String.init) ?? Lua.typeName(L, 1))
            return 0
        }
        // Waits as an API call does: the test resumes the run with a value.
        Lua.setFunction(L, "wait") { L in Lua.yield(L!) }
        Lua.setFunction(L, "mode") { L in
            let L = L!
            guard let current = Lua.current(L) else { return Lua.raise(L, "probe.mode: no request") }
            Lua.push(L, Unmanaged<Recorder>.fromOpaque(current).takeUnretainedValue().mode)
            return 1
        }
    }
}

/// A program made of in-memory scripts: `files` maps module names to sources.
func program(
    _ files: [String: String], policies: [String] = ["policy"], budget: ScriptBudget = ScriptBudget(), counting: InstructionCounting = .exact,
    maxStates: Int = 4
) -> ScriptProgram {
    var settings = ScriptsConfig()
    settings.budget = budget
    settings.maxStates = maxStates
    let set = ScriptSet(
        directory: "t",
        files: files.map { ScriptFile(module: $0.key, path: "t/\($0.key.replacingOccurrences(of: ".", with: "/")).lua", source: Array($0.value.utf8)) })
    return ScriptProgram(scripts: set, policies: policies, modules: [ProbeModule()], settings: settings, counting: counting)
}

/// Runs one request's phases on `state`: access, then response and log if defined.
@discardableResult
func runRequest(_ state: LuaState, _ recorder: Recorder, budget: ScriptBudget = ScriptBudget(), phases: [Phase] = Phase.policyPhases) -> RunResult {
    state.beginRequest(host: recorder)
    let current = Unmanaged.passUnretained(recorder).toOpaque()
    for phase in phases {
        let result = state.run(phase, policy: 0, budget: budget, current: current)
        if case .done = result { continue }
        return result
    }
    return .done
}

extension RunResult {
    var failure: ScriptFailure? {
        if case .failed(let f) = self { return f }
        return nil
    }
    var isDone: Bool {
        if case .done = self { return true }
        return false
    }
}
