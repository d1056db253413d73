import Foundation
import Testing

/// Policies in Lua on real sockets: the `request` and `response` APIs, early answers, the
/// three phases, failures answered with `500` for that request only, and state pooling.
@Suite(.serialized) struct PolicyTests {
    static let config = """
        listeners:
          - name: test
            address: 127.0.0.1:@PORT@
        timeouts:
          request: 30s
        scripts:
          max_states: 2
          pool_wait: 50ms
          budget:
            instructions: 2000000
        upstreams:
          echo:
            targets: [ "@ECHO@" ]
          other:
            targets: [ "@ECHO@" ]
            pool:
              max_idle: 1
        routes:
          - name: api
            match: { path_prefix: /api/ }
            upstream: echo
            strip_prefix: true
            policy: api.lua
          - name: phases
            match: { path_prefix: /phases }
            upstream: echo
            strip_prefix: true
            policy: phases.lua
          - name: body
            match: { path_prefix: /body }
            upstream: echo
            policy: body.lua
          - name: transform
            match: { path_prefix: /transform }
            upstream: echo
            strip_prefix: true
            policy: transform.lua
          - name: hostile
            match: { path_prefix: /hostile }
            upstream: echo
            policy: hostile.lua
            budget:
              memory: 2MB
          - name: plain
            match: { path_prefix: / }
            upstream: echo
        """

    static let api = #"""
        local util = require("lib.util")
        return {
          access = function(ctx)
            local path = request.path()
            if path == "/api/deny" then
              request.respond(403, json.encode({error = "denied", by = request.route()}),
                              {["Content-Type"] = "application/json", ["X-Why"] = {"a", "b"}})
              request.set_header("X-Never", "reached")
            end
            request.set_header("X-Method", request.method())
            request.set_header("X-Host", request.host())
            request.set_header("X-Path", path)
            request.set_header("X-Query", request.query() or "none")
            request.set_header("X-Arg", request.query_arg("q") or "none")
            local args = request.query_args()
            request.set_header("X-Args", type(args.multi) == "table" and table.concat(args.multi, "+") or "none")
            request.set_header("X-First", request.header("x-multi") or "none")
            request.set_header("X-All", table.concat(request.header_values("X-Multi"), "|"))
            local headers = request.headers()
            request.set_header("X-Table", type(headers["x-multi"]) == "table" and #headers["x-multi"] or 0)
            request.set_header("X-Client", request.client_ip())
            request.set_header("X-Id", request.id())
            request.set_header("X-Route", request.route() .. "/" .. request.upstream())
            request.add_header("X-Added", "one")
            request.add_header("X-Added", "two")
            request.remove_header("X-Remove-Me")
            request.set_header("X-Replace-Me", "new")
            request.set_header("X-Seen-Own", request.header("X-Replace-Me"))
            request.set_header("X-Double", util.double(21))
            if path == "/api/rewrite" then
              request.set_path("/rewritten/path")
              request.set_query({b = "2 3", a = {"x", "y"}})
              request.set_header("Host", "rewritten.example")
            elseif path == "/api/noquery" then
              request.set_query(nil)
            elseif path == "/api/other" then
              request.set_upstream("other")
            end
          end,
        }
        """#

    static let phases = #"""
        local seen = {}
        return {
          access = function(ctx)
            ctx.started = request.path()
            if request.header("X-Report") then
              request.respond(200, json.encode(seen))
            end
          end,
          response = function(ctx)
            response.set_header("X-Gateway", "moongate")
            response.set_header("X-From-Ctx", ctx.started)
            response.remove_header("X-Upstream-Only")
            if response.header("Content-Type") then response.set_header("X-Had-Type", "yes") end
            response.set_header("X-Type-Count", #response.header_values("content-type"))
            response.set_header("X-Table-Type", response.headers()["content-type"])
            if ctx.started == "/phases/teapot" then response.set_status(418 + 100) end
          end,
          log = function(ctx)
            seen[ctx.started] = response.status()
          end,
        }
        """#

    static let hostile = #"""
        return {
          access = function(ctx)
            local attack = request.header("X-Attack")
            if attack == "loop" then while true do end
            elseif attack == "memory" then local t = {} for i = 1, 1e9 do t[i] = {} end
            elseif attack == "pattern" then string.find(string.rep("a", 100000), "(.-)(.-)(.-)b")
            elseif attack == "error" then local secret = nil; return secret.field
            elseif attack == "global" then leaked = request.id()
            elseif attack == "read-global" then request.set_header("X-Leaked", tostring(leaked))
            elseif attack == "inject" then request.set_header("X-Evil", "a\r\nX-Injected: 1")
            elseif attack == "framing" then request.set_header("Content-Length", "0")
            elseif attack == "headers" then
              local value = string.rep("a", 16000)
              for i = 1, 1e6 do request.add_header("X-Bomb", value) end
            elseif attack == "long-name" then request.set_upstream(string.rep("u", 600000))
            elseif attack == "big" then local t = {} for i = 1, 20000 do t[i] = {i} end ctx.t = t
            elseif attack == "escape" then request.set_header("X-Io", tostring(io) .. tostring(os.execute) .. tostring(require))
            end
          end,
        }
        """#

    static let body = #"""
        return {
          access = function(ctx)
            local mode = request.header("X-Mode")
            if mode == "read" then
              local body, err = request.body(tonumber(request.header("X-Cap")))
              if not body then request.respond(413, err) end
              request.set_header("X-Body-Length", #body)
              request.set_header("X-Body-Head", body:sub(1, 10))
            elseif mode == "upper" then
              request.set_body(string.upper(request.body()))
            elseif mode == "json" then
              local doc = assert(json.decode(request.body()))
              doc.password = nil
              request.set_body(json.encode(doc))
            elseif mode == "coroutine" then
              -- a wait inside the script's own coroutine goes up to the runtime and back
              local co = coroutine.wrap(function() return #request.body() end)
              request.set_header("X-Body-Length", co())
            end
          end,
        }
        """#

    static let transform = #"""
        return {
          response = function(ctx)
            local mode = request.header("X-Mode")
            if mode == "summary" then
              local body = response.body()
              local doc = json.decode(body)
              response.set_header("Content-Type", "application/json")
              response.set_body(json.encode({method = doc.method, bytes = #body}))
            elseif mode == "length" then
              local body, err = response.body(tonumber(request.header("X-Cap")))
              response.set_header("X-Length", body and #body or err)
            elseif mode == "replace" then
              response.set_body("replaced")
            end
          end,
          log = function(ctx)
            if request.header("X-Mode") == "replace" then assert(response.body() == "replaced") end
          end,
        }
        """#

    @Test func responseBodyTransform() async throws {
        try await withGateway(Self.config, workers: 1, scripts: Self.scripts) { gw in
            let c = try gw.client()
            let summary = try c.request("GET", "/transform/echo", headers: [("X-Mode", "summary")])
            #expect(summary.status == 200)
            let doc = try JSONSerialization.jsonObject(with: Data(summary.body)) as? [String: Any]
            #expect(doc?["method"] as? String == "GET")
            #expect((doc?["bytes"] as? Int ?? 0) > 100)
            #expect(summary.header("Content-Length") == "\(summary.body.count)")
            // A body spread over many reads, Content-Length framed and chunked.
            for query in ["", "?chunked=1"] {
                let length = try c.request("GET", "/transform/bytes/300000\(query)", headers: [("X-Mode", "length")])
                #expect(length.header("X-Length") == "300000", "\(query)")
                #expect(length.body.count == 300_000)
                #expect(length.header("Transfer-Encoding") == nil)
                let replaced = try c.request("GET", "/transform/bytes/300000\(query)", headers: [("X-Mode", "replace")])
                #expect(replaced.text == "replaced", "\(query)")
                #expect(replaced.header("Content-Length") == "8")
            }
            // Larger than the cap: the script hears so, and the body streams as it came.
            for query in ["", "?chunked=1"] {
                let big = try c.request("GET", "/transform/bytes/100000\(query)", headers: [("X-Mode", "length"), ("X-Cap", "1000")])
                #expect(big.header("X-Length") == "body larger than 1000 bytes")
                #expect(big.body.count == 100_000)
            }
            #expect(try c.request("GET", "/transform/echo").status == 200, "the connection stays usable")
        }
    }

    /// FNV-1a, as the echo upstream reports its body's checksum.
    static func fnv(_ text: String) -> String {
        var value: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in text.utf8 {
            value ^= UInt64(b)
            value = value &* 0x100_0000_01b3
        }
        return String(value, radix: 16)
    }

    @Test func requestBodyReadAndReplace() async throws {
        try await withGateway(Self.config, workers: 1, scripts: Self.scripts) { gw in
            let c = try gw.client()
            // Whole with the head.
            let r = try c.request("POST", "/body", headers: [("X-Mode", "read")], body: Array("hello body".utf8))
            #expect(r.echoed("X-Body-Length") == ["10"])
            #expect(r.echoed("X-Body-Head") == ["hello body"])
            #expect(r.json["body_bytes"] as? Int == 10)
            #expect(r.json["body_checksum"] as? String == Self.fnv("hello body"))
            // Arriving after the head: the script waits without blocking the loop. (The pauses
            // block the thread: a Task.sleep can wait seconds for a cooperative thread while
            // other suites' blocking clients hold them, and the body would then come too late.)
            try c.send("POST /body HTTP/1.1\r\nHost: a\r\nX-Mode: read\r\nContent-Length: 2000\r\n\r\n")
            pause(0.1)
            #expect(try gw.client().request("GET", "/body").status == 200, "the loop serves others meanwhile")
            try c.send(String(repeating: "x", count: 1000))
            pause(0.05)
            try c.send(String(repeating: "y", count: 1000))
            let late = try c.readResponse()
            #expect(late.echoed("X-Body-Length") == ["2000"], "\(late.status) \(late.text)")
            #expect(late.json["body_bytes"] as? Int == 2000)
            // Chunked, in pieces: read, then sent upstream with a Content-Length.
            try c.send("POST /body HTTP/1.1\r\nHost: a\r\nX-Mode: upper\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            pause(0.05)
            try c.send("6\r\n world\r\n0\r\n\r\n")
            let chunked = try c.readResponse()
            #expect(chunked.json["body_bytes"] as? Int == 11)
            #expect(chunked.json["body_checksum"] as? String == Self.fnv("HELLO WORLD"))
            #expect(chunked.echoed("Transfer-Encoding").isEmpty)
            #expect(chunked.echoed("Content-Length") == ["11"])
            // A JSON transform.
            let doc = try c.request("POST", "/body", headers: [("X-Mode", "json")], body: Array(#"{"password":"x","user":"a"}"#.utf8))
            #expect(doc.json["body_checksum"] as? String == Self.fnv(#"{"user":"a"}"#))
            // Over the cap: the script gets nil and a reason.
            let big = try c.request("POST", "/body", headers: [("X-Mode", "read"), ("X-Cap", "10")], body: Array(repeating: 65, count: 100))
            #expect(big.status == 413)
            #expect(big.text == "body larger than 10 bytes")
            let co = try c.request("POST", "/body", headers: [("X-Mode", "coroutine")], body: Array("abc".utf8))
            #expect(co.echoed("X-Body-Length") == ["3"])
            #expect(try c.request("GET", "/body").status == 200, "the connection stays usable")
        }
    }

    @Test func requestBodyWithExpectContinueAndMalformedChunks() async throws {
        try await withGateway(Self.config, workers: 1, scripts: Self.scripts) { gw in
            let c = try gw.client()
            try c.send("POST /body HTTP/1.1\r\nHost: a\r\nX-Mode: read\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            #expect(try c.readLine() == "HTTP/1.1 100 Continue")
            #expect(try c.readLine() == "")
            try c.send("abcd")
            let r = try c.readResponse()
            #expect(r.status == 200)
            #expect(r.echoed("Expect").isEmpty)
            #expect(r.json["body_bytes"] as? Int == 4)
            let bad = try gw.client()
            try bad.send("POST /body HTTP/1.1\r\nHost: a\r\nX-Mode: read\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            let refused = try bad.readResponse()
            #expect(refused.status == 400)
            #expect(refused.text.contains("malformed chunked body"))
        }
    }

    static let scripts = ["api.lua": api, "body.lua": body, "transform.lua": transform, "phases.lua": phases, "hostile.lua": hostile, "lib/util.lua": "return { double = function(x) return x * 2 end }"]

    @Test func requestAPI() async throws {
        try await withGateway(Self.config, scripts: Self.scripts) { gw in
            let c = try gw.client()
            let r = try c.request(
                "GET", "/api/echo?q=1&multi=a&multi=b%20c",
                headers: [("X-Multi", "m1"), ("X-Multi", "m2"), ("X-Remove-Me", "x"), ("X-Replace-Me", "old"), ("X-Request-Id", "abc-123")])
            #expect(r.status == 200)
            #expect(r.json["uri"] as? String == "/echo?q=1&multi=a&multi=b%20c")
            #expect(r.echoed("X-Method") == ["GET"])
            #expect(r.echoed("X-Host") == ["localhost"])
            #expect(r.echoed("X-Path") == ["/api/echo"])
            #expect(r.echoed("X-Query") == ["q=1&multi=a&multi=b%20c"])
            #expect(r.echoed("X-Arg") == ["1"])
            #expect(r.echoed("X-Args") == ["a+b c"])
            #expect(r.echoed("X-First") == ["m1"])
            #expect(r.echoed("X-All") == ["m1|m2"])
            #expect(r.echoed("X-Table") == ["2"])
            #expect(r.echoed("X-Client") == ["127.0.0.1"])
            #expect(r.echoed("X-Id") == ["abc-123"])
            #expect(r.echoed("X-Route") == ["api/echo"])
            #expect(r.echoed("X-Added") == ["one", "two"])
            #expect(r.echoed("X-Remove-Me").isEmpty)
            #expect(r.echoed("X-Replace-Me") == ["new"])
            #expect(r.echoed("X-Seen-Own") == ["new"])
            #expect(r.echoed("X-Double") == ["42"])
            #expect(r.echoed("X-Multi") == ["m1", "m2"])

            let rewritten = try c.request("GET", "/api/rewrite?old=1")
            #expect(rewritten.json["uri"] as? String == "/rewritten/path?a=x&a=y&b=2%203")
            #expect(rewritten.echoed("Host") == ["rewritten.example"])
            #expect(rewritten.echoed("X-Forwarded-Host") == ["localhost"], "the client's Host, not the script's")
            let noQuery = try c.request("GET", "/api/noquery?drop=1")
            #expect(noQuery.json["uri"] as? String == "/noquery")
            let other = try c.request("GET", "/api/other")
            #expect(other.echoed("X-Route") == ["api/echo"])
            #expect(other.status == 200)
        }
    }

    @Test func earlyAnswerEndsTheScript() async throws {
        try await withGateway(Self.config, scripts: Self.scripts) { gw in
            let before = gw.stats.accepted.withLockedValue { $0 }
            let c = try gw.client()
            let r = try c.request("GET", "/api/deny")
            #expect(r.status == 403)
            #expect(r.header("Content-Type") == "application/json")
            #expect(r.headers("X-Why") == ["a", "b"])
            #expect(r.header("X-Request-Id")?.count == 32)
            let body = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: String]
            #expect(body == ["error": "denied", "by": "api"])
            #expect(gw.stats.accepted.withLockedValue { $0 } == before, "no upstream connection was made")
            #expect(try c.request("GET", "/api/echo").status == 200, "the connection stays usable")
        }
    }

    @Test func responseAndLogPhasesShareCtx() async throws {
        try await withGateway(Self.config, workers: 1, scripts: Self.scripts) { gw in
            let c = try gw.client()
            let r = try c.request("GET", "/phases/one")
            #expect(r.status == 200)
            #expect(r.header("X-Gateway") == "moongate")
            #expect(r.header("X-From-Ctx") == "/phases/one")
            #expect(r.header("X-Had-Type") == "yes")
            #expect(r.header("X-Type-Count") == "1")
            #expect(r.header("X-Table-Type") == r.header("Content-Type"))
            let teapot = try c.request("GET", "/phases/teapot")
            #expect(teapot.status == 518)
            _ = try c.request("GET", "/phases/status/404")
            let report = try c.request("GET", "/phases/report", headers: [("X-Report", "1")])
            let seen = try JSONSerialization.jsonObject(with: Data(report.body)) as? [String: Int]
            #expect(seen == ["/phases/one": 200, "/phases/teapot": 518, "/phases/status/404": 404])
        }
    }

    /// Each hostile script ends its own request with a `500` (JSON, request id, no script
    /// internals); the next request, on the same connection, is served normally.
    @Test func hostileScriptsFailOnlyTheirRequest() async throws {
        try await withGateway(Self.config, workers: 1, scripts: Self.scripts) { gw in
            let c = try gw.client()
            #expect(try c.request("GET", "/hostile").status == 200)
            let footprint = await gw.gateway.generation?.scriptStateBytes ?? 0
            #expect(footprint > 0)
            // "headers" would hold gigabytes outside the Lua heap if header changes were unbounded.
            for attack in ["loop", "memory", "pattern", "error", "inject", "framing", "headers", "long-name"] {
                let r = try c.request("GET", "/hostile", headers: [("X-Attack", attack)])
                #expect(r.status == 500, "\(attack)")
                let body = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: String] ?? [:]
                #expect(body["error"] == (["loop", "memory", "pattern"].contains(attack) ? "script budget exceeded" : "script error"), "\(attack)")
                #expect(body["request_id"] == r.header("X-Request-Id"))
                #expect(!r.text.contains("lua"), "no script internals reach the client")
                let next = try c.request("GET", "/hostile")
                #expect(next.status == 200, "after \(attack)")
                // The interpreter the run failed on is gone; what serves now is at its usual size.
                let lua = await gw.gateway.luaStats()
                #expect(lua.interpreters == 1 && lua.heapBytes <= footprint + 64 * 1024, "after \(attack): \(lua)")
            }
            // A request that used a lot of memory within its budget: collected when it ends.
            #expect(try c.request("GET", "/hostile", headers: [("X-Attack", "big")]).status == 200)
            let lua = await gw.gateway.luaStats()
            #expect(lua.heapBytes <= footprint + 64 * 1024, "after a big request: \(lua)")
            #expect(try c.request("GET", "/hostile", headers: [("X-Attack", "global")]).status == 200)
            let read = try c.request("GET", "/hostile", headers: [("X-Attack", "read-global")])
            #expect(read.echoed("X-Leaked") == ["nil"], "a global one request set is not seen by the next")
            let escape = try c.request("GET", "/hostile", headers: [("X-Attack", "escape")])
            #expect(escape.echoed("X-Io").first?.hasPrefix("nilnilfunction") == true)
        }
    }

    /// A request whose ctx is empty after access gives its state back during the upstream wait
    /// and borrows one again for its response phase: three slow requests through a route with
    /// a response phase all pass with two states per worker.
    @Test func emptyCtxFreesTheStateDuringTheUpstreamWait() async throws {
        try await withGateway(Self.config, workers: 1, scripts: Self.scripts) { gw in
            let statuses = LockedCounter()
            let threads = (0..<3).map { _ in
                Thread {
                    if (try? RawClient(port: gw.port).request("GET", "/transform/delay/300", headers: [("X-Mode", "replace")]))?.text == "replaced" {
                        statuses.add()
                    }
                }
            }
            threads.forEach { $0.start() }
            try await Task.sleep(for: .milliseconds(150))
            #expect(await gw.gateway.luaStats().contexts == 1, "one context serves all three while they wait")
            while threads.contains(where: { $0.isExecuting }) { try await Task.sleep(for: .milliseconds(20)) }
            #expect(statuses.value == 3)
        }
    }

    /// A policy with response and log phases holds its state across the upstream wait: with
    /// two states per worker, a third concurrent request waits 50 ms, then gets `503`.
    @Test func exhaustedPoolAnswers503() async throws {
        try await withGateway(Self.config, workers: 1, scripts: Self.scripts) { gw in
            let slow = (0..<2).map { _ in
                Thread {
                    _ = try? RawClient(port: gw.port).request("GET", "/phases/delay/600")
                }
            }
            slow.forEach { $0.start() }
            pause(0.2)
            let start = Date()
            let r = try gw.client().request("GET", "/phases/fast")
            #expect(r.status == 503)
            #expect(Date().timeIntervalSince(start) < 0.5)
            #expect(try gw.client().request("GET", "/api/echo").status == 503, "every state is still lent")
            pause(0.7)
            #expect(try gw.client().request("GET", "/phases/fast").status == 200)
        }
    }
}
