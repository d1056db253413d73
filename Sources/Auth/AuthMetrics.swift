import Telemetry
import Scripting

/// Counts a refused credential in `moongate_auth_failures_total` (reasons are the modules'
/// own fixed codes, so the series stay few).
func countFailure(_ L: OpaquePointer, _ module: String, _ reason: String) {
    Lua.host(L)?.scriptMetrics?.add(BuiltinFamilies.authFailures, [module, reason], 1)
}
