import Foundation
import Gateway
import PostgresTestServer
import TestSupport
import Testing

/// schemathesis (PyPI; scripts/test installs it in .build-venv) against `/openapi.json` on a
/// gateway with a real PostgreSQL store: generated requests, valid and not, to every operation,
/// must get no 5xx and no answer the document does not describe (status, content type,
/// headers, body schema), with and without the token.
@Suite(.serialized) struct AdminAPIFuzzTests {
    static let schemathesis: String? = {
        let candidates = [ProcessInfo.processInfo.environment["MOONGATE_SCHEMATHESIS"], FileManager.default.currentDirectoryPath + "/.build-venv/bin/st"]
        return candidates.compactMap { $0 }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    @Test(.enabled(if: schemathesis != nil, "schemathesis is not installed (scripts/test installs it)"))
    func schemathesisFindsNoServerErrorAndNoAnswerOutsideTheSchema() async throws {
        try await ConfigStoreTests.withFleet(1) { fleet in
            let gw = fleet.gateways[0]
            let port = try #require(await gw.gateway.adminPort())
            let checks = [
                "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
                "response_headers_conformance", "missing_required_header", "unsupported_method", "allow_header_conformance", "ignored_auth",
            ]
            let output = try await offThePool {
                try runTool(
                    Self.schemathesis!,
                    [
                        "run", "http://127.0.0.1:\(port)/openapi.json", "-H", "Authorization: Bearer \(AdminAPITests.token.token)",
                        "--checks", checks.joined(separator: ","), "--max-examples", "30", "--workers", "1", "--request-timeout", "10",
                        "--phases", "coverage,fuzzing,stateful", "--no-color",
                    ])
            }
            #expect(output.0 == 0, "\(output.1.suffix(6000))")
            // Still serving, still reading its store.
            #expect(try await AdminAPITests.admin(gw, "GET", "/readyz").status == 200)
        }
    }
}
