/// A PostgreSQL connection's protocol state as a value: backend messages in, actions out.
/// The handler that drives it owns the socket and the callers' promises; this owns the order
/// of things (startup, authentication, then requests answered one `ReadyForQuery` each).
struct PostgresConnectionStateMachine {
    enum State {
        case startingUp
        case authenticating(PostgresAuthentication.SCRAM?)
        case waitingForReady
        case ready
        case closed
    }

    enum Action: Equatable {
        case none
        /// Bytes for the server (authentication answers), built by the handler.
        case sendPassword([UInt8], cString: Bool)
        case sendSASLInitial(mechanism: String, [UInt8])
        case connected
        /// The oldest request in flight is answered.
        case answer(Result<[[String?]], PostgresError>)
        case notify(channel: String, payload: String)
        /// Close the connection, failing what waits with this.
        case fail(PostgresError)
    }

    private(set) var state: State = .startingUp
    let user: String
    let password: String?
    /// Requests sent and not yet answered (each ends with its own `ReadyForQuery`).
    private(set) var inFlight = 0
    private var rows: [[String?]] = []
    private var serverError: PostgresWire.ServerError?

    init(user: String, password: String?) {
        self.user = user
        self.password = password
    }

    /// A request was written; false when the connection cannot take one.
    mutating func requestSent() -> Bool {
        guard case .ready = state else { return false }
        inFlight += 1
        return true
    }

    mutating func closed() {
        state = .closed
    }

    mutating func receive(_ message: PostgresWire.Backend) -> Action {
        switch state {
        case .closed:
            return .none
        case .startingUp, .authenticating, .waitingForReady:
            return startup(message)
        case .ready:
            return request(message)
        }
    }

    private mutating func startup(_ message: PostgresWire.Backend) -> Action {
        switch message {
        case .authentication(let code, let data):
            return authenticate(code, data)
        case .error(let e):
            state = .closed
            return .fail(.server(sqlState: e.sqlState, message: e.message))
        case .readyForQuery:
            guard case .waitingForReady = state else { return protocolViolation("ready before authentication") }
            state = .ready
            return .connected
        case .parameterStatus, .backendKeyData, .notice, .notification, .other:
            return .none
        default:
            return protocolViolation("unexpected message during startup")
        }
    }

    private mutating func authenticate(_ code: Int32, _ data: [UInt8]) -> Action {
        switch code {
        case 0:
            if case .authenticating(let scram?) = state, scram.expectedServerSignature == nil {
                return protocolViolation("authentication ended before SCRAM finished")
            }
            state = .waitingForReady
            return .none
        case 3:
            guard let password else { return failAuthentication(.passwordRequired) }
            state = .authenticating(nil)
            return .sendPassword(Array(password.utf8), cString: true)
        case 5:
            guard let password else { return failAuthentication(.passwordRequired) }
            guard data.count == 4 else { return protocolViolation("MD5 salt") }
            state = .authenticating(nil)
            return .sendPassword(PostgresAuthentication.md5Password(user: user, password: password, salt: data), cString: true)
        case 10:
            let mechanisms = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard mechanisms.contains("SCRAM-SHA-256") else { return failAuthentication(.unsupported("SASL \(mechanisms.joined(separator: ", "))")) }
            guard let password else { return failAuthentication(.passwordRequired) }
            let scram = PostgresAuthentication.SCRAM(password: password)
            state = .authenticating(scram)
            return .sendSASLInitial(mechanism: "SCRAM-SHA-256", scram.clientFirst)
        case 11:
            guard case .authenticating(var scram?) = state else { return protocolViolation("SASL continue without SASL") }
            do {
                let final = try scram.clientFinal(serverFirst: data)
                state = .authenticating(scram)
                return .sendPassword(final, cString: false)
            } catch {
                return failAuthentication(error)
            }
        case 12:
            guard case .authenticating(let scram?) = state else { return protocolViolation("SASL final without SASL") }
            do {
                try scram.verify(serverFinal: data)
                return .none
            } catch {
                return failAuthentication(error)
            }
        default:
            return failAuthentication(.unsupported("method \(code)"))
        }
    }

    private mutating func request(_ message: PostgresWire.Backend) -> Action {
        switch message {
        case .dataRow(let columns):
            rows.append(columns)
            return .none
        case .error(let e):
            // FATAL and PANIC end the session; the server closes after sending them.
            guard inFlight > 0, e.severity != "FATAL", e.severity != "PANIC" else {
                state = .closed
                return .fail(.server(sqlState: e.sqlState, message: e.message))
            }
            serverError = serverError ?? e
            return .none
        case .readyForQuery:
            guard inFlight > 0 else { return .none }
            inFlight -= 1
            defer {
                rows = []
                serverError = nil
            }
            if let e = serverError { return .answer(.failure(.server(sqlState: e.sqlState, message: e.message))) }
            return .answer(.success(rows))
        case .notification(let channel, let payload):
            return .notify(channel: channel, payload: payload)
        case .authentication:
            return protocolViolation("authentication after startup")
        default:
            return .none
        }
    }

    private mutating func failAuthentication(_ failure: PostgresAuthentication.Failure) -> Action {
        state = .closed
        return .fail(.authentication(failure.description))
    }

    private mutating func protocolViolation(_ what: String) -> Action {
        state = .closed
        return .fail(.protocolViolation(what))
    }
}

/// Why a PostgreSQL call failed.
public enum PostgresError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The server refused the statement (or the session): its SQLSTATE and message.
    case server(sqlState: String, message: String)
    case authentication(String)
    /// Connecting failed, or the connection broke.
    case connection(String)
    case protocolViolation(String)
    case closed

    /// Whether the connection is still good after this error (the server answered).
    public var keepsConnection: Bool {
        if case .server = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .server(let state, let message): return "\(state): \(message)"
        case .authentication(let why): return "authentication failed: \(why)"
        case .connection(let why): return "connection failed: \(why)"
        case .protocolViolation(let what): return "protocol violation: \(what)"
        case .closed: return "the connection is closed"
        }
    }
}
