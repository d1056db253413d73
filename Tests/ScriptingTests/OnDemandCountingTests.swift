import Config
import Scripting
import Testing

/// On-demand counting (the gateway's): a short run is not counted, a long one is armed by
/// the watchdog and counted from then on, coroutines are always counted, and the hook is off
/// again for the next run.
@Suite struct OnDemandCountingTests {
    /// About 50,000 instructions: a fraction of a millisecond.
    static let shortLoop = "local x = 0 for i = 1, 25000 do x = x + i end"

    static func budget(instructions: Int) -> ScriptBudget {
        var budget = ScriptBudget()
        budget.instructions = instructions
        budget.time = .seconds(10)
        return budget
    }

    /// How many of `tries` runs of `body`, each on its own request, finish under `budget`.
    static func finished(_ body: String, counting: InstructionCounting, budget: ScriptBudget, tries: Int = 20) throws -> Int {
        let p = program(["policy": "return { access = function() \(body) probe.put('done') end }"], counting: counting)
        let pool = LuaStatePool(program: p)
        var done = 0
        for _ in 0..<tries {
            let state = try #require(try pool.checkout())
            let recorder = Recorder()
            if runRequest(state, recorder, budget: budget).isDone, recorder.values == ["done"] { done += 1 }
            pool.release(state)
        }
        return done
    }

    @Test func aShortRunIsNotCountedOnDemandAndIsExactly() throws {
        let small = Self.budget(instructions: 10_000)
        #expect(try Self.finished(Self.shortLoop, counting: .exact, budget: small) == 0)
        // A run the scheduler interrupts for over a millisecond is armed and counted from then:
        // on a loaded machine many may be, never all.
        #expect(try Self.finished(Self.shortLoop, counting: .onDemand, budget: small) > 0)
    }

    @Test func coroutinesAreAlwaysCounted() throws {
        let body = "coroutine.wrap(function() \(Self.shortLoop) end)()"
        #expect(try Self.finished(body, counting: .onDemand, budget: Self.budget(instructions: 10_000), tries: 3) == 0)
        #expect(try Self.finished(body, counting: .onDemand, budget: Self.budget(instructions: 10_000_000), tries: 3) == 3)
    }

    @Test func aLongRunIsCountedOnceArmedAndTheNextRunIsNot() throws {
        // 10 million instructions: 20 ms or more, however loaded the machine.
        let long = "local x = 0 for i = 1, 5000000 do x = x + i end"
        let p = program(
            ["policy": "return { access = function(ctx) if probe.mode() == 'long' then \(long) else \(Self.shortLoop) end probe.put('done') end }"],
            counting: .onDemand)
        // Armed after about a millisecond, then counted, and stopped.
        let state = try LuaState(program: p)
        let stopped = Recorder()
        stopped.mode = "long"
        #expect(runRequest(state, stopped, budget: Self.budget(instructions: 100_000)).failure?.budget == "instructions")
        // With room for it, it finishes; the hook is removed after it, so a short run on the
        // same state is not counted.
        let next = try LuaState(program: p)
        let finishing = Recorder()
        finishing.mode = "long"
        #expect(runRequest(next, finishing, budget: Self.budget(instructions: 1_000_000_000)).isDone)
        #expect(!next.hookedBetweenRuns)
        var done = 0
        for _ in 0..<20 {
            if runRequest(next, Recorder(), budget: Self.budget(instructions: 10_000)).isDone { done += 1 }
        }
        #expect(done > 0)
        // Counting exactly, the hook stays.
        let exact = try LuaState(program: program(["policy": "return { access = function() end }"]))
        _ = runRequest(exact, Recorder())
        #expect(exact.hookedBetweenRuns)
    }
}
