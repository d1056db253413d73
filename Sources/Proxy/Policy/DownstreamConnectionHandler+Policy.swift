import Logging
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
        guard let pool = generation?.luaPool() else {
            respondError(500, "policy unavailable", close: request.framing != .none)
            return
        }
        luaPool = pool
        let state: LuaState?
        do {
            state = try pool.checkout()
        } catch {
            worker.logger.error("cannot create a Lua state", metadata: ["error": "\(error)", "route": "\(route.name)"])
            respondError(500, "policy unavailable", close: request.framing != .none)
            return
        }
        if let state {
            runAccess(state, route: route)
            return
        }
        // Every state is lent: wait in line, briefly.
        let serial = requestSerial
        let id = pool.wait { [self] state in
            guard requestSerial == serial, self.state == .policy, let route = self.route else {
                pool.release(state)
                return
            }
            poolWait?.timer.cancel()
            poolWait = nil
            runAccess(state, route: route)
        }
        let timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: TimeAmount(pool.program.settings.poolWait)) {
            [self] in
            guard let wait = poolWait, wait.id == id else { return }
            poolWait = nil
            pool.cancel(id)
            respondError(503, "no Lua state free", close: request.framing != .none)
        }
        poolWait = (id, timer)
    }

    private func runAccess(_ state: LuaState, route: CompiledRoute) {
        lua = state
        state.beginRequest(host: self)
        scriptPhase = .access
        let result = state.run(.access, policy: route.policy, budget: route.budget, current: Unmanaged.passUnretained(self).toOpaque())
        accessEnded(result, route: route)
    }

    private func accessEnded(_ result: RunResult, route: CompiledRoute) {
        switch result {
        case .done:
            break
        case .waiting:
            // An API call waits; it resumes the script when its answer comes. An early
            // answer also leaves the script suspended: it never runs again.
            guard edits.early != nil else { return }
            lua?.abandon()
        case .failed(let failure):
            scriptFailed(failure, route: route)
            return
        }
        if let lua, !lua.has(.response, policy: route.policy), !lua.has(.log, policy: route.policy) {
            releaseScript()
        }
        if let early = edits.early {
            writeLocalResponse(early.status, headers: early.headers, json: false, body: early.body, close: request.framing != .none)
            return
        }
        guard state == .policy, let head = requestHead else { return }
        forward(head, route: route)
    }

    /// Runs the response phase on the upstream's head; false if the script failed (the
    /// client then has its `500`).
    func runResponsePhase(_ state: LuaState, route: CompiledRoute) -> Bool {
        scriptPhase = .response
        switch state.run(.response, policy: route.policy, budget: route.budget, current: Unmanaged.passUnretained(self).toOpaque()) {
        case .done:
            return true
        case .waiting:
            state.abandon()
            return true
        case .failed(let failure):
            upstreamReusable = false
            scriptFailed(failure, route: route)
            return false
        }
    }

    /// The request is over: the log phase runs (if the policy has one), the state goes back.
    func endScript() {
        if let lua, let route, !lua.broken, lua.has(.log, policy: route.policy) {
            scriptPhase = .log
            switch lua.run(.log, policy: route.policy, budget: route.budget, current: Unmanaged.passUnretained(self).toOpaque()) {
            case .done: break
            case .waiting: lua.abandon()
            case .failed(let failure): logFailure(failure, route: route)
            }
        }
        releaseScript()
        requestHead = nil
        responseHeadKept = nil
        edits.reset()
        responseEdits.reset()
    }

    /// The connection went away mid-request: no log phase, the state goes back.
    func abandonScript() {
        if let wait = poolWait {
            poolWait = nil
            wait.timer.cancel()
            luaPool?.cancel(wait.id)
        }
        releaseScript()
    }

    private func releaseScript() {
        if let state = lua {
            lua = nil
            luaPool?.release(state)
        }
        luaPool = nil
    }

    private func scriptFailed(_ failure: ScriptFailure, route: CompiledRoute) {
        logFailure(failure, route: route)
        releaseScript()
        // The client learns only that the policy failed; the details are in the log.
        respondError(500, failure.budget != nil ? "script budget exceeded" : "script error", close: request.framing != .none)
    }

    private func logFailure(_ failure: ScriptFailure, route: CompiledRoute) {
        var metadata: Logger.Metadata = [
            "request_id": "\(String(buffer: requestID))", "route": "\(route.name)", "phase": "\(scriptPhase.name)",
            "error": "\(failure.message)",
        ]
        if let location = failure.location { metadata["script"] = "\(location)" }
        if let budget = failure.budget { metadata["budget"] = "\(budget)" }
        if !failure.traceback.isEmpty { metadata["traceback"] = "\(failure.traceback)" }
        worker.logger.error(failure.budget != nil ? "script stopped: budget exceeded" : "script error", metadata: metadata)
    }

    // MARK: ScriptHost

    func scriptLog(_ level: Logger.Level, _ message: String, location: String?) {
        var metadata: Logger.Metadata = ["request_id": "\(String(buffer: requestID))", "route": "\(route?.name ?? "")"]
        if let location { metadata["script"] = "\(location)" }
        worker.logger.log(level: level, "\(message)", metadata: metadata)
    }
}
