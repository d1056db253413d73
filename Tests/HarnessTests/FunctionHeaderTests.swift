import Testing

@testable import Harness

/// The coverage report's hand-written function-header test agrees with the regular
/// expression it replaced, on lines made to sit on and around its edges.
struct FunctionHeaderTests {
    @Test func agreesWithTheRegularExpression() {
        let regex = #/^(local\s+)?(function\s+[\w.:]+\s*\(.*\)|[\w.\[\]"']+\s*=\s*function\s*\(.*\)|function\s*\(.*\))$/#
        let prefixes = ["", "local ", "local\t", "local", "localx ", " "]
        let bodies = [
            "function f(a)", "function M.f(a, b)", "function M:f()", "function(a)", "function (a)", "function f (a)",
            "f = function(a)", "M.f = function(x)", "t[\"k\"] = function()", "x=function()", "x = function (a)",
            "function f(a) return a end", "function f", "functionality = 1", "functionx = function()", "f = function",
            "f = 1", "return function(a)", "function f(a)  ", "f = function(a) end", "function f.g:h(a)", "= function()",
            "function ()", "function f()x", "function  f  (  )", "a b = function()",
        ]
        for prefix in prefixes {
            for body in bodies {
                let line = prefix + body
                let expected = (try? regex.wholeMatch(in: line)) != nil
                #expect(CoverageReport.isFunctionHeader(line) == expected, "[\(line)]")
            }
        }
    }
}
