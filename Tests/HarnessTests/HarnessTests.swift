import Config
import Foundation
import TestSupport
import Testing

@testable import Harness

#if canImport(FoundationXML)
import FoundationXML
#endif

/// The `moongate test` harness: what a test file reports, in which formats, with what
/// clock, and what happens when a script breaks its budget.
@Suite struct HarnessTests {
    static let config = """
        listeners:
          - name: test
            address: 127.0.0.1:8080
        upstreams:
          app:
            targets: [ "127.0.0.1:9" ]
        routes:
          - name: app
            match: { path_prefix: / }
            upstream: app
            policy: policy.lua
        """

    static let policy = """
        return {
          access = function(ctx)
            if request.header("X-Spin") then while true do end end
            local expires = tonumber(request.query_arg("expires"))
            if expires and now() > expires then request.respond(410, "expired") end
            log.info("passing", request.path())
          end,
        }
        """

    /// A folder with the config, `policies/policy.lua` and the given test files.
    final class Project {
        let folder: String

        init(tests: [String: String], policy: String = HarnessTests.policy, config: String = HarnessTests.config) throws {
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-harness-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: folder + "/policies", withIntermediateDirectories: true)
            try config.write(toFile: folder + "/gateway.yaml", atomically: true, encoding: .utf8)
            try policy.write(toFile: folder + "/policies/policy.lua", atomically: true, encoding: .utf8)
            for (name, source) in tests { try source.write(toFile: folder + "/policies/" + name, atomically: true, encoding: .utf8) }
        }

        deinit { try? FileManager.default.removeItem(atPath: folder) }

        func run(filter: String? = nil, coverage: Bool = false) throws -> ([FileResult], TestRunner) {
            let config = try ConfigLoader.load(path: folder + "/gateway.yaml")
            let runner = TestRunner(config: config, coverage: coverage)
            return (runner.run(TestRunner.discover([folder + "/policies"]), filter: filter), runner)
        }
    }

    @Test func fakeClockMovesExpiry() throws {
        let project = try Project(tests: [
            "clock_test.lua": """
            it("expires with the clock", function()
              local expires = harness.clock.now() + 30
              assert.equals(200, harness.request{path = "/x?expires=" .. expires}.status)
              harness.clock.advance(31)
              local res = harness.request{path = "/x?expires=" .. expires}
              assert.equals(410, res.status)
              assert.equals("expired", res.body)
            end)
            it("starts every test at the same instant", function()
              assert.equals(1700000000, harness.clock.now())
              harness.clock.set(5)
              assert.equals(410, harness.request{path = "/x?expires=4"}.status)
            end)
            """
        ])
        let (results, _) = try project.run()
        #expect(results.first?.tests.map(\.status) == [.passed, .passed], "\(results)")
    }

    /// `harness.clock.advance` drives the data plane's clock as well as the scripts': passive
    /// health ejects a failing target, and it is back once its eject time has passed. Each
    /// test starts with every target healthy.
    @Test func theClockDrivesPassiveHealth() throws {
        let config = Self.config.replacingOccurrences(
            of: "targets: [ \"127.0.0.1:9\" ]", with: "targets: [ \"127.0.0.1:9\" ]\n    passive_health: { failures: 2, eject: 30s }")
        let project = try Project(
            tests: [
                "health_test.lua": """
                it("ejects a failing target until its eject time passes", function()
                  local calls = 0
                  harness.upstream("app", function(req)
                    calls = calls + 1
                    if calls <= 2 then return nil, "unavailable" end
                    return {status = 200, body = "back"}
                  end)
                  assert.equals(502, harness.request{path = "/"}.status)
                  assert.equals(502, harness.request{path = "/"}.status)
                  -- Ejected: the gateway answers without trying it.
                  assert.equals(503, harness.request{path = "/"}.status)
                  assert.equals(2, calls)
                  harness.clock.advance(29)
                  assert.equals(503, harness.request{path = "/"}.status)
                  harness.clock.advance(2)
                  local res = harness.request{path = "/"}
                  assert.equals(200, res.status)
                  assert.equals("back", res.body)
                  assert.equals(3, calls)
                  -- It fails again: ejected, and left so for the next test.
                  harness.upstream("app", function(req) return nil, "unavailable" end)
                  harness.request{path = "/"}
                  harness.request{path = "/"}
                  assert.equals(503, harness.request{path = "/"}.status)
                end)
                it("starts with every target healthy", function()
                  harness.upstream("app", function(req) return {status = 200} end)
                  assert.equals(200, harness.request{path = "/"}.status)
                end)
                """
            ], config: config)
        let (results, _) = try project.run()
        #expect(results.first?.tests.map(\.status) == [.passed, .passed], "\(results)")
    }

    /// A policy that breaks its budget answers its request 500 (the test sees it and fails);
    /// a test that breaks its own budget fails; the run goes on either way.
    @Test func budgetBreakingScriptsFailOnlyTheirTest() throws {
        let project = try Project(tests: [
            "budget_test.lua": """
            it("a policy that spins", function()
              assert.equals(200, harness.request{path = "/", headers = {["X-Spin"] = "1"}}.status)
            end)
            it("the next test", function()
              assert.equals(200, harness.request{path = "/"}.status)
            end)
            it("a test that spins", function()
              while true do end
            end)
            it("the test after it", function()
              assert.equals(200, harness.request{path = "/"}.status)
            end)
            it("sees why the policy failed", function()
              harness.request{path = "/", headers = {["X-Spin"] = "1"}}
              local logs = harness.logs()
              assert.equals("instructions", logs[#logs].budget)
            end)
            """
        ])
        let (results, _) = try project.run()
        let tests = try #require(results.first?.tests)
        #expect(tests.map(\.status) == [.failed, .passed, .failed, .passed, .passed], "\(tests)")
        #expect(tests[0].message?.contains("expected: 200") == true)
        #expect(tests[0].message?.contains("actual: 500") == true)
        // Lua keeps the end of a long path in messages: the file and line are what matter.
        #expect(tests[2].message?.contains("/policies/budget_test.lua:8: cpu budget exceeded") == true, "\(tests[2])")
    }

    /// A config that keeps the access log on (stdout, the default) does not print a line per
    /// simulated request between the results: the harness keeps them for `harness.access_log()`.
    @Test func accessLogIsCapturedNotPrinted() throws {
        let project = try Project(tests: [
            "many_test.lua": """
            it("sends a thousand requests", function()
              for i = 1, 1000 do assert.equals(200, harness.request{path = "/n/" .. i}.status) end
              local lines = harness.access_log()
              assert.equals(1000, #lines)
              assert.equals("/n/1", lines[1].path)
              assert.equals(200, lines[1].status)
              assert.equals("app", lines[1].route)
            end)
            it("starts with an empty access log", function()
              assert.equals(0, #harness.access_log())
              harness.request{path = "/one", headers = {["X-Spin"] = "1"}}
              local lines = harness.access_log()
              assert.equals(1, #lines)
              assert.equals(500, lines[1].status)
            end)
            it("fails", function() assert.equals(1, 2) end)
            """
        ])
        let (status, output) = try run(["test", project.folder + "/policies"])
        #expect(status == 1)
        #expect(!output.contains("{\"time\""), "\(output.prefix(2000))")
        #expect(output.split(separator: "\n").count < 30, "\(output.prefix(2000))")
        #expect(output.contains("2 passed, 1 failed"), "\(output)")
    }

    /// The binary, as CI runs it: a failing test means a non-zero exit and its file:line.
    @Test func failingTestExitsNonZeroWithItsLine() throws {
        let project = try Project(tests: [
            "pass_test.lua": "it('passes', function() assert.truthy(true) end)",
            "fail_test.lua": "describe('math', function()\n  it('adds', function()\n    assert.equals(4, 2 + 3)\n  end)\nend)",
        ])
        let (status, output) = try run(["test", project.folder + "/policies"])
        #expect(status == 1)
        #expect(output.contains("FAIL math adds  ("), "\(output)")
        #expect(output.contains("/policies/fail_test.lua:2)\n"), "\(output)")
        #expect(output.contains("/policies/fail_test.lua:3: values are not equal"), "\(output)")
        #expect(output.contains("1 passed, 1 failed, 0 pending"), "\(output)")
        try FileManager.default.removeItem(atPath: project.folder + "/policies/fail_test.lua")
        let (ok, _) = try run(["test", project.folder + "/policies"])
        #expect(ok == 0)
    }

    @Test func aTestFileThatDoesNotLoadIsReported() throws {
        let project = try Project(tests: ["broken_test.lua": "describe('x', function()\n  it('y', function() end\nend)"])
        let (results, _) = try project.run()
        #expect(results.first?.loadError?.contains("broken_test.lua:3:") == true, "\(results)")
        #expect(!TestReport.totals(results).ok)
    }

    /// JUnit XML with the elements and attributes its schema requires.
    @Test func junitReport() throws {
        let project = try Project(tests: [
            "mixed_test.lua": """
            describe("mixed", function()
              it("passes", function() end)
              it("fails <badly> & \\"loudly\\"", function() assert.equals(1, 2) end)
              pending("later")
            end)
            """
        ])
        let (results, _) = try project.run()
        let xml = try XMLDocument(data: Data(TestReport.junit(results).utf8))
        let root = try #require(xml.rootElement())
        #expect(root.name == "testsuites")
        #expect(root.attribute(forName: "tests")?.stringValue == "3")
        #expect(root.attribute(forName: "failures")?.stringValue == "1")
        let suite = try #require(root.elements(forName: "testsuite").first)
        for required in ["name", "tests", "failures", "errors", "skipped", "time"] {
            #expect(suite.attribute(forName: required) != nil, "testsuite@\(required)")
        }
        let cases = suite.elements(forName: "testcase")
        #expect(cases.count == 3)
        for testcase in cases {
            #expect(testcase.attribute(forName: "name") != nil && testcase.attribute(forName: "classname") != nil)
        }
        let failed = try #require(cases.first { !$0.elements(forName: "failure").isEmpty })
        #expect(failed.attribute(forName: "name")?.stringValue == "mixed fails <badly> & \"loudly\"")
        #expect(failed.elements(forName: "failure").first?.attribute(forName: "message")?.stringValue?.contains("mixed_test.lua:3") == true)
        #expect(cases.contains { !$0.elements(forName: "skipped").isEmpty })
    }

    @Test func tapReportAndFilter() throws {
        let project = try Project(tests: [
            "f_test.lua": "it('alpha one', function() end)\nit('beta', function() error('no') end)\nit('alpha two', function() end)"
        ])
        let (results, _) = try project.run(filter: "alpha")
        let tap = TestReport.tap(results)
        #expect(tap.hasPrefix("TAP version 13\n1..2\nok 1 - alpha one\nok 2 - alpha two\n"), "\(tap)")
        let (all, _) = try project.run()
        #expect(TestReport.tap(all).contains("not ok 2 - beta\n  ---\n  message: |\n    "))
        #expect(TestReport.tap(all).contains("/policies/f_test.lua:2: no\n"))
    }

    @Test func coverageCountsThePolicyLinesRun() throws {
        let project = try Project(tests: ["c_test.lua": "it('plain', function() harness.request{path = '/'} end)"])
        let (_, runner) = try project.run(coverage: true)
        let recorder = try #require(runner.coverage)
        let lines = recorder.hits[project.folder + "/policies/policy.lua"] ?? []
        #expect(lines.isSuperset(of: [3, 4, 5, 6]), "\(lines.sorted())")
        let report = CoverageReport.text(recorder, scripts: [(project.folder + "/policies/policy.lua", HarnessTests.policy)])
        #expect(report.contains("policy.lua"), "\(report)")
        #expect(CoverageReport.ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10")
    }

    /// The sandbox's own suite: at least 30 tests, all passing, in well under a second.
    @Test func sandboxSuite() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let config = try ConfigLoader.load(path: root.appendingPathComponent("sandbox/gateway.yaml").path)
        let start = ContinuousClock.now
        let results = try TestRunner.forGateway(config: config).run(TestRunner.discover([config.scripts.directory]))
        let elapsed = ContinuousClock.now - start
        let totals = TestReport.totals(results)
        #expect(totals.ok, "\(TestReport.text(results))")
        #expect(totals.passed >= 30)
        #expect(elapsed < .seconds(1))
    }

    func run(_ args: [String]) throws -> (Int32, String) {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("moongate")
        return try runTool(binary.path, args)
    }
}
