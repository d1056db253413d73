import Auth
import Config
import Plugins
import RateLimit
import Scripting
import Telemetry

extension TestRunner {
    /// A runner with every API module the gateway gives scripts, as `moongate test` runs:
    /// `jwt`, `apikey` and `oauth2` on the config's keysets and endpoints (with `harness.jwt`
    /// and `harness.oauth2`, whose answers stand in for the endpoints), and `redis_bucket`
    /// on the fake clock, its Redis stores in memory or in the real server at `redis`.
    /// The Lua modules a gateway with `config` has, in their test form (`redis_bucket` in
    /// memory, introspection answered by stubs), on `clock`.
    public static func gatewayModules(config: GatewayConfig, clock: FakeClock) throws -> [any LuaModule] {
        let auth = try AuthModules.make(config, introspection: StubIntrospection())
        let buckets = try RateLimitModules.forTests(config: config, clock: clock, redis: nil)
        return auth + buckets.modules + [
            MetricsModule(families: ScriptMetricFamilies(maxSeries: config.metrics.maxSeries)), KVModule(store: MemoryKV(clock: clock)),
        ]
    }

    public static func forGateway(config: GatewayConfig, redis: SocketAddressSpec? = nil, coverage: Bool = false) throws -> TestRunner {
        let auth = try AuthModules.make(config, introspection: StubIntrospection())
        let clock = FakeClock()
        let buckets = try RateLimitModules.forTests(config: config, clock: clock, redis: redis)
        let metrics = MetricsModule(families: ScriptMetricFamilies(maxSeries: config.metrics.maxSeries))
        // The embedded store on the fake clock: sessions and keys expire as the test moves it.
        let kv = MemoryKV(clock: clock)
        return TestRunner(
            config: config, clock: clock, modules: auth + buckets.modules + [metrics, KVModule(store: kv)] + PluginModules.make(config: config, clock: clock),
            helpers: AuthModules.helpers(for: auth), coverage: coverage,
            beforeEach: {
                kv.clear()
                buckets.reset()
                AuthModules.reset(auth)
            })
    }
}
