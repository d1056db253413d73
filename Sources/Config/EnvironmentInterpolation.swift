/// Expands `${VAR}` and `${VAR:-default}` in configuration scalars; `$${` stands for a
/// literal `${`. Done per scalar after parsing so that line numbers stay those of the file.
enum EnvironmentInterpolation {
    enum Failure: Error, Equatable {
        case unset(String)
        case unterminated
        case badName(String)
    }

    static func expand(_ text: String, environment: [String: String]) throws(Failure) -> String {
        guard text.contains("$") else { return text }
        var out = ""
        var rest = Substring(text)
        while let dollar = rest.firstIndex(of: "$") {
            out += rest[..<dollar]
            let afterDollar = rest.index(after: dollar)
            if rest[afterDollar...].hasPrefix("${") {  // "$${" escapes
                out += "${"
                rest = rest[rest.index(afterDollar, offsetBy: 2)...]
                continue
            }
            guard rest[afterDollar...].hasPrefix("{") else {
                out.append("$")
                rest = rest[afterDollar...]
                continue
            }
            let bodyStart = rest.index(after: afterDollar)
            guard let close = rest[bodyStart...].firstIndex(of: "}") else { throw .unterminated }
            let body = rest[bodyStart..<close]
            let name: Substring
            let fallback: Substring?
            if let sep = body.firstRange(of: ":-") {
                name = body[..<sep.lowerBound]
                fallback = body[sep.upperBound...]
            } else {
                name = body
                fallback = nil
            }
            guard isValidName(name) else { throw .badName(String(name)) }
            if let value = environment[String(name)], !(value.isEmpty && fallback != nil) {
                out += value
            } else if let fallback {
                out += fallback
            } else {
                throw .unset(String(name))
            }
            rest = rest[rest.index(after: close)...]
        }
        out += rest
        return out
    }

    private static func isValidName(_ name: Substring) -> Bool {
        guard let first = name.first, first == "_" || first.isLetter else { return false }
        return name.allSatisfy { $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }
    }
}
