#if canImport(Glibc)
import Glibc
import FoundationEssentials

/// Watches files with inotify and reports changes, debounced: an editor's save (often a write,
/// a rename and a chmod in quick succession) becomes one event. It watches the files' folders,
/// so a file replaced by rename (as editors and `kubectl` config maps do) is still seen.
/// Directories are watched whole, subfolders included (for scripts: any `*.lua` change).
public final class FileWatcher: Sendable {
    /// One element per settled burst of changes.
    public let changes: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    private let fd: Int32
    private let stopped = OnceFlag()

    /// Watches `paths` (files) and, in `directories` and their subfolders, files ending in
    /// `suffix`; `debounce` is how long things must stay quiet before an event.
    public init(paths: [String], directories: [String] = [], suffix: String = ".lua", debounce: Duration = .milliseconds(150)) throws {
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
        var fileWatches: Set<Int32> = []
        for folder in folders {
            let wd = inotify_add_watch(fd, folder, mask)
            guard wd >= 0 else {
                close(fd)
                throw POSIXError(.init(rawValue: errno) ?? .EIO)
            }
            fileWatches.insert(wd)
        }
        var tree = DirectoryTree(fd: fd, suffix: suffix)
        for directory in directories { tree.add(URL(fileURLWithPath: directory).standardizedFileURL.path, recursive: true) }
        let fd = self.fd, stopped = self.stopped, continuation = self.continuation, watched = names
        let quietMillis = Int32(debounce.components.seconds * 1000 + debounce.components.attoseconds / 1_000_000_000_000_000)
        let files = fileWatches
        BackgroundThread.start(name: "moongate-watch") { [tree] in
            var tree = tree
            Self.loop(fd: fd, names: watched, fileWatches: files, tree: &tree, quietMillis: quietMillis, stopped: stopped, continuation: continuation)
        }
    }

    deinit { stop() }

    public func stop() {
        if stopped.set() { continuation.finish() }
    }

    private static func loop(
        fd: Int32, names: Set<String>, fileWatches: Set<Int32>, tree: inout DirectoryTree, quietMillis: Int32, stopped: OnceFlag,
        continuation: AsyncStream<Void>.Continuation
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
                    let name = String(decoding: nameBytes, as: UTF8.self)
                    if fileWatches.contains(event.wd), names.contains(name) { pending = true }
                    if tree.changed(event, name: name) { pending = true }
                    offset = nameStart + Int(event.len)
                }
            }
        }
    }
}

/// The watched directories, by watch descriptor, so new subfolders can be watched too.
struct DirectoryTree: @unchecked Sendable {
    let fd: Int32
    let suffix: String
    private(set) var paths: [Int32: String] = [:]

    init(fd: Int32, suffix: String) {
        self.fd = fd
        self.suffix = suffix
    }

    mutating func add(_ path: String, recursive: Bool) {
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB)
        let wd = inotify_add_watch(fd, path, mask)
        guard wd >= 0 else { return }
        paths[wd] = path
        guard recursive, let children = try? FileManager.default.contentsOfDirectory(atPath: path) else { return }
        for child in children {
            var isDirectory = false
            let full = path + "/" + child
            if FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), isDirectory { add(full, recursive: true) }
        }
    }

    /// Whether `event` changes a watched script; starts watching folders created meanwhile.
    mutating func changed(_ event: inotify_event, name: String) -> Bool {
        guard let folder = paths[event.wd] else { return false }
        if event.mask & UInt32(IN_ISDIR) != 0 {
            if event.mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 { add(folder + "/" + name, recursive: true) }
            return true
        }
        return name.hasSuffix(suffix)
    }
}

#endif
