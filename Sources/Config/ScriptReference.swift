/// A script the config names, and where: checked against the scripts directory by the loader.
struct ScriptReference: Sendable {
    var module: String
    var line: Int
    var path: String
    var pointer: String
}
