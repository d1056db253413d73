/// The few string edits the gateway needs from outside the standard library (Foundation's
/// versions live in the part of Foundation it leaves out).
extension StringProtocol {
    /// Without leading and trailing spaces and tabs (HTTP's optional whitespace).
    public func trimmingSpaces() -> SubSequence {
        var s = self[...]
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }

    /// Without leading and trailing whitespace, line breaks included.
    public func trimmingWhitespace() -> SubSequence {
        var s = self[...]
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        return s
    }
}

extension Double {
    /// Fixed-point text with `places` decimals (`printf("%.3f")`, without Foundation's
    /// `String(format:)`).
    public func fixed(_ places: Int) -> String {
        guard isFinite else { return "\(self)" }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let scaled = (abs(self) * scale).rounded()
        guard scaled < 9e18 else { return "\(self)" }
        let units = UInt64(scaled)
        let whole = units / UInt64(scale), fraction = units % UInt64(scale)
        var text = (self < 0 && units > 0 ? "-" : "") + String(whole)
        if places > 0 {
            let digits = String(fraction)
            text += "." + String(repeating: "0", count: places - digits.count) + digits
        }
        return text
    }
}

extension String {
    /// Right-aligned in `width` characters (`printf("%6s")`).
    public func padded(left width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }

    /// Left-aligned in `width` characters (`printf("%-6s")`).
    public func padded(right width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
