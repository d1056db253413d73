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
