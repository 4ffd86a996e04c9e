// The AsyncThrowingStream plumbing shared by MLXEdgeModel.stream and ChatSession.streamResponse.

/// Runs `produce` in a task, yielding each piece it emits; `emit` returns false once the consumer
/// has gone or the task was cancelled, so generation stops at the next token.
func pieceStream(
    _ produce: @escaping @Sendable (_ emit: @escaping @Sendable (String) -> Bool) async throws -> Void
) -> AsyncThrowingStream<String, Error> {
    AsyncThrowingStream { continuation in
        let task = Task {
            do {
                try await produce { piece in
                    if case .terminated = continuation.yield(piece) { return false }
                    return !Task.isCancelled
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
    }
}
