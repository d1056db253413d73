import Config
import Scripting

/// The API modules plugins need, available to every script: `crypto`, `ip` (stateless), and
/// `kv` when the gateway gives it a store.
public enum PluginModules {
    public static func make(config: GatewayConfig, clock: any ScriptClock) -> [any LuaModule] {
        [CryptoModule(), IPModule()]
    }
}
