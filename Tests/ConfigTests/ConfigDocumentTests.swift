import Foundation
import Config
import Testing

/// The dynamic configuration as a JSON document: its shape, entities, changes, and its
/// problems reported as JSON pointers by the YAML file's own checks.
@Suite struct ConfigDocumentTests {
    static let yaml = """
        listeners: [{ address: "127.0.0.1:0" }]
        upstreams:
          a.b: { targets: ["127.0.0.1:9000"] }
        routes:
          - name: one
            match: { path_prefix: /one/ }
            upstream: a.b
        """

    static func document(_ json: String) throws(ConfigError) -> ConfigDocument {
        guard case .success(let value) = JSONValue.parse(Array(json.utf8)) else { throw ConfigError([]) }
        return try ConfigDocument(json: value)
    }

    @Test func pointersEscapeNamesThatHoldDotsAndSlashes() throws {
        let json = #"{"upstreams":{"a.b/c":{"targets":["nowhere"]}},"routes":[{"match":{"path":"/x"},"upstream":"a.b/c"}]}"#
        let document = try Self.document(json)
        let folder = try TemporaryFolder()
        try folder.write("gateway.yaml", Self.yaml)
        do {
            _ = try ConfigLoader.load(path: folder.path + "/gateway.yaml", environment: [:], document: document)
            Issue.record("loaded")
        } catch {
            #expect(error.diagnostics.map(\.pointer) == ["/upstreams/a.b~1c/targets/0"])
            #expect(error.diagnostics.first?.message.contains("host:port") == true)
        }
    }

    @Test func theFilesSectionsReadAsWrittenAndLoadAsTheFileDoes() throws {
        let folder = try TemporaryFolder()
        try folder.write("gateway.yaml", Self.yaml)
        let sections = try ConfigLoader.sections(path: folder.path + "/gateway.yaml")
        let document = ConfigDocument(sections: sections)
        #expect(document.names(.routes) == ["one"])
        #expect(document.entity(.upstreams, "a.b")?["targets"] == .array(["127.0.0.1:9000"]))
        let fromFile = try ConfigLoader.load(path: folder.path + "/gateway.yaml", environment: [:])
        let fromDocument = try ConfigLoader.load(path: folder.path + "/gateway.yaml", environment: [:], document: document)
        #expect(fromFile.routes == fromDocument.routes)
        #expect(fromFile.upstreams == fromDocument.upstreams)
        // Through JSON text and back: the same document.
        #expect(try Self.document(document.json.canonicalText) == document)
        #expect(try Self.document(document.json.prettyText).digest == document.digest)
    }

    @Test func changesNameWhatWasAddedRemovedChangedAndMoved() throws {
        var document = try Self.document(#"{"routes":[{"name":"a"},{"name":"b"},{"name":"c"}],"upstreams":{"u":{}},"scripts":{"x.lua":"return 1"}}"#)
        let old = document
        let deleted = document.delete(.routes, "a")
        let missing = document.delete(.routes, "zz")
        #expect(deleted && !missing)
        #expect(document.changes(from: old).map(\.description) == ["removed routes/a"])  // b and c keep their order
        document.put(.routes, "a", .object([:]))
        #expect(document.names(.routes) == ["b", "c", "a"])
        #expect(document.changes(from: old).map(\.description).sorted() == ["changed routes/a", "changed routes/b", "changed routes/c"])
        document = old
        document.put(.upstreams, "v", .object([:]))
        document.put(.scripts, "x.lua", "return 2")
        #expect(document.changes(from: old).map(\.description) == ["added upstreams/v", "changed scripts/x.lua"])
        #expect(ConfigDocument.summary(document.changes(from: old)) == "added upstreams/v, changed scripts/x.lua")
    }

    @Test func theGlobalPluginChainIsASectionAndTheFileKeepsItsPluginFolders() throws {
        let folder = try TemporaryFolder()
        try folder.write("gateway.yaml", Self.yaml + """

            plugins:
              dirs: [my-plugins]
              global:
                - name: correlation-id
                  config: { header: X-Trace }
            """)
        let path = folder.path + "/gateway.yaml"
        var document = ConfigDocument(sections: try ConfigLoader.sections(path: path))
        #expect(document.names(.plugins) == ["correlation-id"])
        #expect(document.entity(.plugins, "correlation-id")?["config"]?["header"] == "X-Trace")
        let fromFile = try ConfigLoader.load(path: path, environment: [:])
        let same = try ConfigLoader.load(path: path, environment: [:], document: document).plugins
        #expect(same.dirs == fromFile.plugins.dirs && !same.dirs.isEmpty)
        #expect(same.global.map(\.config.json) == fromFile.plugins.global.map(\.config.json))
        #expect(same.global.first?.config.pointer == "/plugins/0/config")

        // Written through the API: the chain is the document's, the folders stay the file's.
        document.put(.plugins, "cors", .object(["config": .object(["origins": .array(["https://a.example"])])]))
        #expect(document.names(.plugins) == ["correlation-id", "cors"])
        #expect(document.changes(from: ConfigDocument(sections: try ConfigLoader.sections(path: path))).map(\.description) == ["added plugins/cors"])
        let loaded = try ConfigLoader.load(path: path, environment: [:], document: document)
        #expect(loaded.plugins.dirs == fromFile.plugins.dirs)
        #expect(loaded.plugins.global.map(\.name) == ["correlation-id", "cors"])

        // Problems point into the document's list, whichever form the file uses.
        document.put(.plugins, "Bad Name", .object([:]))
        do {
            _ = try ConfigLoader.load(path: path, environment: [:], document: document)
            Issue.record("loaded")
        } catch {
            #expect(error.diagnostics.map(\.pointer) == ["/plugins/2/name"])
        }
        #expect(document.delete(.plugins, "Bad Name") && document.delete(.plugins, "cors"))
        try folder.write("gateway.yaml", Self.yaml)
        #expect(try ConfigLoader.load(path: path, environment: [:], document: document).plugins.global.map(\.name) == ["correlation-id"])
    }

    @Test func shapeProblemsHavePointers() {
        #expect(throws: ConfigError.self) { try Self.document(#"[1]"#) }
        do {
            _ = try Self.document(#"{"routes":[],"bogus":1,"scripts":{"a.lua":7}}"#)
        } catch {
            #expect(error.diagnostics.map(\.pointer) == ["/bogus", "/scripts/a.lua"])
        }
    }

    @Test func postgresURLs() {
        let url = PostgresURL(parsing: "postgres://moon%40gate:s3cr%2Ft@db.internal:6543/config?sslmode=disable")
        #expect(url == PostgresURL(user: "moon@gate", password: "s3cr/t", host: "db.internal", port: 6543, database: "config"))
        #expect(url?.description == "postgres://moon@gate@db.internal:6543/config")
        #expect(PostgresURL(parsing: "postgres://u@[::1]/d") == PostgresURL(user: "u", host: "::1", port: 5432, database: "d"))
        #expect(PostgresURL(parsing: "postgres://u@h") == nil)
        #expect(PostgresURL(parsing: "mysql://u@h/d") == nil)
        #expect(PostgresURL(parsing: "postgres://@h/d") == nil)
    }
}

/// A folder removed when the value goes away.
final class TemporaryFolder {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("moongate-doc-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ text: String) throws {
        try text.write(toFile: path + "/" + name, atomically: true, encoding: .utf8)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}
