import ArgumentParser
import COpenSSL
import Config
import FoundationEssentials
import Glibc
import Plugins
import Scripting

/// `moongate plugins`: the plugins a config can use (built-in and from `plugins.dirs`), one
/// plugin's schema, and password hashes for basic-auth.
struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List the plugins (built-in and the config's plugins.dirs), or show one's schema.",
        subcommands: [List.self, Show.self, HashPassword.self],
        defaultSubcommand: List.self)

    struct Options: ParsableArguments {
        @Option(name: .shortAndLong, help: "A gateway YAML file whose plugins.dirs are read too.")
        var config: String?

        func catalog() throws -> PluginCatalog {
            let dirs = try config.map { try ConfigLoader.load(path: $0).plugins.dirs } ?? []
            return try PluginCatalog.load(dirs: dirs, modules: [CryptoModule(), IPModule(), KVModule(store: MemoryKV())])
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List the plugins, by priority.")
        @OptionGroup var options: Options

        func run() throws {
            let plugins = try options.catalog().plugins.values.sorted { $0.priority != $1.priority ? $0.priority > $1.priority : $0.name < $1.name }
            let width = plugins.map(\.name.count).max() ?? 0
            for p in plugins {
                let name = p.name.padded(right: width)
                let origin = p.builtin ? "built-in" : p.file.path
                print("\(name)  \(String(p.priority).padded(left: 7))  \(p.phases.joined(separator: ",").padded(right: 19))  \(p.description) [\(origin)]")
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Print a plugin's schema.")
        @OptionGroup var options: Options
        @Argument(help: "The plugin's name.") var name: String

        func run() throws {
            let catalog = try options.catalog()
            guard let p = catalog.plugins[name] else {
                StandardError.write("no plugin \"\(name)\" (moongate plugins lists them)\n")
                throw ExitCode(1)
            }
            print("\(p.name): \(p.description)")
            print("priority \(p.priority); phases: \(p.phases.joined(separator: ", ")); \(p.builtin ? "built-in" : p.file.path)")
            print("config:")
            printFields(p.schema.fields, indent: "  ")
        }

        func printFields(_ fields: [String: SchemaField], indent: String) {
            for (name, field) in fields.sorted(by: { $0.key < $1.key }) {
                var line = "\(indent)\(name): \(typeName(field.kind))"
                if field.required { line += ", required" }
                if let d = field.defaultValue { line += ", default \(d.canonicalText)" }
                if let values = field.oneOf { line += ", one of \(values.map(\.canonicalText).joined(separator: " | "))" }
                if let min = field.min { line += ", min \(min.rounded() == min ? String(Int(min)) : "\(min)")" }
                if let max = field.max { line += ", max \(max.rounded() == max ? String(Int(max)) : "\(max)")" }
                if let text = field.description { line += " — \(text)" }
                print(line)
                if case .record(let sub) = field.kind { printFields(sub, indent: indent + "  ") }
                if case .array(let item) = field.kind, case .record(let sub) = item.kind { printFields(sub, indent: indent + "  ") }
            }
        }

        func typeName(_ kind: SchemaField.Kind) -> String {
            switch kind {
            case .string: return "string"
            case .number: return "number"
            case .integer: return "integer"
            case .boolean: return "boolean"
            case .array(let item): return "array of \(typeName(item.kind))"
            case .record: return "record"
            case .map(let v): return "map of string to \(typeName(v.kind))"
            }
        }
    }

    struct HashPassword: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "hash-password",
            abstract: "Read a password on stdin; print its basic-auth hash (pbkdf2-sha256$iterations$salt$hash).")
        @Option(help: "PBKDF2 iterations (at least 1000).") var iterations = 210_000

        func run() throws {
            guard iterations >= 1000, iterations <= 10_000_000 else { throw ValidationError("--iterations from 1000 to 10000000") }
            var password = readLine(strippingNewline: true) ?? ""
            defer { password = "" }
            var salt = [UInt8](repeating: 0, count: 16)
            guard RAND_bytes(&salt, 16) == 1 else { throw ValidationError("the system's random source failed") }
            var hash = [UInt8](repeating: 0, count: 32)
            let ok = password.withCString { p in
                PKCS5_PBKDF2_HMAC(p, Int32(strlen(p)), salt, 16, Int32(iterations), EVP_sha256(), 32, &hash)
            }
            guard ok == 1 else { throw ValidationError("PBKDF2 failed") }
            print("pbkdf2-sha256$\(iterations)$\(Data(salt).base64EncodedString())$\(Data(hash).base64EncodedString())")
        }
    }
}
