import COpenSSL
import FoundationEssentials

/// The password methods PostgreSQL asks for: SCRAM-SHA-256 (RFC 5802, RFC 7677; the default
/// since PostgreSQL 14), MD5 and cleartext, on OpenSSL's digests.
enum PostgresAuthentication {
    enum Failure: Error, Equatable, CustomStringConvertible {
        case passwordRequired
        case unsupported(String)
        case badServerMessage(String)
        case serverSignatureMismatch

        var description: String {
            switch self {
            case .passwordRequired: return "the server asks for a password and none is configured (store.password_file)"
            case .unsupported(let what): return "unsupported authentication: \(what)"
            case .badServerMessage(let why): return "bad SCRAM message from the server: \(why)"
            case .serverSignatureMismatch: return "the server did not prove it knows the password (SCRAM signature mismatch)"
            }
        }
    }

    /// `md5` + hex(md5(hex(md5(password + user)) + salt)).
    static func md5Password(user: String, password: String, salt: [UInt8]) -> [UInt8] {
        let inner = hex(digest(Array((password + user).utf8), EVP_md5()))
        return Array(("md5" + hex(digest(Array(inner.utf8) + salt, EVP_md5()))).utf8)
    }

    /// One SCRAM-SHA-256 exchange, client side.
    struct SCRAM {
        let password: String
        let clientNonce: String
        /// PostgreSQL takes the user from the startup message and leaves this empty.
        let user: String
        private(set) var expectedServerSignature: [UInt8]?

        init(password: String, clientNonce: String? = nil, user: String = "") {
            self.password = password
            self.user = user
            if let clientNonce {
                self.clientNonce = clientNonce
            } else {
                var random = [UInt8](repeating: 0, count: 18)
                _ = RAND_bytes(&random, Int32(random.count))
                self.clientNonce = Data(random).base64EncodedString()
            }
        }

        var clientFirstBare: String { "n=\(user),r=\(clientNonce)" }
        var clientFirst: [UInt8] { Array(("n,," + clientFirstBare).utf8) }

        /// The client-final message for the server-first one.
        mutating func clientFinal(serverFirst: [UInt8]) throws(Failure) -> [UInt8] {
            let text = String(decoding: serverFirst, as: UTF8.self)
            var nonce: String?, salt: [UInt8]?, iterations: Int?
            for part in text.split(separator: ",") {
                let value = String(part.dropFirst(2))
                switch part.prefix(2) {
                case "r=": nonce = value
                case "s=": salt = Data(base64Encoded: value).map(Array.init)
                case "i=": iterations = Int(value)
                default: break
                }
            }
            guard let nonce, nonce.hasPrefix(clientNonce), nonce.count > clientNonce.count else { throw .badServerMessage("nonce") }
            guard let salt, !salt.isEmpty else { throw .badServerMessage("salt") }
            // Bounded: a hostile server could otherwise ask for a billion rounds.
            guard let iterations, (1...10_000_000).contains(iterations) else { throw .badServerMessage("iteration count") }

            var salted = [UInt8](repeating: 0, count: 32)
            let passwordBytes = Array(password.utf8)
            _ = PKCS5_PBKDF2_HMAC(passwordBytes.map { CChar(bitPattern: $0) }, Int32(passwordBytes.count), salt, Int32(salt.count), Int32(iterations), EVP_sha256(), 32, &salted)
            let clientKey = hmac(salted, Array("Client Key".utf8))
            let storedKey = digest(clientKey, EVP_sha256())
            let withoutProof = "c=biws,r=\(nonce)"
            let authMessage = Array("\(clientFirstBare),\(text),\(withoutProof)".utf8)
            let signature = hmac(storedKey, authMessage)
            let proof = zip(clientKey, signature).map { $0 ^ $1 }
            expectedServerSignature = hmac(hmac(salted, Array("Server Key".utf8)), authMessage)
            return Array("\(withoutProof),p=\(Data(proof).base64EncodedString())".utf8)
        }

        /// Checks the server-final message: the server must know the password too.
        func verify(serverFinal: [UInt8]) throws(Failure) {
            let text = String(decoding: serverFinal, as: UTF8.self)
            guard let expected = expectedServerSignature else { throw .badServerMessage("final before first") }
            guard let v = text.split(separator: ",").first(where: { $0.hasPrefix("v=") }),
                let signature = Data(base64Encoded: String(v.dropFirst(2))).map(Array.init)
            else { throw .badServerMessage(text.hasPrefix("e=") ? String(text.dropFirst(2)) : "no signature") }
            guard signature == expected else { throw .serverSignatureMismatch }
        }
    }

    static func digest(_ bytes: [UInt8], _ md: OpaquePointer?) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        _ = EVP_Digest(bytes, bytes.count, &out, &length, md, nil)
        return Array(out.prefix(Int(length)))
    }

    static func hmac(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        _ = HMAC(EVP_sha256(), key, Int32(key.count), data, data.count, &out, &length)
        return Array(out.prefix(Int(length)))
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
