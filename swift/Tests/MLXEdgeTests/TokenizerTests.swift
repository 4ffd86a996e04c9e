import Foundation
import Testing
@testable import MLXEdge

/// Goldens from Hugging Face `tokenizers` on the same tokenizer.json.
struct TokenizerCase: Decodable {
    let text: String
    let ids: [Int]
    let idsSpecial: [Int]
    let decoded: String
    let decodedSkip: String

    enum CodingKeys: String, CodingKey {
        case text, ids, decoded
        case idsSpecial = "ids_special"
        case decodedSkip = "decoded_skip"
    }
}

/// Every tokenizer directory with goldens: the committed small ones and generated real ones.
let tokenizerDirs: [URL] = {
    var dirs = subdirectories(fixtures.appendingPathComponent("tokenizers")).map { fixtures.appendingPathComponent("tokenizers/\($0)") }
    dirs += subdirectories(generated.appendingPathComponent("tokenizers")).map { generated.appendingPathComponent("tokenizers/\($0)") }
    return dirs
}()

@Suite struct TokenizerTests {
    @Test(arguments: tokenizerDirs)
    func encodeMatchesPython(dir: URL) throws {
        let tok = try Tokenizer(tokenizerJSON: dir.appendingPathComponent("tokenizer.json"))
        let cases = try loadJSON([TokenizerCase].self, dir.appendingPathComponent("goldens.json"))
        for c in cases {
            #expect(try tok.encode(c.text, addSpecialTokens: false) == c.ids, "\(dir.lastPathComponent): \(c.text.debugDescription)")
            #expect(try tok.encode(c.text) == c.idsSpecial, "\(dir.lastPathComponent) with specials: \(c.text.debugDescription)")
        }
    }

    @Test(arguments: tokenizerDirs)
    func decodeMatchesPython(dir: URL) throws {
        let tok = try Tokenizer(tokenizerJSON: dir.appendingPathComponent("tokenizer.json"))
        let cases = try loadJSON([TokenizerCase].self, dir.appendingPathComponent("goldens.json"))
        for c in cases {
            #expect(tok.decode(c.ids) == c.decoded, "\(dir.lastPathComponent): \(c.text.debugDescription)")
            #expect(tok.decode(c.ids, skipSpecialTokens: true) == c.decodedSkip, "\(dir.lastPathComponent) skip: \(c.text.debugDescription)")
        }
    }

    @Test func streamingDecodeHoldsBackPartialUTF8() throws {
        let dir = fixtures.appendingPathComponent("tokenizers/gpt2_bytelevel")
        let tok = try Tokenizer(tokenizerJSON: dir.appendingPathComponent("tokenizer.json"))
        let text = "emoji 😀👍🏽 and 日本語 text"
        let ids = try tok.encode(text, addSpecialTokens: false)
        var stream = StreamingDetokenizer(tokenizer: tok)
        var pieces: [String] = []
        for id in ids { pieces.append(stream.append(id)) }
        pieces.append(stream.finish())
        #expect(pieces.joined() == text)
        #expect(!pieces.contains { $0.contains("\u{FFFD}") }, "a partial character leaked: \(pieces)")
    }
}
