import Config
import FoundationEssentials
import Scripting
import Proxy
import Prometheus

/// What the admin API reads of the gateway's configuration.
extension Gateway {
    /// The file's dynamic part as a document: its routes, upstreams, keysets and API keys as
    /// written, and the scripts directory's sources.
    static func fileDocument(path: String, environment: [String: String]) throws -> ConfigDocument {
        let config = try ConfigLoader.load(path: path, environment: environment)
        return try document(sections: ConfigLoader.sections(path: path), scriptsDirectory: config.scripts.directory)
    }

    static func document(sections: [ConfigDocument.Section: JSONValue], scriptsDirectory: String) throws -> ConfigDocument {
        let set = try ScriptSet.load(directory: scriptsDirectory)
        var scripts: [String: String] = [:]
        for file in set.files.values {
            scripts[file.module.split(separator: ".").joined(separator: "/") + ".lua"] = String(decoding: file.source, as: UTF8.self)
        }
        return ConfigDocument(sections: sections, scripts: scripts)
    }

    /// The running configuration's document: the store's, or the file's as it is now.
    func runningDocument() throws -> ConfigDocument {
        if let storeDocument { return storeDocument }
        guard let generation else { throw ConfigError([ConfigDiagnostic(pointer: "", message: "not started")]) }
        return try Self.document(sections: ConfigLoader.sections(path: configPath), scriptsDirectory: generation.config.scripts.directory)
    }

    func countStoreRefusal() { storeRefusals.increment() }
}

extension Gateway {
    /// The store as `/readyz` and `/status` show it: the file, or the config store's state.
    func storeHealth() async -> JSONValue {
        guard let controlPlane else { return .object(["kind": "file", "path": .string(configPath)]) }
        return await controlPlane.statusJSON
    }
}
