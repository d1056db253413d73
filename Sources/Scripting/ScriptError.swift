/// A script that failed to load or validate, with where it failed.
public struct ScriptError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The script's path as shown in messages (`policies/auth.lua`), if known.
    public var file: String?
    public var line: Int?
    public var message: String

    public init(file: String?, line: Int?, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    /// Splits a Lua error message of the form `path:line: message`.
    public init(luaMessage: String) {
        let parts = luaMessage.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        if parts.count == 3, let line = Int(parts[1]), !parts[0].isEmpty {
            self.init(file: String(parts[0]), line: line, message: String(parts[2].drop { $0 == " " }))
        } else {
            self.init(file: nil, line: nil, message: luaMessage)
        }
    }

    public var description: String {
        switch (file, line) {
        case (let file?, let line?): return "\(file):\(line): \(message)"
        case (let file?, nil): return "\(file): \(message)"
        default: return message
        }
    }
}

/// Every problem found in a scripts directory.
public struct ScriptErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ScriptError]

    public init(_ errors: [ScriptError]) { self.errors = errors }

    public var description: String { errors.map(\.description).joined(separator: "\n") }
}
