/// Parses the units the configuration accepts: durations (`250ms`, `2s`, `1m`, `1h`, or a
/// bare number of seconds) and sizes (`512`, `16k`/`16KB`, `10m`/`10MB`, `1g`/`1GB`, binary).
enum Units {
    static func duration(_ text: String) -> Duration? {
        let t = text.trimmingSpaces()
        let units: [(String, Double)] = [("ms", 0.001), ("us", 0.000_001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where t.hasSuffix(suffix) {
            guard let value = Double(t.dropLast(suffix.count)), value >= 0, value.isFinite else { return nil }
            return .nanoseconds(Int64(value * scale * 1e9))
        }
        guard let seconds = Double(t), seconds >= 0, seconds.isFinite else { return nil }
        return .nanoseconds(Int64(seconds * 1e9))
    }

    static func size(_ text: String) -> Int? {
        let t = text.trimmingSpaces().lowercased()
        let units: [(String, Int)] = [
            ("kb", 1 << 10), ("mb", 1 << 20), ("gb", 1 << 30), ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("b", 1),
        ]
        for (suffix, scale) in units where t.hasSuffix(suffix) {
            guard let value = Int(t.dropLast(suffix.count)), value >= 0 else { return nil }
            let (product, overflow) = value.multipliedReportingOverflow(by: scale)
            return overflow ? nil : product
        }
        guard let value = Int(t), value >= 0 else { return nil }
        return value
    }
}
