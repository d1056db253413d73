import CEpoll
import Glibc
import NIOCore

/// A listening TCP socket on a ``SocketLoop``. Each accepted connection goes to `onAccept`,
/// which must ``TCPConnection/start(delegate:)`` or close it.
///
/// With `reusePort`, one listener per loop can share an address (`SO_REUSEPORT`): the kernel
/// spreads connections over the loops, and no accept is ever handed between threads.
public final class TCPListener: SocketLoopSource, SocketLoopClosable {
    /// Connections taken per readiness event before the loop serves others.
    static let acceptsPerEvent = 64

    public let loop: SocketLoop
    public let fd: Int32
    /// The bound address (with the port the system chose for port 0).
    public let localAddress: SocketAddress
    private var registration: SocketLoop.Registration?
    private let onAccept: (TCPConnection) -> Void
    public private(set) var isOpen = true
    /// Accept failures other than "nothing to accept" (descriptor limits, mostly; each pauses
    /// accepting for ``acceptPause``).
    public private(set) var acceptErrors = 0

    /// Binds and listens on `address`, on `loop` (call from the loop).
    public init(
        address: SocketAddress, on loop: SocketLoop, reusePort: Bool = false, backlog: Int32 = 4096,
        onAccept: @escaping (TCPConnection) -> Void
    ) throws(SocketError) {
        loop.preconditionInEventLoop()
        let family: Int32
        switch address {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        default: throw .system("listen: not an IP address", EAFNOSUPPORT)
        }
        let fd = cepoll_socket(family)
        guard fd >= 0 else { throw .system("socket", cepoll_errno()) }
        _ = cepoll_set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)
        if reusePort { _ = cepoll_set_int(fd, SOL_SOCKET, SO_REUSEPORT, 1) }
        let bound = address.withSockAddr { Glibc.bind(fd, $0, socklen_t($1)) }
        guard bound == 0, Glibc.listen(fd, backlog) == 0 else {
            let e = cepoll_errno()
            Glibc.close(fd)
            throw .system("bind \(address)", e)
        }
        self.fd = fd
        self.loop = loop
        self.onAccept = onAccept
        self.localAddress = Self.boundAddress(fd) ?? address
        do {
            registration = try loop.register(fd, events: CEPOLL_IN, source: self)
        } catch {
            Glibc.close(fd)
            isOpen = false
            throw error
        }
    }

    deinit {
        if isOpen { Glibc.close(fd) }
    }

    public func ready(events: UInt32) {
        var storage = sockaddr_storage()
        for _ in 0..<Self.acceptsPerEvent {
            guard isOpen else { return }
            if let admit, !admit() {
                // Full: the connection waits in the kernel's queue, and epoll (level-triggered)
                // would report it again at once. Accepting pauses briefly instead.
                pauseAccepting(for: Self.fullPause, error: nil)
                return
            }
            let client = cepoll_accept(fd, &storage)
            if client < 0 {
                let e = cepoll_errno()
                if e == EINTR || e == ECONNABORTED { continue }
                if e == EAGAIN || e == EWOULDBLOCK { return }
                acceptErrors += 1
                // Out of descriptors or memory: the connection stays queued and epoll (level-
                // triggered) would report it again at once, a busy loop on a starved process.
                // Accepting pauses for a while instead, as nginx does.
                if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM { pauseAccepting(for: Self.acceptPause, error: .system("accept", e)) }
                return
            }
            _ = cepoll_set_int(client, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            let connection = TCPConnection(fd: client, remoteAddress: Self.address(storage), loop: loop)
            onAccept(connection)
        }
    }

    /// How long accepting pauses after running out of descriptors or memory.
    static let acceptPause = TimeAmount.milliseconds(100)
    private var acceptPaused = false

    /// How long accepting pauses when `admit` says no: short, so a freed slot is taken soon.
    static let fullPause = TimeAmount.milliseconds(20)

    /// Told of each accept failure that pauses accepting (to log it), on the loop.
    public var onAcceptError: ((SocketError) -> Void)?

    /// Asked before each accept: false pauses accepting (a worker at its connection limit).
    /// Told through `onFull` (to log it), on the loop.
    public var admit: (() -> Bool)?
    public var onFull: (() -> Void)?

    private func pauseAccepting(for pause: TimeAmount, error: SocketError?) {
        guard !acceptPaused, let registration else { return }
        acceptPaused = true
        if let error { onAcceptError?(error) } else { onFull?() }
        loop.reregister(registration, events: 0)
        _ = loop.setTimer(at: .now() + pause) { [weak self] in
            guard let self, self.acceptPaused else { return }
            self.acceptPaused = false
            if self.isOpen, let registration = self.registration { self.loop.reregister(registration, events: CEPOLL_IN) }
        }
    }

    /// Stops listening; connections already accepted are not touched.
    public func close() {
        guard isOpen else { return }
        isOpen = false
        if let registration { loop.close(registration) } else { Glibc.close(fd) }
        registration = nil
    }

    func closeForShutdown() { close() }

    static func boundAddress(_ fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return rc == 0 ? address(storage) : nil
    }

    static func address(_ storage: sockaddr_storage) -> SocketAddress? {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee) } }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee) } }
        default:
            return nil
        }
    }
}
