import NIOCore

/// The loop's timers: a binary min-heap on (deadline, insertion order) whose entries know
/// their position, so a cancelled timer leaves at once. Per-request timeouts are armed and
/// cancelled on every request; a heap that only skipped cancelled entries would keep one per
/// request until its deadline passed.
struct TimerHeap {
    final class Timer {
        let deadline: NIODeadline
        fileprivate var sequence: UInt64 = 0
        fileprivate var index = -1
        private var task: (() -> Void)?

        init(deadline: NIODeadline, _ task: @escaping () -> Void) {
            self.deadline = deadline
            self.task = task
        }

        func fire() {
            let task = self.task
            self.task = nil
            task?()
        }
    }

    private var heap: [Timer] = []
    private var sequence: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }
    var nextDeadline: NIODeadline? { heap.first?.deadline }

    mutating func insert(_ timer: Timer) {
        guard timer.index < 0 else { return }
        sequence &+= 1
        timer.sequence = sequence
        timer.index = heap.count
        heap.append(timer)
        up(heap.count - 1)
    }

    /// Removes `timer` if it is still waiting; returns whether it was.
    @discardableResult
    mutating func remove(_ timer: Timer) -> Bool {
        let i = timer.index
        guard i >= 0, i < heap.count, heap[i] === timer else { return false }
        let last = heap.count - 1
        if i != last {
            heap.swapAt(i, last)
            heap[i].index = i
        }
        heap.removeLast()
        timer.index = -1
        if i < heap.count {
            down(i)
            up(i)
        }
        return true
    }

    /// The earliest timer if it is due.
    mutating func popDue(now: NIODeadline) -> Timer? {
        guard let first = heap.first, first.deadline <= now else { return nil }
        remove(first)
        return first
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        let x = heap[a], y = heap[b]
        return x.deadline < y.deadline || (x.deadline == y.deadline && x.sequence < y.sequence)
    }

    private mutating func up(_ start: Int) {
        var i = start
        while i > 0 {
            let parent = (i - 1) / 2
            guard less(i, parent) else { return }
            heap.swapAt(i, parent)
            heap[i].index = i
            heap[parent].index = parent
            i = parent
        }
    }

    private mutating func down(_ start: Int) {
        var i = start
        let n = heap.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n, less(l, m) { m = l }
            if r < n, less(r, m) { m = r }
            guard m != i else { return }
            heap.swapAt(i, m)
            heap[i].index = i
            heap[m].index = m
            i = m
        }
    }
}
