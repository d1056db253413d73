/// The plugins built into the binary: their Lua sources (`Sources/Plugins/lua/NAME.lua`),
/// embedded at build time, so nothing is installed beside the executable.
enum BuiltinPlugins {
    static let sources: [(String, [UInt8])] = [
        ("correlation-id", PackageResources.correlation_id_lua),
        ("cors", PackageResources.cors_lua),
        ("key-auth", PackageResources.key_auth_lua),
        ("request-termination", PackageResources.request_termination_lua),
    ]
}
