import Config
import FoundationEssentials
import Scripting

/// The ways `moongate test` reports: readable text, TAP, JUnit XML.
public enum TestReport {
    public struct Totals: Sendable {
        public var passed = 0, failed = 0, pending = 0, loadErrors = 0
        public var seconds = 0.0
        public var ok: Bool { failed == 0 && loadErrors == 0 && passed + pending > 0 }
    }

    public static func totals(_ files: [FileResult]) -> Totals {
        var t = Totals()
        for file in files {
            t.seconds += file.seconds
            if file.loadError != nil { t.loadErrors += 1 }
            for test in file.tests {
                switch test.status {
                case .passed: t.passed += 1
                case .failed: t.failed += 1
                case .pending: t.pending += 1
                }
            }
        }
        return t
    }

    /// A line per failure with its `file:line`, then a summary.
    public static func text(_ files: [FileResult]) -> String {
        var out = ""
        for file in files {
            if let error = file.loadError { out += "ERROR \(file.path): cannot load\n  \(error.replacing("\n", with: "\n  "))\n" }
            for test in file.tests where test.status == .failed {
                out += "FAIL \(test.name)  (\(test.location))\n"
                out += "  \((test.message ?? "failed").replacing("\n", with: "\n  "))\n"
            }
        }
        let t = totals(files)
        if t.passed + t.failed + t.pending == 0, t.loadErrors == 0 { out += "no tests found\n" }
        out += "\(t.passed) passed, \(t.failed) failed, \(t.pending) pending"
        if t.loadErrors > 0 { out += ", \(t.loadErrors) \(t.loadErrors == 1 ? "file" : "files") not loaded" }
        out += " (\(files.count) files, \(t.seconds.fixed(3)) s)\n"
        return out
    }

    /// TAP version 13.
    public static func tap(_ files: [FileResult]) -> String {
        var lines = ["TAP version 13"]
        var n = 0
        for file in files {
            if let error = file.loadError {
                n += 1
                lines.append("not ok \(n) - \(file.path) (load)")
                lines.append(contentsOf: yaml(message: error, at: file.path))
            }
            for test in file.tests {
                n += 1
                switch test.status {
                case .passed: lines.append("ok \(n) - \(test.name)")
                case .pending: lines.append("ok \(n) - \(test.name) # SKIP pending")
                case .failed:
                    lines.append("not ok \(n) - \(test.name)")
                    lines.append(contentsOf: yaml(message: test.message ?? "failed", at: test.location))
                }
            }
        }
        lines.insert("1..\(n)", at: 1)
        return lines.joined(separator: "\n") + "\n"
    }

    private static func yaml(message: String, at location: String) -> [String] {
        ["  ---", "  message: |"] + message.split(separator: "\n", omittingEmptySubsequences: false).map { "    \($0)" }
            + ["  at: \(location)", "  ..."]
    }

    /// JUnit XML (the schema's testsuites/testsuite/testcase with failure, error, skipped).
    public static func junit(_ files: [FileResult]) -> String {
        let t = totals(files)
        var x = #"<?xml version="1.0" encoding="UTF-8"?>"# + "\n"
        x += #"<testsuites name="moongate" tests="\#(t.passed + t.failed + t.pending + t.loadErrors)" failures="\#(t.failed)" errors="\#(t.loadErrors)" skipped="\#(t.pending)" time="\#(t.seconds.fixed(3))">"# + "\n"
        for file in files {
            let failures = file.tests.filter { $0.status == .failed }.count
            let skipped = file.tests.filter { $0.status == .pending }.count
            let errors = file.loadError == nil ? 0 : 1
            x += #"  <testsuite name="\#(escape(file.path))" tests="\#(file.tests.count + errors)" failures="\#(failures)" errors="\#(errors)" skipped="\#(skipped)" time="\#(file.seconds.fixed(3))">"# + "\n"
            if let error = file.loadError {
                x += #"    <testcase name="(load)" classname="\#(escape(file.path))" time="0"><error message="cannot load">\#(escape(error))</error></testcase>"# + "\n"
            }
            for test in file.tests {
                x += #"    <testcase name="\#(escape(test.name))" classname="\#(escape(file.path))" file="\#(escape(test.location))" time="\#(test.seconds.fixed(6))">"#
                switch test.status {
                case .passed: break
                case .pending: x += "<skipped/>"
                case .failed:
                    let message = test.message ?? "failed"
                    let first = message.split(separator: "\n").first.map(String.init) ?? message
                    x += #"<failure message="\#(escape(first))">\#(escape(message))</failure>"#
                }
                x += "</testcase>\n"
            }
            x += "  </testsuite>\n"
        }
        return x + "</testsuites>\n"
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\n", "\t", "\r": out.unicodeScalars.append(scalar)
            default:
                // XML 1.0 has no place for other control characters.
                if scalar.value < 0x20 { out += "?" } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out
    }
}

/// `--coverage`: which lines of each policy script the tests ran.
public enum CoverageReport {
    /// Lines a line hook can stop on, approximately (as luacov does): not blank, not only a
    /// comment, not a lone `end`, `else`, `do`, `then` or closing bracket. Lines run count
    /// whatever they look like.
    static func candidateLines(_ source: String) -> Set<Int> {
        var lines: Set<Int> = []
        var inLongComment = false
        for (i, raw) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = String(raw.trimmingWhitespace())
            if inLongComment {
                if line.contains("]]") { inLongComment = false }
                continue
            }
            if line.hasPrefix("--[[") || line.hasPrefix("--[=[") {
                if !line.contains("]]") { inLongComment = true }
                continue
            }
            if let comment = line.firstRange(of: "--") { line = String(line[..<comment.lowerBound].trimmingWhitespace()) }
            if line.isEmpty { continue }
            let lone: Set<String> = ["end", "end)", "end,", "end}", "else", "do", "then", "}", "},", "})", ")", "),", "{", "repeat", "end;"]
            if lone.contains(line) { continue }
            // A function's header holds no instruction: its closure is made on its `end` line.
            if isFunctionHeader(line) { continue }
            lines.insert(i + 1)
        }
        return lines
    }

    /// `function name(...)`, `local function name(...)`, `name = function(...)` or
    /// `function(...)` alone on a line. Hand-written rather than a `Regex`: the regex engine
    /// is a megabyte of the binary, for this one line.
    static func isFunctionHeader(_ line: String) -> Bool {
        let whole = Substring(line)
        if whole.hasPrefix("local") {
            let rest = whole.dropFirst(5)
            let body = rest.drop { $0 == " " || $0 == "\t" }
            if body.count < rest.count, isFunctionHeaderBody(body) { return true }
        }
        return isFunctionHeaderBody(whole)
    }

    private static func isFunctionHeaderBody(_ line: Substring) -> Bool {
        var s = line
        func isWord(_ c: Character) -> Bool { c.isLetter || c.isNumber || c == "_" }
        func skipSpaces() -> Bool {
            let before = s.count
            s = s.drop { $0 == " " || $0 == "\t" }
            return s.count < before
        }
        func take(_ word: String) -> Bool {
            guard s.hasPrefix(word) else { return false }
            s = s.dropFirst(word.count)
            return true
        }
        func take(while allowed: (Character) -> Bool) -> Bool {
            let before = s.count
            s = s.drop(while: allowed)
            return s.count < before
        }
        /// `(...)` to the end of the line.
        func parameters() -> Bool { s.first == "(" && s.last == ")" }
        if take("function") {
            let spaced = skipSpaces()
            if parameters() { return true }
            if spaced, take(while: { isWord($0) || $0 == "." || $0 == ":" }) {
                _ = skipSpaces()
                if parameters() { return true }
            }
        }
        s = line
        guard take(while: { isWord($0) || ".[]\"'".contains($0) }) else { return false }
        _ = skipSpaces()
        guard take("=") else { return false }
        _ = skipSpaces()
        guard take("function") else { return false }
        _ = skipSpaces()
        return parameters()
    }

    public static func text(_ recorder: CoverageRecorder, scripts: [(path: String, source: String)]) -> String {
        let hits = recorder.hits
        var out = "coverage of the policy scripts (lines run / lines with code):\n"
        var totalRun = 0, totalLines = 0
        for (path, source) in scripts.sorted(by: { $0.path < $1.path }) {
            let run = hits[path] ?? []
            let lines = candidateLines(source).union(run)
            let covered = lines.intersection(run).count
            totalRun += covered
            totalLines += lines.count
            let percent = lines.isEmpty ? 100 : Double(covered) * 100 / Double(lines.count)
            out += "  " + (percent.fixed(1) + "%").padded(left: 7) + "  " + String(covered).padded(left: 4) + "/" + String(lines.count).padded(right: 4) + "  " + path
            let missed = lines.subtracting(run).sorted()
            if !missed.isEmpty { out += "  missed: " + ranges(missed) }
            out += "\n"
        }
        let percent = totalLines == 0 ? 100 : Double(totalRun) * 100 / Double(totalLines)
        out += "  " + (percent.fixed(1) + "%").padded(left: 7) + "  " + String(totalRun).padded(left: 4) + "/" + String(totalLines).padded(right: 4) + "  total\n"
        return out
    }

    /// 1,2,3,7 → "1-3, 7".
    static func ranges(_ lines: [Int]) -> String {
        var parts: [String] = []
        var start = lines[0], end = lines[0]
        for line in lines.dropFirst() {
            if line == end + 1 {
                end = line
            } else {
                parts.append(start == end ? "\(start)" : "\(start)-\(end)")
                start = line
                end = line
            }
        }
        parts.append(start == end ? "\(start)" : "\(start)-\(end)")
        return parts.joined(separator: ", ")
    }
}

/// The policy scripts of a scripts directory, for the coverage report.
public enum ScriptSetReader {
    public static func policySources(_ directory: String) throws -> [(path: String, source: String)] {
        try ScriptSet.load(directory: directory).files.values.map { ($0.path, String(decoding: $0.source, as: UTF8.self)) }
    }
}
