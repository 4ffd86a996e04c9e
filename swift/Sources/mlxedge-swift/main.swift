// mlxedge-swift: run an mlxedge / mlx-lm bundle on the CPU.
//
//   swift run -c release mlxedge-swift generate --model DIR --prompt TEXT [--max-tokens N]
//       [--temp T] [--top-p P] [--top-k K] [--min-p P] [--repetition-penalty R] [--seed S]
//       [--stop STRING]... [--system TEXT] [--ignore-chat-template]
import Foundation
import MLXEdge

let usage = """
usage: mlxedge-swift generate --model DIR --prompt TEXT [options]

  --model DIR                 bundle directory (config.json, model.safetensors, tokenizer.json)
  --prompt TEXT               the user message ("-" reads standard input)
  --max-tokens N              new tokens at most (default 256)
  --temp T                    sampling temperature, 0 = greedy (default 0)
  --top-p P, --top-k K, --min-p P, --repetition-penalty R, --seed S
  --stop STRING               end generation before STRING (repeatable)
  --system TEXT               a system message before the prompt
  --ignore-chat-template      feed the prompt as raw text
"""

struct Options {
    var model: String?
    var prompt: String?
    var system: String?
    var rawPrompt = false
    var parameters = GenerateParameters()
}

func parse(_ args: [String]) throws -> Options {
    var o = Options()
    var i = 0
    func value(_ flag: String) throws -> String {
        i += 1
        guard i < args.count else { throw MLXEdgeError.invalidArgument("\(flag) needs a value") }
        return args[i]
    }
    func number<T: LosslessStringConvertible>(_ flag: String, _: T.Type) throws -> T {
        let v = try value(flag)
        guard let n = T(v) else { throw MLXEdgeError.invalidArgument("\(flag) expects a number, got \(v)") }
        return n
    }
    while i < args.count {
        let a = args[i]
        switch a {
        case "--model", "-m": o.model = try value(a)
        case "--prompt", "-p": o.prompt = try value(a)
        case "--system": o.system = try value(a)
        case "--max-tokens", "-n": o.parameters.maxTokens = try number(a, Int.self)
        case "--temp": o.parameters.temperature = try number(a, Float.self)
        case "--top-p": o.parameters.topP = try number(a, Float.self)
        case "--top-k": o.parameters.topK = try number(a, Int.self)
        case "--min-p": o.parameters.minP = try number(a, Float.self)
        case "--repetition-penalty": o.parameters.repetitionPenalty = try number(a, Float.self)
        case "--seed": o.parameters.seed = try number(a, UInt64.self)
        case "--stop": o.parameters.stop.append(try value(a))
        case "--ignore-chat-template": o.rawPrompt = true
        default: throw MLXEdgeError.invalidArgument("unknown option \(a) (see --help)")
        }
        i += 1
    }
    try o.parameters.validate()
    return o
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(1)
}

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.isEmpty || arguments.contains("--help") || arguments.contains("-h") {
    print(usage)
    exit(arguments.isEmpty ? 1 : 0)
}
guard arguments[0] == "generate" else { fail("unknown command \(arguments[0]); the command is `generate`") }

do {
    let options = try parse(Array(arguments.dropFirst()))
    guard let dir = options.model else { throw MLXEdgeError.invalidArgument("--model DIR is required") }
    guard var prompt = options.prompt else { throw MLXEdgeError.invalidArgument("--prompt TEXT is required") }
    if prompt == "-" { prompt = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self) }

    let model = try await MLXEdgeModel.load(directory: URL(fileURLWithPath: dir))
    if !options.rawPrompt && model.chatTemplate != nil {
        var messages: [[String: String]] = []
        if let s = options.system { messages.append(["role": "system", "content": s]) }
        messages.append(["role": "user", "content": prompt])
        prompt = try model.applyChatTemplate(messages: messages)
    }
    let tokens = try model.encode(prompt)
    try await model.generate(tokens: tokens, parameters: options.parameters) { piece in
        FileHandle.standardOutput.write(Data(piece.utf8))
        return true
    }
    let info = await model.lastInfo
    let stats = String(format: "\n==========\nprompt: %d tokens, %.1f tokens/s\ngeneration: %d tokens, %.1f tokens/s (%@)\n",
                       info.promptTokens, info.promptTokensPerSecond, info.generatedTokens, info.tokensPerSecond,
                       info.finishReason)
    FileHandle.standardError.write(Data(stats.utf8))
} catch let e as MLXEdgeError {
    fail(e.description)
} catch {
    fail("\(error)")
}
