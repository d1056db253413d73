#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Checks that nothing listens on an address yet, by binding it without `SO_REUSEPORT`.
enum PortProbe {
    struct InUse: Error, CustomStringConvertible {
        let address: String
        var description: String { "address already in use" }
    }

    static func ensureFree(host: String, port: Int) throws {
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let fd = socket(Int32(address.protocol.rawValue), Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var one: Int32 = 1
        // SO_REUSEADDR only skips TIME_WAIT leftovers; a live listener still refuses the bind.
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = address.withSockAddr { sockaddr, size in Glibc.bind(fd, sockaddr, socklen_t(size)) }
        if rc != 0, errno == EADDRINUSE { throw InUse(address: "\(host):\(port)") }
    }
}
