import FoundationEssentials

/// One Lua file of the scripts directory.
public struct ScriptFile: Sendable, Equatable {
    /// The name `require` and routes use: `lib.util` for `lib/util.lua`.
    public let module: String
    /// The path shown in messages and tracebacks.
    public let path: String
    public let source: [UInt8]

    public init(module: String, path: String, source: [UInt8]) {
        self.module = module
        self.path = path
        self.source = source
    }
}

/// The scripts directory as read at one moment: part of a generation, never changed after.
public struct ScriptSet: Sendable, Equatable {
    public let directory: String
    public let files: [String: ScriptFile]

    /// Largest script accepted, and most scripts: a directory is source code, not data.
    public static let maxFileBytes = 1 << 20
    public static let maxFiles = 1000

    public init(directory: String, files: [ScriptFile]) {
        self.directory = directory
        self.files = Dictionary(files.map { ($0.module, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Reads every `*.lua` file under `directory` (tests, `*_test.lua`, are left to the harness).
    /// A missing directory is an empty set; unreadable files and bad names are errors.
    public static func load(directory: String) throws(ScriptErrors) -> ScriptSet {
        let fm = FileManager.default
        var isDirectory = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            return ScriptSet(directory: directory, files: [])
        }
        guard isDirectory else {
            throw ScriptErrors([ScriptError(file: directory, line: nil, message: "the scripts directory is not a directory")])
        }
        var errors: [ScriptError] = []
        var files: [ScriptFile] = []
        let relativePaths = ((try? fm.subpathsOfDirectory(atPath: directory)) ?? []).sorted()
        for relative in relativePaths where relative.hasSuffix(".lua") && !relative.hasSuffix("_test.lua") {
            let display = Self.shortPath(directory.hasSuffix("/") ? directory + relative : directory + "/" + relative)
            guard let module = moduleName(relative) else {
                errors.append(ScriptError(file: display, line: nil, message: "a script's path must be made of names such as lib/auth_util.lua (letters, digits, _)"))
                continue
            }
            guard files.count < maxFiles else {
                errors.append(ScriptError(file: directory, line: nil, message: "more than \(maxFiles) scripts"))
                break
            }
            guard let data = fm.contents(atPath: display) else {
                errors.append(ScriptError(file: display, line: nil, message: "cannot read the file"))
                continue
            }
            guard data.count <= maxFileBytes else {
                errors.append(ScriptError(file: display, line: nil, message: "larger than \(maxFileBytes / 1024) KiB"))
                continue
            }
            files.append(ScriptFile(module: module, path: display, source: Array(data)))
        }
        if !errors.isEmpty { throw ScriptErrors(errors) }
        return ScriptSet(directory: directory, files: files)
    }

    /// The scripts the config store holds, by path relative to the scripts directory, held to
    /// the rules of a directory (names `require` can spell, sizes, count).
    public static func make(sources: [String: String], label: String = "the config store") throws(ScriptErrors) -> ScriptSet {
        var errors: [ScriptError] = []
        var files: [ScriptFile] = []
        if sources.count > maxFiles { errors.append(ScriptError(file: label, line: nil, message: "more than \(maxFiles) scripts")) }
        for (relative, source) in sources.sorted(by: { $0.key < $1.key }) {
            guard relative.hasSuffix(".lua"), let module = moduleName(relative) else {
                errors.append(ScriptError(file: relative, line: nil, message: "a script's path must be made of names such as lib/auth_util.lua (letters, digits, _)"))
                continue
            }
            guard source.utf8.count <= maxFileBytes else {
                errors.append(ScriptError(file: relative, line: nil, message: "larger than \(maxFileBytes / 1024) KiB"))
                continue
            }
            files.append(ScriptFile(module: module, path: relative, source: Array(source.utf8)))
        }
        if !errors.isEmpty { throw ScriptErrors(errors) }
        return ScriptSet(directory: label, files: files)
    }

    /// `path` relative to the working directory when it is inside it: Lua keeps only the
    /// last 60 characters of a script's path in messages, so shorter is clearer.
    public static func shortPath(_ path: String) -> String {
        guard path.hasPrefix("/") else { return path }
        let cwd = FileManager.default.currentDirectoryPath
        let prefix = cwd.hasSuffix("/") ? cwd : cwd + "/"
        return path.hasPrefix(prefix) ? String(path.dropFirst(prefix.count)) : path
    }

    /// `lib/util.lua` → `lib.util`; nil for names `require` could not spell.
    static func moduleName(_ relative: String) -> String? {
        let segments = relative.dropLast(4).split(separator: "/", omittingEmptySubsequences: false)
        for segment in segments {
            guard let first = segment.first, first == "_" || (first.isASCII && first.isLetter) else { return nil }
            guard segment.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else { return nil }
        }
        return segments.joined(separator: ".")
    }
}
