import CLuaRuntime
import Logging
import Telemetry
import NIOCore
import Scripting

/// Running a route's policy: borrowing a Lua state, the access phase before the upstream,
/// the response phase on its answer, the log phase once the response is sent.
///
/// A request gives its state back right after the access phase when the policy has no
/// response or log phase (so under load one state per loop serves every request); otherwise
/// it keeps the state, and the `ctx` table in it, until the log phase has run.
extension DownstreamConnectionHandler: ScriptHost {
    func startPolicy(_ route: CompiledRoute) {
        if let state = exchange.policy.lua {  // the listener's router lent it
            runAccess(state, route: route)
            return
        }
        guard let pool = exchange.generation?.luaPool() else {
            respondError(.policyUnavailable)
            return
        }
        exchange.policy.luaPool = pool
        let state: LuaState?
        do {
            state = try pool.checkout()
        } catch {
            worker.logger.error(
                "cannot create a Lua state", metadata: ["error": "\(error)", "route": "\(route.name)", "request_id": "\(String(buffer: exchange.requestID))"])
            respondError(.policyUnavailable)
            return
        }
        if let state {
            runAccess(state, route: route)
            return
        }
        // Every state is lent: wait in line, briefly.
        let serial = requestSerial
        let id = pool.wait { [self] state in
            guard requestSerial == serial, self.state == .policy, let route = self.exchange.route else {
                pool.release(state)
                return
            }
            exchange.policy.poolWait?.timer.cancel()
            exchange.policy.poolWait = nil
            runAccess(state, route: route)
        }
        let timer = worker.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: TimeAmount(pool.program.settings.poolWait)) {
            [self] in
            guard let wait = exchange.policy.poolWait, wait.id == id else { return }
            exchange.policy.poolWait = nil
            pool.cancel(id)
            respondError(.noLuaState)
        }
        exchange.policy.poolWait = (id, timer)
    }

    private func runAccess(_ state: LuaState, route: CompiledRoute) {
        if exchange.policy.lua == nil { state.beginRequest(host: self) }
        exchange.policy.lua = state
        exchange.policy.phase = .access
        let result = state.run(.access, policy: route.policy, budget: route.budget, current: Unmanaged.passUnretained(self).toOpaque())
        accessEnded(result, route: route)
    }

    func accessEnded(_ result: RunResult, route: CompiledRoute) {
        switch result {
        case .done:
            break
        case .waiting:
            // An API call waits; it resumes the script when its answer comes. An early
            // answer also leaves the script suspended: it never runs again.
            guard exchange.policy.edits.early != nil else { return }
            exchange.policy.lua?.abandon()
        case .failed(let failure):
            scriptFailed(failure, route: route)
            return
        }
        if let lua = exchange.policy.lua {
            let response = lua.has(.response, policy: route.policy), log = lua.has(.log, policy: route.policy)
            // A request keeps its state across the upstream wait only if its ctx holds
            // something: otherwise the later phases borrow any state, and one state per loop
            // serves the load instead of one per request in flight (measured: 19 against 39 MB
            // RSS, and 5-15% more requests/s, on the benchmark policy).
            if !response && !log || lua.ctxIsEmpty() {
                exchange.policy.laterResponse = response
                exchange.policy.laterLog = log
                releaseScript()
            }
        }
        if let early = exchange.policy.edits.early {
            writeLocalResponse(early.status, headers: early.headers, json: early.json, body: early.body, close: false)
            return
        }
        guard state == .policy, let head = exchange.policy.requestHead else { return }
        forward(head, route: route)
    }

    // MARK: the listener's router

    enum RouterOutcome {
        case route(CompiledRoute)
        /// The router returned nil: the routes' `match` decide.
        case fallback
        /// The request has its answer (the router answered, failed, or no state was free).
        case answered
    }

    /// Runs the listener's router on the request. Its state stays with the request when the
    /// route it picks has a policy.
    func runRouter(_ head: ByteBuffer, router: Int) -> RouterOutcome {
        guard let generation = exchange.generation, let pool = generation.luaPool() else {
            respondError(.policyUnavailable)
            return .answered
        }
        exchange.policy.used = true
        exchange.policy.requestHead = keep(head, in: &exchange.requestHeadStorage)
        exchange.route = nil
        let checkedOut: LuaState?
        do {
            checkedOut = try pool.checkout()
        } catch {
            worker.logger.error("cannot create a Lua state", metadata: ["error": "\(error)", "request_id": "\(String(buffer: exchange.requestID))"])
            respondError(.policyUnavailable)
            return .answered
        }
        guard let state = checkedOut else {
            respondError(.noLuaState)
            return .answered
        }
        exchange.policy.luaPool = pool
        exchange.policy.lua = state
        state.beginRequest(host: self)
        exchange.policy.phase = .access
        let budget = generation.shared.config.scripts.budget
        switch state.run(.route, policy: router, budget: budget, current: Unmanaged.passUnretained(self).toOpaque()) {
        case .done:
            guard let name = state.routeResult else { return .fallback }
            if let picked = generation.shared.routesByName[name] { return .route(picked) }
            worker.logger.error("the router returned an unknown route", metadata: ["route": "\(name)", "request_id": "\(String(buffer: exchange.requestID))"])
            releaseScript()
            respondError(.scriptFailed(budget: false))
            return .answered
        case .waiting:
            state.abandon()
            if let early = exchange.policy.edits.early {
                writeLocalResponse(early.status, headers: early.headers, json: early.json, body: early.body, close: false)
            } else {
                releaseScript()
                respondError(.scriptFailed(budget: false))
            }
            return .answered
        case .failed(let failure):
            scriptFailed(failure, route: nil)
            return .answered
        }
    }

    // MARK: the request body

    /// Collects the whole request body, up to `max` bytes. Nothing is consumed unless all
    /// of it is there, so a body found too large still goes upstream as it came.
    func collectBody(max: Int) -> BodyCollect {
        if let body = exchange.policy.edits.body { return body.readableBytes <= max ? .done(body) : .tooLarge }
        switch exchange.requestBody {
        case .none, .untilClose:
            return .done(allocator.buffer(capacity: 0))
        case .length(let remaining):
            if remaining > max { return .tooLarge }
            guard var buffer = inbound, buffer.readableBytes >= remaining else { return .pending }
            let body = buffer.readSlice(length: remaining)!
            inbound = buffer.readableBytes > 0 ? buffer : nil
            bodyCollected(body)
            return .done(body)
        case .chunked(var decoder):
            guard var buffer = inbound else { return .pending }
            let collected = decoder.collect(&buffer, max: max)
            if case .done(let body) = collected {
                inbound = buffer.readableBytes > 0 ? buffer : nil
                bodyCollected(body)
            }
            return collected
        }
    }

    private func bodyCollected(_ body: ByteBuffer) {
        exchange.policy.edits.body = body
        exchange.requestBody = .none
        exchange.requestBodyDone = true
        // The upstream gets the body with the head: there is no `100 Continue` to wait for.
        exchange.policy.edits.headers.set(Self.expectName, lower: Self.expectLower, nil)
    }

    static let expectName: [UInt8] = Array("Expect".utf8)
    static let expectLower: [UInt8] = Array("expect".utf8)

    /// Suspends the script until the body is in (`request.body`, `request.set_body`).
    func waitForBody(_ wait: BodyWait) {
        exchange.policy.bodyWait = wait
        // A client that sent `Expect: 100-continue` holds its body until told to go on.
        if exchange.request.expectContinue, exchange.request.minorVersion >= 1 {
            var interim = allocator.buffer(capacity: 32)
            interim.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
            io.write(interim)
            io.flush()
        }
        updateReads()
    }

    /// A malformed chunked body: the client gets `400` and the script ends where it is.
    func answerMalformedBody(_ L: OpaquePointer) -> Int32 {
        exchange.policy.edits.early = EarlyResponse(status: 400, body: errorBody("malformed chunked body"), json: true)
        return Lua.yield(L)
    }

    /// More client bytes came while a script waits for the body.
    func continueBodyWait() {
        guard let wait = exchange.policy.bodyWait, let lua = exchange.policy.lua, let route = exchange.route else { return }
        let collected = collectBody(max: wait.max)
        if case .pending = collected { return }
        exchange.policy.bodyWait = nil
        if case .malformed = collected {
            lua.abandon()
            releaseScript()
            respondError(.malformedChunkedBody)
            return
        }
        let result = lua.resume { L in BodySide.request.resumed(L, self, collected, wait) }
        accessEnded(result, route: route)
    }

    /// Runs the response phase on the upstream's head; false if the script failed (the
    /// client then has its `500`).
    func runResponsePhase(_ state: LuaState, route: CompiledRoute) -> Bool {
        exchange.policy.phase = .response
        switch state.run(.response, policy: route.policy, budget: route.budget, current: Unmanaged.passUnretained(self).toOpaque()) {
        case .done:
            return true
        case .waiting:
            // Waiting for the upstream body (`responsePhase` is `.collecting`), or nothing to wait for.
            if exchange.policy.responseWait == nil { state.abandon() }
            return true
        case .failed(let failure):
            exchange.upstreamReusable = false
            scriptFailed(failure, route: route)
            return false
        }
    }

    /// A state for the later phases of a request that gave its own back after `access`.
    func reborrow() -> LuaState? {
        if let lua = exchange.policy.lua { return lua }
        guard let pool = exchange.generation?.luaPool(), let state = try? pool.checkout(overflow: true) else { return nil }
        state.beginRequest(host: self)
        exchange.policy.lua = state
        exchange.policy.luaPool = pool
        return state
    }

    /// The request is over: the log phase runs (if the policy has one), the state goes back.
    func endScript() {
        if exchange.policy.laterLog, exchange.policy.lua == nil { _ = reborrow() }
        exchange.policy.laterResponse = false
        exchange.policy.laterLog = false
        if let lua = exchange.policy.lua, let route = exchange.route, !lua.broken, lua.has(.log, policy: route.policy) {
            exchange.policy.phase = .log
            switch lua.run(.log, policy: route.policy, budget: route.budget, current: Unmanaged.passUnretained(self).toOpaque()) {
            case .done: break
            case .waiting: lua.abandon()
            case .failed(let failure): logFailure(failure, route: route)
            }
        }
        exchange.policy.apiWait = false
        releaseScript()
        // The rest goes with the exchange (`endExchange`).
    }

    /// The connection went away mid-request: no log phase, the state goes back.
    func abandonScript() {
        exchange.policy.apiWait = false
        exchange.policy.laterResponse = false
        exchange.policy.laterLog = false
        exchange.policy.bodyWait = nil
        exchange.policy.responseWait = nil
        if let wait = exchange.policy.poolWait {
            exchange.policy.poolWait = nil
            wait.timer.cancel()
            exchange.policy.luaPool?.cancel(wait.id)
        }
        releaseScript()
    }

    func releaseScript() {
        if let state = exchange.policy.lua {
            exchange.policy.lua = nil
            exchange.policy.luaPool?.release(state)
        }
        exchange.policy.luaPool = nil
    }

    func scriptFailed(_ failure: ScriptFailure, route: CompiledRoute?) {
        logFailure(failure, route: route)
        releaseScript()
        // The client learns only that the policy failed; the details are in the log.
        respondError(.scriptFailed(budget: failure.budget != nil))
    }

    private func logFailure(_ failure: ScriptFailure, route: CompiledRoute?) {
        var metadata: Logger.Metadata = [
            "request_id": "\(String(buffer: exchange.requestID))", "route": "\(route?.name ?? "(router)")", "phase": "\(exchange.policy.phase.name)",
            "error": "\(failure.message)",
        ]
        if let location = failure.location { metadata["script"] = "\(location)" }
        if let budget = failure.budget { metadata["budget"] = "\(budget)" }
        if !failure.traceback.isEmpty { metadata["traceback"] = "\(failure.traceback)" }
        worker.metrics.add(BuiltinFamilies.luaErrors, [scriptName(route), failure.budget ?? "error"], 1)
        worker.logger.error(failure.budget != nil ? "script stopped: budget exceeded" : "script error", metadata: metadata)
    }

    /// The policy (or router) a failure belongs to, as a metric label.
    private func scriptName(_ route: CompiledRoute?) -> String {
        guard let program = (exchange.generation ?? worker.generation).shared.scripts else { return "?" }
        if let route, route.policy >= 0, route.policy < program.policies.count { return program.policies[route.policy] }
        return route == nil ? "(router)" : "?"
    }

    // MARK: ScriptHost

    func scriptLog(_ level: Logger.Level, _ message: String, location: String?) {
        var metadata: Logger.Metadata = ["request_id": "\(String(buffer: exchange.requestID))", "route": "\(exchange.route?.name ?? "")"]
        if let location { metadata["script"] = "\(location)" }
        worker.logger.log(level: level, "\(message)", metadata: metadata)
    }

    var scriptRouteIndex: Int? { exchange.route?.index }

    var scriptMetrics: MetricStore? { worker.metrics }

    var scriptMetricRoute: Int { exchange.route?.metricID ?? -1 }

    func scriptRan(nanoseconds: UInt64) { exchange.record.luaNanoseconds &+= nanoseconds }

    func scriptAddLogField(_ name: String, _ value: String) -> Bool {
        guard exchange.record.logFields.count < 16 else { return false }
        exchange.record.logFields.append((name, value))
        return true
    }

    func scriptAddResponseHeader(_ name: String, _ value: String) -> Bool {
        let bytes = Array(name.utf8)
        guard exchange.policy.responseEdits.headers.fits(bytes.count + value.utf8.count) else { return false }
        exchange.policy.responseEdits.headers.add(bytes, lower: Array(name.lowercased().utf8), Array(value.utf8))
        return true
    }

    func scriptAnswer(_ answer: ScriptAnswer) {
        var early = EarlyResponse(status: answer.status, body: errorBody(answer.message), json: true)
        for (name, value) in answer.headers { early.headers.add(Array(name.utf8), lower: Array(name.lowercased().utf8), Array(value.utf8)) }
        exchange.policy.edits.early = early
    }

    /// Only the access phase of a route's policy waits: the router's answer is needed at
    /// once, and later phases have an upstream answer in hand.
    var scriptCanWait: Bool { exchange.policy.phase == .access && exchange.route != nil && state == .policy }

    func scriptSuspend() -> ScriptResumer {
        let serial = requestSerial
        exchange.policy.apiWait = true
        return ScriptResumer(
            resume: { [self] push in
                guard requestSerial == serial, exchange.policy.apiWait, let lua = exchange.policy.lua, let route = exchange.route else { return }
                exchange.policy.apiWait = false
                accessEnded(lua.resume(pushing: push), route: route)
            },
            answer: { [self] answer in
                guard requestSerial == serial, exchange.policy.apiWait, let lua = exchange.policy.lua, let route = exchange.route else { return }
                exchange.policy.apiWait = false
                _ = lua
                scriptAnswer(answer)
                accessEnded(.waiting, route: route)  // abandons the script, writes the answer
            })
    }
}
