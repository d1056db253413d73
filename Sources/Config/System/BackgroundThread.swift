#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A named thread for blocking work that must stay off the event loops (inotify, blocking
/// Redis in the harness). Foundation's `Thread` lives in the part of Foundation the gateway
/// leaves out; this is the pthread it wraps.
public enum BackgroundThread {
    /// Starts `body` on a new detached thread; `name` says what it is for in a crash report.
    /// `stackSize` (bytes) when the default (8 MiB for the main thread, often less for others)
    /// is not to be relied on.
    public static func start(name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Body(name: name, run: body)).toOpaque()
        // Allocated rather than `pthread_attr_t()`: the zero initializer of this C type is
        // claimed by whichever C module included its header first.
        let attributes = UnsafeMutablePointer<pthread_attr_t>.allocate(capacity: 1)
        pthread_attr_init(attributes)
        defer {
            pthread_attr_destroy(attributes)
            attributes.deallocate()
        }
        if let stackSize { pthread_attr_setstacksize(attributes, stackSize) }
        var thread = pthread_t()
        let made = pthread_create(&thread, attributes, { raw in
            let body = Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue()
            body.run()
            return nil
        }, box)
        precondition(made == 0, "pthread_create failed for \(name): \(made)")
        pthread_detach(thread)
    }

    private final class Body {
        let name: String
        let run: @Sendable () -> Void
        init(name: String, run: @escaping @Sendable () -> Void) {
            self.name = name
            self.run = run
        }
    }
}

/// A flag set once, read from another thread.
public final class OnceFlag: Sendable {
    private let value = Atomic<Bool>(false)

    public init() {}

    public var isSet: Bool { value.load(ordering: .acquiring) }

    /// Sets it; true if this call was the one that set it.
    public func set() -> Bool {
        !value.exchange(true, ordering: .acquiringAndReleasing)
    }
}
