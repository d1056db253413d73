import Foundation

/// A loopback TCP port nothing listens on right now (bound to port 0 and released), for test
/// servers that need their port before they start.
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard bound else { throw NoFreePort() }
    return Int(UInt16(bigEndian: addr.sin_port))
}

public struct NoFreePort: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "no free loopback port" }
}

/// Runs `tool` to its end and returns its exit status and its output (stdout and stderr
/// together); `stdin`, if given, is a file fed to it.
public func runTool(_ tool: String, _ arguments: [String], stdin: String? = nil) throws -> (Int32, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: tool)
    process.arguments = arguments
    if let stdin { process.standardInput = FileHandle(forReadingAtPath: stdin) }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Self-signed certificates with real ECDSA P-256 keys, made by the `openssl` command in a
/// folder removed with the value: `name.pem` and `name.key`.
public final class MadeCertificates: @unchecked Sendable {
    public let path = NSTemporaryDirectory() + "moongate-certs-\(UUID().uuidString)"

    public init() throws { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Makes `name.pem` (for `subject`, with `altNames` as DNS subjectAltNames, valid two days)
    /// and `name.key`; returns their paths.
    @discardableResult
    public func make(_ name: String, subject: String, altNames: [String]) throws -> (cert: String, key: String) {
        var arguments = [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-keyout", "\(path)/\(name).key", "-out", "\(path)/\(name).pem", "-subj", "/CN=\(subject)",
        ]
        if !altNames.isEmpty { arguments += ["-addext", "subjectAltName=" + altNames.map { "DNS:\($0)" }.joined(separator: ",")] }
        let (status, output) = try runTool("/usr/bin/openssl", arguments)
        guard status == 0 else { throw ToolFailed(description: "openssl req for \(name): \(output)") }
        return ("\(path)/\(name).pem", "\(path)/\(name).key")
    }

    /// A certificate authority: `name.pem` and `name.key`, for `make(_:subject:altNames:signedBy:)`.
    @discardableResult
    public func makeCA(_ name: String) throws -> (cert: String, key: String) {
        let (status, output) = try runTool("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-keyout", "\(path)/\(name).key", "-out", "\(path)/\(name).pem", "-subj", "/CN=\(name)",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        guard status == 0 else { throw ToolFailed(description: "openssl req for \(name): \(output)") }
        return ("\(path)/\(name).pem", "\(path)/\(name).key")
    }

    /// A certificate for `subject` signed by the CA `ca` (made with `makeCA`).
    @discardableResult
    public func make(_ name: String, subject: String, altNames: [String], signedBy ca: String) throws -> (cert: String, key: String) {
        let (status, output) = try runTool("/usr/bin/openssl", [
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "\(path)/\(name).key", "-out", "\(path)/\(name).csr", "-subj", "/CN=\(subject)",
        ])
        guard status == 0 else { throw ToolFailed(description: "openssl req for \(name): \(output)") }
        let extensions = "\(path)/\(name).ext"
        try (altNames.isEmpty ? "" : "subjectAltName=" + altNames.map { "DNS:\($0)" }.joined(separator: ",") + "\n")
            .write(toFile: extensions, atomically: true, encoding: .utf8)
        let (signed, signing) = try runTool("/usr/bin/openssl", [
            "x509", "-req", "-in", "\(path)/\(name).csr", "-CA", "\(path)/\(ca).pem", "-CAkey", "\(path)/\(ca).key",
            "-CAcreateserial", "-days", "2", "-out", "\(path)/\(name).pem", "-extfile", extensions,
        ])
        guard signed == 0 else { throw ToolFailed(description: "openssl x509 for \(name): \(signing)") }
        return ("\(path)/\(name).pem", "\(path)/\(name).key")
    }

    /// The certificates `names` in one file: a client's trusted roots.
    public func roots(_ names: [String]) throws -> String {
        let all = try names.map { try String(contentsOfFile: "\(path)/\($0).pem", encoding: .utf8) }.joined()
        try all.write(toFile: "\(path)/roots.pem", atomically: true, encoding: .utf8)
        return "\(path)/roots.pem"
    }
}

public struct ToolFailed: Error, CustomStringConvertible {
    public var description: String
}

/// Runs blocking work (a child process, a server's start) on a thread of its own: Swift
/// concurrency's pool has a thread per core, and a test that blocks one stalls every other
/// test in the process.
public func onItsOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
