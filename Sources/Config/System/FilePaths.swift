#if canImport(Glibc)
import Glibc
#endif

/// Path arithmetic on strings, as the config's relative paths need it (`NSString`'s
/// `lastPathComponent` and `deletingLastPathComponent`, which live in the part of Foundation
/// the gateway leaves out).
public enum FilePaths {
    /// The last component: `a/b.yaml` → `b.yaml`, `a/b/` → `b`, `/` → `/`.
    public static func lastComponent(_ path: String) -> String {
        let trimmed = trimmingTrailingSlashes(path)
        guard trimmed != "/" else { return "/" }
        guard let slash = trimmed.lastIndex(of: "/") else { return trimmed }
        return String(trimmed[trimmed.index(after: slash)...])
    }

    /// The folder a path is in: `a/b.yaml` → `a`, `b.yaml` → `` (the current folder), `/b` → `/`.
    public static func parent(_ path: String) -> String {
        let trimmed = trimmingTrailingSlashes(path)
        guard let slash = trimmed.lastIndex(of: "/") else { return "" }
        let head = trimmingTrailingSlashes(String(trimmed[..<slash]))
        return head.isEmpty ? "/" : head
    }

    /// `file` as seen from `folder` (unchanged when absolute or when `folder` is empty).
    public static func resolve(_ file: String, against folder: String) -> String {
        file.hasPrefix("/") || folder.isEmpty ? file : (folder.hasSuffix("/") ? folder + file : folder + "/" + file)
    }

    private static func trimmingTrailingSlashes(_ path: String) -> String {
        var s = Substring(path)
        while s.count > 1, s.hasSuffix("/") { s = s.dropLast() }
        return String(s)
    }
}

/// Files read whole, with the system's reason when they cannot be.
public enum FileReading {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The file's bytes, refused past `limit` bytes.
    public static func bytes(_ path: String, limit: Int = 64 << 20) throws(Failure) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: reason(errno)) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: reason(errno))
            }
            if n == 0 { return out }
            guard out.count + n <= limit else { throw Failure(description: "larger than \(limit) bytes") }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    /// The file as UTF-8 text.
    public static func text(_ path: String, limit: Int = 64 << 20) throws(Failure) -> String {
        let data = try bytes(path, limit: limit)
        guard let text = String(validating: data, as: UTF8.self) else { throw Failure(description: "not UTF-8 text") }
        return text
    }

    private static func reason(_ code: Int32) -> String {
        String(cString: strerror(code))
    }
}

/// Messages for people on standard error, written whole.
public enum StandardError {
    public static func write(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return }
            bytes = bytes.dropFirst(n)
        }
    }
}
