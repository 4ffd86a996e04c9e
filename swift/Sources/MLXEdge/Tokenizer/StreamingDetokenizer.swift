/// Turns generated ids into text pieces as they arrive, holding back a piece while it ends in an
/// incomplete UTF-8 character (byte-level and byte-fallback tokens can split one character).
///
/// Each step decodes the current line with one token of left context (so decoders that strip a
/// leading space, like SentencePiece's, see a mid-text token) and returns what is new. The line
/// restarts after a newline, which keeps the work per token small.
public struct StreamingDetokenizer: Sendable {
    public let tokenizer: Tokenizer
    private var ids: [Int] = []
    private var contextStart = 0
    private var segmentStart = 0
    private var emitted: [Unicode.Scalar] = []
    /// Give up waiting for a character to complete after this many tokens (invalid bytes).
    private let maxHold = 4
    private var held = 0

    public init(tokenizer: Tokenizer) { self.tokenizer = tokenizer }

    /// Add one id; returns the text it completes (possibly empty).
    public mutating func append(_ id: Int) -> String {
        ids.append(id)
        let text = segmentText()
        if text.last == "\u{FFFD}" && held < maxHold {
            held += 1
            return ""
        }
        held = 0
        let piece = newText(text)
        if text.last == "\n" {
            contextStart = ids.count - 1
            segmentStart = ids.count
            emitted = []
        }
        return piece
    }

    /// Whatever is still held back.
    public mutating func finish() -> String {
        let piece = newText(segmentText())
        contextStart = ids.count
        segmentStart = ids.count
        return piece
    }

    private func segmentText() -> [Unicode.Scalar] {
        let full = Array(tokenizer.decode(Array(ids[contextStart...])).unicodeScalars)
        let context = Array(tokenizer.decode(Array(ids[contextStart..<segmentStart])).unicodeScalars)
        return full.starts(with: context) ? Array(full[context.count...]) : full
    }

    private mutating func newText(_ text: [Unicode.Scalar]) -> String {
        let fresh = text.starts(with: emitted) ? Array(text[emitted.count...]) : text
        emitted = text
        return String(String.UnicodeScalarView(fresh))
    }
}
