import NIOCore
import Testing

@testable import Redis

@Suite struct CircuitTests {
    @Test func opensAfterConsecutiveFailuresThenProbes() {
        var c = Circuit(threshold: 3, open: .milliseconds(100), maxOpen: .milliseconds(300))
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        func admit(_ ms: Int64, from t: NIODeadline) -> Circuit.Admission { c.admit(now: t + .milliseconds(ms)) }
        func fail(_ t: NIODeadline) -> Bool { c.failed(now: t) }
        func succeed() -> Bool { c.succeeded() }
        #expect(!fail(t0))
        #expect(!succeed())  // a success resets the count
        #expect(!fail(t0))
        #expect(!fail(t0))
        #expect(fail(t0))  // the third in a row opens it
        #expect(admit(50, from: t0) == .reject)
        #expect(admit(100, from: t0) == .probe)
        #expect(admit(101, from: t0) == .reject)  // one probe at a time
        // The probe fails: open twice as long.
        let t1 = t0 + .milliseconds(110)
        #expect(fail(t1))
        #expect(admit(150, from: t1) == .reject)
        #expect(admit(200, from: t1) == .probe)
        #expect(fail(t1 + .milliseconds(200)))
        // ... up to maxOpen.
        #expect(admit(499, from: t1) == .reject)
        #expect(admit(500, from: t1) == .probe)
        #expect(succeed())
        #expect(admit(500, from: t1) == .pass)
        #expect(!c.isOpen)
    }
}
