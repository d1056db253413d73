import COpenSSL
import Redis

/// The token bucket as a Lua script run by Redis itself: refill from Redis's own `TIME`,
/// take, write back, in one atomic step (`EVALSHA`), so concurrent gateways cannot both
/// spend the same tokens (the read-then-write race of the limiters Kong and APISIX shipped),
/// and gateway clocks do not matter.
///
/// State: tokens and the microsecond they were counted at, in a hash that expires when the
/// bucket would be full (a missing key is a full bucket). Integer microseconds keep the
/// refill exact; the same arithmetic as the local store's, so the two agree.
enum RedisBucketScript {
    static let source = """
        if redis.replicate_commands then redis.replicate_commands() end
        local capacity, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
        local now = tonumber(ARGV[4])
        if not now then
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        end
        local b = redis.call('HMGET', KEYS[1], 'tokens', 'us')
        local tokens, us = tonumber(b[1]), tonumber(b[2])
        if not tokens or not us then tokens, us = capacity, now end
        if now > us then
          tokens = math.min(capacity, tokens + (now - us) * rate / 1000000)
          us = now
        end
        local allowed, retry = 0, 0
        if tokens >= cost then
          tokens = tokens - cost
          allowed = 1
        else
          retry = math.ceil((cost - tokens) * 1000000 / rate - 1e-6)
        end
        local reset = math.ceil((capacity - tokens) * 1000000 / rate - 1e-6)
        if allowed == 1 then
          if reset > 0 then
            redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'us', string.format('%d', us))
            redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1)
          else
            redis.call('DEL', KEYS[1])
          end
        end
        return {allowed, math.floor(tokens + 1e-9), retry, reset}
        """

    /// SHA-1 of `source` in hex, as `EVALSHA` names it.
    static let sha1: String = {
        var digest = [UInt8](repeating: 0, count: 20)
        var length: UInt32 = 0
        let bytes = Array(source.utf8)
        _ = EVP_Digest(bytes, bytes.count, &digest, &length, EVP_sha1(), nil)
        return digest.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }()

    /// `EVALSHA sha 1 key capacity rate cost [now]` (or `EVAL` with the source).
    static func command(
        eval: Bool, key: UnsafeRawBufferPointer, prefix: String, capacity: Double, rate: Double, cost: Double, nowMicros: Int64?
    ) -> RedisCommand {
        var c = RedisCommand(eval ? "EVAL" : "EVALSHA", eval ? source : sha1, "1")
        // `{key}`: the key is the hash tag, so on Redis Cluster the bucket's slot follows it.
        var k = Array(prefix.utf8)
        k.append(UInt8(ascii: "{"))
        k.append(contentsOf: key)
        k.append(UInt8(ascii: "}"))
        c.append(bytes: k)
        c.append(number(capacity))
        c.append(number(rate))
        c.append(number(cost))
        if let nowMicros { c.append(String(nowMicros)) }
        return c
    }

    private static func number(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : "\(v)"
    }

    /// The script's `{allowed, remaining, retry_us, reset_us}`.
    static func decision(_ reply: RedisReply) -> BucketDecision? {
        guard case .array(let items) = reply, items.count == 4,
            let allowed = items[0].int, let remaining = items[1].int, let retry = items[2].int, let reset = items[3].int
        else { return nil }
        return BucketDecision(
            allowed: allowed == 1, remaining: Int(max(0, remaining)), retryAfter: Double(retry) / 1e6, resetAfter: Double(reset) / 1e6)
    }

    static func isNoScript(_ reply: RedisReply) -> Bool {
        if case .error(let message) = reply { return message.hasPrefix("NOSCRIPT") }
        return false
    }
}
