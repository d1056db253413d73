import NIOCore

/// What an upstream connection reports to the request currently using it. Implemented by the
/// downstream handler; both sides live on the same event loop, so calls are direct.
protocol UpstreamExchange: AnyObject {
    func upstreamRead(_ buffer: ByteBuffer)
    func upstreamReadComplete()
    /// `reused`: the connection had carried an earlier request (it may have gone stale in the pool).
    func upstreamClosed(error: Error?, reused: Bool)
    func upstreamWritabilityChanged(writable: Bool)
    func upstreamTimedOut()
}
