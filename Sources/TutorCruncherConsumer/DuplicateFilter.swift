import DequeModule
import Synchronization

/// Remembers the most recent `capacity` event ids (least recently added forgotten first). Thread-safe.
final class DuplicateFilter: Sendable {
    private struct State {
        var members: Set<String> = []
        var order: Deque<String> = []
    }

    private let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    func contains(_ id: String) -> Bool { state.withLock { $0.members.contains(id) } }

    func insert(_ id: String) {
        state.withLock { state in
            guard state.members.insert(id).inserted else { return }
            state.order.append(id)
            if state.order.count > capacity { state.members.remove(state.order.removeFirst()) }
        }
    }
}
