/// The plugins built into the binary: their Lua sources (`Sources/Plugins/lua/NAME.lua`),
/// embedded at build time, so nothing is installed beside the executable.
enum BuiltinPlugins {
    static let sources: [(String, [UInt8])] = [
        ("acl", PackageResources.acl_lua),
        ("basic-auth", PackageResources.basic_auth_lua),
        ("correlation-id", PackageResources.correlation_id_lua),
        ("cors", PackageResources.cors_lua),
        ("ip-restriction", PackageResources.ip_restriction_lua),
        ("jwt-auth", PackageResources.jwt_auth_lua),
        ("key-auth", PackageResources.key_auth_lua),
        ("oauth2-introspection", PackageResources.oauth2_introspection_lua),
        ("rate-limiting", PackageResources.rate_limiting_lua),
        ("redirect", PackageResources.redirect_lua),
        ("request-size-limiting", PackageResources.request_size_limiting_lua),
        ("request-termination", PackageResources.request_termination_lua),
        ("request-transformer", PackageResources.request_transformer_lua),
        ("response-transformer", PackageResources.response_transformer_lua),
        ("session", PackageResources.session_lua),
    ]
}
