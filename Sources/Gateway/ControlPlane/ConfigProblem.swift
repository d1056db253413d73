import Config
import Scripting

/// One reason a configuration was refused, placed in the document by a JSON pointer
/// (`/routes/2/upstream`, `/scripts/auth.lua`): the admin API's `422` body, and a log line.
public struct ConfigProblem: Sendable, Equatable {
    public var pointer: String
    public var message: String
    /// The problem as the log and `/status` print it (file:line for a file, else the pointer).
    public var text: String

    public init(pointer: String, message: String, text: String? = nil) {
        self.pointer = pointer
        self.message = message
        self.text = text ?? (pointer.isEmpty ? message : "\(pointer): \(message)")
    }

    public var json: JSONValue { .object(["path": .string(pointer), "message": .string(message)]) }

    /// The problems a failed load threw: config diagnostics with their pointers, script errors
    /// at their script (`/scripts/<path>`), anything else at the document's root.
    static func from(_ error: any Error, file: String) -> [ConfigProblem] {
        switch error {
        case let error as ConfigError:
            return error.diagnostics.map { ConfigProblem(pointer: $0.pointer, message: $0.message, text: $0.description) }
        case let error as ScriptErrors:
            return error.errors.map { e in
                let message = e.line.map { "line \($0): \(e.message)" } ?? e.message
                return ConfigProblem(pointer: e.file.map { JSONPointer.join("/scripts", $0) } ?? "/scripts", message: message, text: e.description)
            }
        default:
            return [ConfigProblem(pointer: "", message: "\(error)", text: "\(file): \(error)")]
        }
    }
}
