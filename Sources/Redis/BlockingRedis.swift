import CHiredis
#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking hiredis connection, for tools and the test harness (`moongate test
/// --redis`), never for an event loop.
public final class BlockingRedis {
    private let context: UnsafeMutablePointer<redisContext>

    public init(host: String, port: Int, timeoutSeconds: Double = 2) throws(RedisError) {
        let tv = timeval(tv_sec: Int(timeoutSeconds), tv_usec: Int((timeoutSeconds - timeoutSeconds.rounded(.down)) * 1e6))
        guard let c = redisConnectWithTimeout(host, Int32(port), tv) else { throw .unavailable("out of memory") }
        if c.pointee.err != 0 {
            let message = withUnsafeBytes(of: c.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            redisFree(c)
            throw .unavailable("\(host):\(port): \(message)")
        }
        redisSetTimeout(c, tv)
        context = c
    }

    deinit {
        redisFree(context)
    }

    public func send(_ command: RedisCommand) throws(RedisError) -> RedisReply {
        let raw = command.withArgv { n, argv, lengths in redisCommandArgv(context, n, argv, lengths) }
        guard let raw else {
            let message = withUnsafeBytes(of: context.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw context.pointee.err == REDIS_ERR_IO || message.contains("timed out") ? .timeout : .unavailable(message)
        }
        defer { freeReplyObject(raw) }
        return RedisReply(raw.assumingMemoryBound(to: redisReply.self))
    }
}
