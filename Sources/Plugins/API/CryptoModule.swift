import CJOSE
import CLuaRuntime
import COpenSSL
import Scripting

/// `crypto`: digests, HMAC, random bytes, constant-time comparison and base64, on OpenSSL.
/// Digests and MACs are raw bytes; `crypto.hex` and `crypto.b64encode` spell them.
public struct CryptoModule: LuaModule {
    public let name = "crypto"

    public init() {}

    /// Most random bytes one call returns.
    static let maxRandom = 1024
    /// PBKDF2 iterations at most (a script's time budget bounds the rest).
    static let maxIterations = 1_000_000

    public func register(_ L: OpaquePointer) {
        Lua.setFunction(L, "sha256") { L in
            let L = L!
            guard let data = Lua.bytes(L, 1) else { return Lua.raise(L, "crypto.sha256(data): data must be a string") }
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { out in
                mg_sha256(data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count, out.baseAddress)
                Lua.push(L, bytes: UnsafeRawBufferPointer(out))
            }
            return 1
        }
        Lua.setFunction(L, "hmac_sha256") { L in
            let L = L!
            guard let key = Lua.bytes(L, 1), let data = Lua.bytes(L, 2) else {
                return Lua.raise(L, "crypto.hmac_sha256(key, data): key and data must be strings")
            }
            var out = [UInt8](repeating: 0, count: 32)
            var length: UInt32 = 0
            guard HMAC(EVP_sha256(), key.baseAddress, Int32(key.count), data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count, &out, &length) != nil
            else { return Lua.raise(L, "crypto.hmac_sha256: failed") }
            out.withUnsafeBytes { Lua.push(L, bytes: $0) }
            return 1
        }
        Lua.setFunction(L, "pbkdf2_sha256") { L in
            let L = L!
            guard let password = Lua.bytes(L, 1), let salt = Lua.bytes(L, 2), let iterations = Lua.integer(L, 3),
                (1...CryptoModule.maxIterations).contains(iterations)
            else {
                return Lua.raise(L, "crypto.pbkdf2_sha256(password, salt, iterations): strings and 1 to \(CryptoModule.maxIterations) iterations")
            }
            var out = [UInt8](repeating: 0, count: 32)
            guard
                PKCS5_PBKDF2_HMAC(
                    password.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(password.count), salt.baseAddress?.assumingMemoryBound(to: UInt8.self),
                    Int32(salt.count), Int32(iterations), EVP_sha256(), 32, &out) == 1
            else { return Lua.raise(L, "crypto.pbkdf2_sha256: failed") }
            out.withUnsafeBytes { Lua.push(L, bytes: $0) }
            return 1
        }
        Lua.setFunction(L, "random") { L in
            let L = L!
            guard let n = Lua.integer(L, 1), (1...CryptoModule.maxRandom).contains(n) else {
                return Lua.raise(L, "crypto.random(n): n from 1 to \(CryptoModule.maxRandom)")
            }
            let ok = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: n) { out in
                guard mg_random_bytes(out.baseAddress, n) == 1 else { return false }
                Lua.push(L, bytes: UnsafeRawBufferPointer(out))
                return true
            }
            return ok ? 1 : Lua.raise(L, "crypto.random: the system's random source failed")
        }
        Lua.setFunction(L, "uuid") { L in
            let L = L!
            // Version 4 (RFC 9562): 122 random bits, spelled 8-4-4-4-12 in lower-case hex.
            var b: (UInt64, UInt64) = (0, 0)
            guard withUnsafeMutableBytes(of: &b, { mg_random_bytes($0.baseAddress!.assumingMemoryBound(to: UInt8.self), 16) }) == 1 else {
                return Lua.raise(L, "crypto.uuid: the system's random source failed")
            }
            withUnsafeMutableBytes(of: &b) { b in
                b[6] = (b[6] & 0x0f) | 0x40  // version 4
                b[8] = (b[8] & 0x3f) | 0x80  // the RFC's variant
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 36) { text in
                    var j = 0
                    for i in 0..<16 {
                        if i == 4 || i == 6 || i == 8 || i == 10 {
                            text[j] = UInt8(ascii: "-")
                            j += 1
                        }
                        text[j] = Hex.digit(b[i] >> 4)
                        text[j + 1] = Hex.digit(b[i] & 15)
                        j += 2
                    }
                    Lua.push(L, bytes: UnsafeRawBufferPointer(text))
                }
            }
            return 1
        }
        Lua.setFunction(L, "equal") { L in
            let L = L!
            guard let a = Lua.bytes(L, 1), let b = Lua.bytes(L, 2) else { return Lua.raise(L, "crypto.equal(a, b): strings") }
            // Constant time in the contents (the lengths are not secret).
            let same = a.count == b.count && CRYPTO_memcmp(a.baseAddress, b.baseAddress, a.count) == 0
            lua_pushboolean(L, same ? 1 : 0)
            return 1
        }
        Lua.setFunction(L, "hex") { L in
            let L = L!
            guard let data = Lua.bytes(L, 1), data.count <= 1 << 20 else { return Lua.raise(L, "crypto.hex(bytes): a string up to 1 MiB") }
            var out = [UInt8](repeating: 0, count: data.count * 2)
            for (i, byte) in data.enumerated() {
                out[2 * i] = Hex.digits[Int(byte >> 4)]
                out[2 * i + 1] = Hex.digits[Int(byte & 15)]
            }
            out.withUnsafeBytes { Lua.push(L, bytes: $0) }
            return 1
        }
        Lua.setFunction(L, "b64encode") { L in
            let L = L!
            guard let data = Lua.bytes(L, 1), data.count <= 1 << 20 else { return Lua.raise(L, "crypto.b64encode(bytes, [url]): a string up to 1 MiB") }
            let url = lua_toboolean(L, 2) != 0
            Lua.push(L, Base64.encode(data, url: url))
            return 1
        }
        Lua.setFunction(L, "b64decode") { L in
            let L = L!
            guard let text = Lua.bytes(L, 1), text.count <= 2 << 20 else { return Lua.raise(L, "crypto.b64decode(text): a string up to 2 MiB") }
            guard let bytes = Base64.decode(text) else {
                lua_pushnil(L)
                return 1
            }
            bytes.withUnsafeBytes { Lua.push(L, bytes: $0) }
            return 1
        }
    }
}

enum Hex {
    static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// The lower-case digit for `v` (0-15), without a table.
    @inline(__always) static func digit(_ v: UInt8) -> UInt8 { v < 10 ? 48 + v : 87 + v }
}

/// Base64 (RFC 4648), standard or URL-safe alphabet; decoding takes either, with or without padding.
enum Base64 {
    static let standard: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let urlSafe: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    static let values: [Int8] = {
        var t = [Int8](repeating: -1, count: 256)
        for (i, c) in standard.enumerated() { t[Int(c)] = Int8(i) }
        t[Int(UInt8(ascii: "-"))] = 62
        t[Int(UInt8(ascii: "_"))] = 63
        return t
    }()

    static func encode(_ data: UnsafeRawBufferPointer, url: Bool) -> String {
        let alphabet = url ? urlSafe : standard
        var out: [UInt8] = []
        out.reserveCapacity((data.count + 2) / 3 * 4)
        var i = 0
        while i + 2 < data.count {
            let n = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2])
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], alphabet[Int(n & 63)]]
            i += 3
        }
        let rest = data.count - i
        if rest > 0 {
            let n = UInt32(data[i]) << 16 | (rest == 2 ? UInt32(data[i + 1]) << 8 : 0)
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)]]
            if rest == 2 { out.append(alphabet[Int(n >> 6 & 63)]) }
            if !url { out += Array(repeating: UInt8(ascii: "="), count: 3 - rest) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: UnsafeRawBufferPointer) -> [UInt8]? {
        var end = text.count
        while end > 0, text[end - 1] == UInt8(ascii: "=") { end -= 1 }
        guard text.count - end <= 2, end % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(end * 3 / 4)
        var acc: UInt32 = 0
        var bits = 0
        for i in 0..<end {
            let v = values[Int(text[i])]
            guard v >= 0 else { return nil }
            acc = acc << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
            }
        }
        return out
    }
}
