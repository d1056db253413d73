import Foundation
import NIOPosix
import PostgresTestServer
import TestSupport
import Testing

@testable import Postgres

/// The config store's PostgreSQL client against a real server: the password methods
/// PostgreSQL offers, statements and their errors, parameters, pipelining, notifications.
@Suite(.serialized)
struct PostgresConnectionTests {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    /// One cluster for the suite (initdb is the costly part), made off the concurrency pool;
    /// the test that kills it runs last.
    static let server = Task { try await onItsOwnThread { try PostgresProcess() } }

    /// RFC 7677's SCRAM-SHA-256 example, byte for byte (user "user", password "pencil").
    @Test func scramMatchesTheRFCExample() throws {
        var scram = PostgresAuthentication.SCRAM(password: "pencil", clientNonce: "rOprNGfwEbeRWgbNEkqO", user: "user")
        #expect(String(decoding: scram.clientFirst, as: UTF8.self) == "n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        let serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        let final = try scram.clientFinal(serverFirst: Array(serverFirst.utf8))
        #expect(
            String(decoding: final, as: UTF8.self)
                == "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        try scram.verify(serverFinal: Array("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".utf8))
        #expect(throws: PostgresAuthentication.Failure.serverSignatureMismatch) {
            try scram.verify(serverFinal: Array("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".utf8))
        }
        var greedy = PostgresAuthentication.SCRAM(password: "x", clientNonce: "abc")
        #expect(throws: PostgresAuthentication.Failure.badServerMessage("iteration count")) {
            try greedy.clientFinal(serverFirst: Array("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=2000000000".utf8))
        }
        #expect(throws: PostgresAuthentication.Failure.badServerMessage("nonce")) {
            try greedy.clientFinal(serverFirst: Array("r=zzz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".utf8))
        }
    }

    @Test func authenticatesWithSCRAMAndMD5AndRefusesAWrongPassword() async throws {
        let server = try await Self.server.value
        try await onItsOwnThread {
            _ = try server.psql("SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user LOGIN PASSWORD 's3cret ünï'")
            _ = try server.psql("SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5pass'")
            try server.requirePasswords(["scram_user": "scram-sha-256", "md5_user": "md5"])
        }
        let loop = Self.group.next()

        let scram = try await PostgresConnection.connect(
            host: "127.0.0.1", port: server.port, user: "scram_user", password: "s3cret ünï", database: "postgres", on: loop)
        #expect(try await scram.query("SELECT current_user") == [["scram_user"]])
        await scram.close()
        #expect(scram.isClosed)

        let md5 = try await PostgresConnection.connect(host: "127.0.0.1", port: server.port, user: "md5_user", password: "md5pass", database: "postgres", on: loop)
        #expect(try await md5.query("SELECT current_user") == [["md5_user"]])
        await md5.close()

        for (user, password) in [("scram_user", "wrong"), ("md5_user", "wrong")] {
            await #expect(throws: PostgresError.server(sqlState: "28P01", message: "password authentication failed for user \"\(user)\"")) {
                _ = try await PostgresConnection.connect(host: "127.0.0.1", port: server.port, user: user, password: password, database: "postgres", on: loop)
            }
        }
        await #expect(throws: PostgresError.authentication(PostgresAuthentication.Failure.passwordRequired.description)) {
            _ = try await PostgresConnection.connect(host: "127.0.0.1", port: server.port, user: "scram_user", password: nil, database: "postgres", on: loop)
        }
    }

    @Test func statementsParametersErrorsAndNotifications() async throws {
        let server = try await Self.server.value
        let loop = Self.group.next()
        let c = try await PostgresConnection.connect(host: "127.0.0.1", port: server.port, user: server.user, password: nil, database: server.database, on: loop)
        try await c.query("CREATE TABLE t (id int PRIMARY KEY, body text)")
        // Parameters travel apart from the statement: quotes and NULL arrive as they are.
        let tricky = "it's \"quoted\"; DROP TABLE t; -- ü"
        try await c.query("INSERT INTO t VALUES ($1, $2), ($3, $4)", ["1", tricky, "2", nil])
        #expect(try await c.query("SELECT id, body FROM t ORDER BY id") == [["1", tricky], ["2", nil]])

        // A statement the server refuses fails alone; the connection goes on.
        await #expect(throws: PostgresError.server(sqlState: "23505", message: "duplicate key value violates unique constraint \"t_pkey\"")) {
            try await c.query("INSERT INTO t VALUES ($1, $2)", ["1", "again"])
        }
        await #expect(throws: PostgresError.self) { try await c.query("SELEKT 1") }
        #expect(try await c.query("SELECT count(*) FROM t") == [["2"]])

        // Pipelined: many statements in flight, each answer to its own caller.
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<50 {
                group.addTask { try await c.query("SELECT $1::int * 2", [String(i)]) == [[String(i * 2)]] }
            }
            for try await ok in group { #expect(ok) }
        }

        // LISTEN: notifications from another session arrive, in order.
        var notifications = try await c.listen("moongate test").makeAsyncIterator()
        _ = try await onItsOwnThread { try server.psql("SELECT pg_notify('moongate test', 'one'); SELECT pg_notify('moongate test', 'two')") }
        #expect(await notifications.next() == "one")
        #expect(await notifications.next() == "two")

        // A killed server: the stream ends, what comes next fails, the connection says closed.
        try await onItsOwnThread { server.kill() }
        #expect(await notifications.next() == nil)
        await #expect(throws: PostgresError.self) { try await c.query("SELECT 1") }
        #expect(c.isClosed)
    }
}
