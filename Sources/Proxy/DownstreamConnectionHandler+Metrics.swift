import NIOCore

extension DownstreamConnectionHandler {
    /// Counts the request that just ended, once, with the status the client got (499: the
    /// client left before any response, as nginx logs it).
    @inline(__always)
    func recordRequest(status: Int) {
        guard requestOpen else { return }
        requestOpen = false
        guard worker.generation.shared.metricsEnabled else { return }
        let seconds = Double((NIODeadline.now() - requestStart).nanoseconds) / 1e9
        worker.metrics.request(route: route?.metricID ?? -1, method: metricMethod, status: status, seconds: seconds)
    }
}
