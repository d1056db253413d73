import Foundation

/// Runs `tool` to its end and returns its exit status and its output (stdout and stderr
/// together); `stdin`, if given, is a file fed to it.
func runTool(_ tool: String, _ arguments: [String], stdin: String? = nil) throws -> (Int32, String) {
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
