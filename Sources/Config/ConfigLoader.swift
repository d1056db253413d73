import Foundation
import Yams

/// Reads, interpolates and validates a gateway YAML file into a `GatewayConfig`.
public enum ConfigLoader {
    /// Loads `path`; throws a `ConfigError` naming every problem with file, line and path.
    public static func load(
        path: String, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigError) -> GatewayConfig {
        let name = (path as NSString).lastPathComponent
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError([ConfigDiagnostic(file: path, line: 0, path: "", message: "cannot read: \(error.localizedDescription)")])
        }
        var config = try parse(text, file: name, environment: environment)
        // Script paths in the file are relative to the file, wherever the gateway was started.
        if !config.scripts.directory.hasPrefix("/") {
            let folder = (path as NSString).deletingLastPathComponent
            config.scripts.directory = folder.isEmpty ? config.scripts.directory : folder + "/" + config.scripts.directory
        }
        let folder = (path as NSString).deletingLastPathComponent
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
        return config
    }

    /// Validates YAML text; `file` names it in diagnostics.
    public static func parse(
        _ text: String, file: String, environment: [String: String] = [:]
    ) throws(ConfigError) -> GatewayConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigError([syntaxDiagnostic(error, file: file)])
        } catch {
            throw ConfigError([ConfigDiagnostic(file: file, line: 0, path: "", message: "YAML error: \(error)")])
        }
        guard let root else {
            throw ConfigError([ConfigDiagnostic(file: file, line: 0, path: "", message: "the file is empty")])
        }
        let reader = YAMLReader(file: file, environment: environment)
        let config = ConfigDecoder(reader: reader).decode(root)
        if let config, reader.diagnostics.isEmpty { return config }
        throw ConfigError(reader.diagnostics.sorted { ($0.line, $0.path) < ($1.line, $1.path) })
    }

    private static func syntaxDiagnostic(_ error: YamlError, file: String) -> ConfigDiagnostic {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _):
            return ConfigDiagnostic(file: file, line: mark.line, path: "", message: "YAML syntax error: \(problem)")
        case .composer(_, let problem, let mark, _):
            return ConfigDiagnostic(file: file, line: mark.line, path: "", message: "YAML error: \(problem)")
        default:
            return ConfigDiagnostic(file: file, line: 0, path: "", message: "YAML error: \(error)")
        }
    }
}
