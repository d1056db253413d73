import Yams

/// A script the config names, and where: checked against the scripts directory by the loader.
struct ScriptReference: Sendable {
    var module: String
    var line: Int
    var path: String
    var pointer: String
}

/// Yams refuses a document with a duplicate key as a whole, naming the first occurrence and
/// quoting the entire file. To report it as any other problem (`file:line path: message`) and
/// still find the rest, the loader renames the second occurrence with a marker and composes
/// again; `YAMLReader` reports a marked key as the duplicate it is.
enum DuplicateKeys {
    private static let marker = "~moongate-duplicate-of-line-"

    /// `text` with the occurrence of `key` after its first one (at `first`) renamed, or nil
    /// when it cannot be found (then the duplicate is reported alone).
    static func mark(_ key: String, after first: Mark, in text: String) -> String? {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { Array($0.unicodeScalars) }
        let firstLine = first.line - 1
        let column = first.column - 1
        guard firstLine >= 0, firstLine < lines.count, column >= 0, column < lines[firstLine].count else { return nil }
        let tag = Array((marker + String(first.line)).unicodeScalars)
        // Block style: a later line of the same mapping, at the same column.
        var index = firstLine + 1
        while index < lines.count {
            let line = lines[index]
            let indent = line.prefix { $0 == " " }.count
            let blank = indent == line.count || line[indent] == "#"
            if !blank {
                if indent < column { break }
                if indent == column, let end = keyEnd(key, in: line, at: column) {
                    lines[index].insert(contentsOf: tag, at: end)
                    return join(lines)
                }
            }
            index += 1
        }
        // Flow style: later on the first line, after a '{' or ','.
        var position = column + 1
        let line = lines[firstLine]
        while position < line.count {
            if line[position - 1] == "{" || line[position - 1] == "," || line[position - 1] == " ",
                let end = keyEnd(key, in: line, at: position)
            {
                lines[firstLine].insert(contentsOf: tag, at: end)
                return join(lines)
            }
            position += 1
        }
        return nil
    }

    /// The original key and the line of its first occurrence, for a marked key.
    static func marked(_ name: String) -> (String, Int)? {
        guard let range = name.range(of: marker, options: .backwards), let line = Int(name[range.upperBound...]) else { return nil }
        return (String(name[..<range.lowerBound]), line)
    }

    /// Where the key's text ends (inside its quotes) if `key` stands at `start` followed by
    /// a colon.
    private static func keyEnd(_ key: String, in line: [Unicode.Scalar], at start: Int) -> Int? {
        let k = Array(key.unicodeScalars)
        var i = start
        var quote: Unicode.Scalar?
        if i < line.count, line[i] == "\"" || line[i] == "'" {
            quote = line[i]
            i += 1
        }
        guard i + k.count <= line.count, Array(line[i..<(i + k.count)]) == k else { return nil }
        var end = i + k.count
        let inside = end
        if let quote {
            guard end < line.count, line[end] == quote else { return nil }
            end += 1
        }
        while end < line.count, line[end] == " " { end += 1 }
        guard end < line.count, line[end] == ":" else { return nil }
        return inside
    }

    private static func join(_ lines: [[Unicode.Scalar]]) -> String {
        lines.map { String(String.UnicodeScalarView($0)) }.joined(separator: "\n")
    }
}
