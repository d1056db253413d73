#if canImport(Glibc)
import Glibc
import Foundation

/// Watches files with inotify and reports changes, debounced: an editor's save (often a write,
/// a rename and a chmod in quick succession) becomes one event. It watches the files' folders,
/// so a file replaced by rename (as editors and `kubectl` config maps do) is still seen.
public final class FileWatcher: Sendable {
    /// One element per settled burst of changes.
    public let changes: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    private let fd: Int32
    private let stopped = ManagedFlag()

    /// Watches `paths` (files); `debounce` is how long the folder must stay quiet before an event.
    public init(paths: [String], debounce: Duration = .milliseconds(150)) throws {
        (changes, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var names: Set<String> = []
        var folders: Set<String> = []
        for path in paths {
            let url = URL(fileURLWithPath: path).standardizedFileURL
            names.insert(url.lastPathComponent)
            folders.insert(url.deletingLastPathComponent().path)
        }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB)
        for folder in folders where inotify_add_watch(fd, folder, mask) < 0 {
            close(fd)
            throw POSIXError(.init(rawValue: errno) ?? .EIO)
        }
        let fd = self.fd, stopped = self.stopped, continuation = self.continuation, watched = names
        let quietMillis = Int32(debounce.components.seconds * 1000 + debounce.components.attoseconds / 1_000_000_000_000_000)
        let thread = Thread {
            Self.loop(fd: fd, names: watched, quietMillis: quietMillis, stopped: stopped, continuation: continuation)
        }
        thread.name = "moongate-file-watcher"
        thread.start()
    }

    deinit { stop() }

    public func stop() {
        if stopped.set() { continuation.finish() }
    }

    private static func loop(
        fd: Int32, names: Set<String>, quietMillis: Int32, stopped: ManagedFlag, continuation: AsyncStream<Void>.Continuation
    ) {
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var pending = false
        while !stopped.isSet {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, pending ? quietMillis : 200)
            if ready == 0 {
                if pending {
                    pending = false
                    continuation.yield()
                }
                continue
            }
            guard ready > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { continue }
            var offset = 0
            buffer.withUnsafeBytes { raw in
                while offset + MemoryLayout<inotify_event>.size <= n {
                    let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    let nameStart = offset + MemoryLayout<inotify_event>.size
                    let nameBytes = raw[nameStart..<nameStart + Int(event.len)].prefix { $0 != 0 }
                    if names.contains(String(decoding: nameBytes, as: UTF8.self)) { pending = true }
                    offset = nameStart + Int(event.len)
                }
            }
        }
    }
}

/// A flag set once, read from the watcher thread.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    var isSet: Bool { lock.withLock { value } }

    /// Sets it; true if this call was the one that set it.
    func set() -> Bool {
        lock.withLock {
            defer { value = true }
            return !value
        }
    }
}
#endif
