import FoundationEssentials
import YAML

/// Reads, interpolates and validates a gateway YAML file into a `GatewayConfig`.
public enum ConfigLoader {
    /// Loads `path`; throws a `ConfigError` naming every problem with file, line and path.
    ///
    /// With a `document` (from the admin API or the config store), its routes, upstreams,
    /// keysets, API keys, global plugins and scripts replace the file's, and are checked by the same code: its
    /// problems carry JSON pointers into the document.
    public static func load(
        path: String, environment: [String: String] = ProcessInfo.processInfo.environment, document: ConfigDocument? = nil
    ) throws(ConfigError) -> GatewayConfig {
        let name = FilePaths.lastComponent(path)
        let text = try read(path)
        let decoded = try decode(text, file: name, environment: environment, document: document)
        let folder = FilePaths.parent(path)
        // Script paths in the file are relative to the file, wherever the gateway was started.
        let written = decoded.config?.scripts.directory ?? ScriptsConfig().directory
        let directory = written.hasPrefix("/") || folder.isEmpty ? written : folder + "/" + written
        // A policy or router that names no script is a problem of the config, reported with
        // the others at its line and path.
        var diagnostics = decoded.diagnostics
        for reference in decoded.scripts {
            let relative = reference.module.split(separator: ".").joined(separator: "/") + ".lua"
            if let document {
                if document.scripts[relative] == nil {
                    diagnostics.append(
                        ConfigDiagnostic(file: name, line: reference.line, path: reference.path, message: "no script \(relative) in /scripts", pointer: reference.pointer))
                }
                continue
            }
            var isDirectory = false
            if !FileManager.default.fileExists(atPath: directory + "/" + relative, isDirectory: &isDirectory) || isDirectory {
                diagnostics.append(
                    ConfigDiagnostic(file: name, line: reference.line, path: reference.path, message: "no \(relative) in \(written)", pointer: reference.pointer))
            }
        }
        guard var config = decoded.config, diagnostics.isEmpty else { throw ConfigError(sorted(diagnostics)) }
        config.scripts.directory = directory
        config.scripts.sources = document?.scripts
        func resolve(_ file: String) -> String { file.hasPrefix("/") || folder.isEmpty ? file : folder + "/" + file }
        for i in config.keysets.indices {
            config.keysets[i].jwksFile = config.keysets[i].jwksFile.map(resolve)
            let ca = config.keysets[i].jwksURL?.endpoint.caFile.map(resolve)
            config.keysets[i].jwksURL?.endpoint.caFile = ca
            for k in config.keysets[i].keys.indices { config.keysets[i].keys[k].file = config.keysets[i].keys[k].file.map(resolve) }
        }
        for i in config.apiKeys.indices { config.apiKeys[i].file = config.apiKeys[i].file.map(resolve) }
        for i in config.introspection.indices {
            config.introspection[i].clientSecretFile = config.introspection[i].clientSecretFile.map(resolve)
            let ca = config.introspection[i].endpoint.caFile.map(resolve)
            config.introspection[i].endpoint.caFile = ca
        }
        for i in config.redis.indices { config.redis[i].passwordFile = config.redis[i].passwordFile.map(resolve) }
        config.adminTokenFile = config.adminTokenFile.map(resolve)
        for i in config.upstreams.indices {
            guard var tls = config.upstreams[i].tls else { continue }
            tls.caFile = tls.caFile.map(resolve)
            tls.cert = tls.cert.map(resolve)
            tls.key = tls.key.map(resolve)
            config.upstreams[i].tls = tls
        }
        config.plugins.dirs = config.plugins.dirs.map(resolve)
        for i in config.listeners.indices {
            guard var tls = config.listeners[i].tls else { continue }
            for c in tls.certificates.indices {
                tls.certificates[c].cert = resolve(tls.certificates[c].cert)
                tls.certificates[c].key = resolve(tls.certificates[c].key)
            }
            tls.clientCA = tls.clientCA.map(resolve)
            config.listeners[i].tls = tls
        }
        config.store.passwordFile = config.store.passwordFile.map(resolve)
        config.store.cache = config.store.cache.map(resolve)
        return config
    }

    /// The file's `store:` section alone (paths resolved against the file's folder): where the
    /// rest of the configuration comes from, read before the rest.
    public static func storeSettings(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigError) -> StoreConfig {
        let name = FilePaths.lastComponent(path)
        let text = try read(path)
        guard let root = try? YAMLComposer.compose(text), case .mapping(let mapping) = root,
            let node = mapping.first(where: { $0.key.string == "store" })?.value
        else { return StoreConfig() }
        let reader = YAMLReader(file: name, environment: environment)
        var store = ConfigDecoder(reader: reader).decodeStore(node)
        if !reader.diagnostics.isEmpty { throw ConfigError(sorted(reader.diagnostics)) }
        let folder = FilePaths.parent(path)
        func resolve(_ file: String) -> String { file.hasPrefix("/") || folder.isEmpty ? file : folder + "/" + file }
        store.passwordFile = store.passwordFile.map(resolve)
        store.cache = store.cache.map(resolve)
        return store
    }

    /// The file's routes, upstreams, keysets, API keys and global plugins as written (`${VAR}` unexpanded):
    /// what `GET /v1/config` shows for a file store, and what seeds an empty config store.
    public static func sections(path: String) throws(ConfigError) -> [ConfigDocument.Section: JSONValue] {
        let text = try read(path)
        guard let root = try? YAMLComposer.compose(text) else {
            throw ConfigError([ConfigDiagnostic(file: path, line: 0, path: "", message: "not a YAML document")])
        }
        return ConfigDocument.sections(of: root)
    }

    private static func read(_ path: String) throws(ConfigError) -> String {
        do {
            return try FileReading.text(path)
        } catch {
            throw ConfigError([ConfigDiagnostic(file: path, line: 0, path: "", message: "cannot read: \(error)")])
        }
    }

    /// Validates YAML text; `file` names it in diagnostics.
    public static func parse(
        _ text: String, file: String, environment: [String: String] = [:]
    ) throws(ConfigError) -> GatewayConfig {
        let decoded = try decode(text, file: file, environment: environment)
        if let config = decoded.config, decoded.diagnostics.isEmpty { return config }
        throw ConfigError(sorted(decoded.diagnostics))
    }

    static func sorted(_ diagnostics: [ConfigDiagnostic]) -> [ConfigDiagnostic] {
        diagnostics.sorted { ($0.line, $0.path) < ($1.line, $1.path) }
    }

    /// Decodes as far as the text allows: the config (nil when the document is unusable), every
    /// problem found, and the scripts the config names. A syntax error stops it; a duplicate
    /// key does not (the reader reports it with both lines).
    static func decode(
        _ text: String, file: String, environment: [String: String], document: ConfigDocument? = nil
    ) throws(ConfigError) -> (config: GatewayConfig?, diagnostics: [ConfigDiagnostic], scripts: [ScriptReference]) {
        let composed: YAMLNode?
        do {
            composed = try YAMLComposer.compose(text)
        } catch {
            let message = error.kind == .syntax ? "YAML syntax error: \(error.message)" : "YAML error: \(error.message)"
            throw ConfigError([ConfigDiagnostic(file: file, line: error.line, path: "", message: message)])
        }
        guard var root = composed else {
            throw ConfigError([ConfigDiagnostic(file: file, line: 0, path: "", message: "the file is empty")])
        }
        if let document { root = document.replacingSections(of: root) }
        let reader = YAMLReader(file: file, environment: environment)
        let config = ConfigDecoder(reader: reader).decode(root)
        return (config, reader.diagnostics, reader.scriptReferences)
    }
}
