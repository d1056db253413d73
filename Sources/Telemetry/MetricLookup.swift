extension MetricSnapshot {
    /// The value of the sample `name` whose labels are exactly `labels` (a histogram's count
    /// and sum by its name), as `/metrics` would show it; nil if there is none. For tests and
    /// the harness: it renders the page and reads it back, so it sees what Prometheus sees.
    public func lookup(_ name: String, _ labels: [String: String], scriptFamilies: [MetricFamily]) -> (value: Double, sum: Double?)? {
        var page = PrometheusText()
        write(into: &page, scriptFamilies: scriptFamilies)
        let samples = PrometheusText.parse(page.text)
        if let v = samples.first(where: { $0.name == name && $0.labels == labels })?.value { return (v, nil) }
        guard let count = samples.first(where: { $0.name == name + "_count" && $0.labels == labels })?.value else { return nil }
        return (count, samples.first { $0.name == name + "_sum" && $0.labels == labels }?.value)
    }
}

extension PrometheusText {
    public struct Sample: Equatable {
        public var name: String
        public var labels: [String: String]
        public var value: Double
    }

    /// Reads back the sample lines of a page this type wrote.
    public static func parse(_ text: String) -> [Sample] {
        var out: [Sample] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            var chars = Array(line.unicodeScalars)[...]
            var name = ""
            while let c = chars.first, c != "{", c != " " {
                name.unicodeScalars.append(c)
                chars = chars.dropFirst()
            }
            var labels: [String: String] = [:]
            if chars.first == "{" {
                chars = chars.dropFirst()
                while let c = chars.first, c != "}" {
                    if c == "," {
                        chars = chars.dropFirst()
                        continue
                    }
                    var label = ""
                    while let c = chars.first, c != "=" {
                        label.unicodeScalars.append(c)
                        chars = chars.dropFirst()
                    }
                    chars = chars.dropFirst(2)  // ="
                    var value = ""
                    while let c = chars.first, c != "\"" {
                        chars = chars.dropFirst()
                        if c == "\\", let next = chars.first {
                            chars = chars.dropFirst()
                            value.unicodeScalars.append(next == "n" ? "\n" : next)
                        } else {
                            value.unicodeScalars.append(c)
                        }
                    }
                    chars = chars.dropFirst()
                    labels[label] = value
                }
                chars = chars.dropFirst()
            }
            let rest = String(String.UnicodeScalarView(chars)).trimmingSpaces
            let number: Double? = rest == "+Inf" ? .infinity : rest == "-Inf" ? -.infinity : Double(rest)
            if let number { out.append(Sample(name: name, labels: labels, value: number)) }
        }
        return out
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        String(unicodeScalars.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed().map(Character.init))
    }
}
