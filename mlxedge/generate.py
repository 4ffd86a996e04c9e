"""`mlxedge generate --model PATH --prompt TEXT`: stream a reply, then speeds and peak memory on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .api import load
from . import store
from .errors import MlxEdgeError
from .sampling import SamplingParams


def add_model_args(p: argparse.ArgumentParser, max_tokens: int = 256, raw_prompt_flag: bool = True) -> None:
    """--model, --backend and the sampling options, shared with `mlxedge chat` (its own
    --max-tokens default; no --no-chat-template: chat always renders the template)."""
    p.add_argument("--model", default=None,
                   help="a converted model directory or a .gguf file (converted once into the cache); "
                        "default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--backend", choices=("auto", "mlx", "numpy"), default="auto",
                   help="auto: MLX on Apple Silicon, NumPy elsewhere (default auto)")
    p.add_argument("--max-tokens", "-m", type=int, default=max_tokens,
                   help=f"most tokens to generate (default {max_tokens})")
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature; 0 is greedy (default 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0: off)")
    p.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens below min-p times the top probability (default 0: off)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="e.g. 1.1 (default off)")
    p.add_argument("--repetition-context-size", type=int, default=20,
                   help="how many recent tokens the repetition penalty looks at (default 20)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable); it is not printed")
    p.add_argument("--system", default=None, help="system prompt (chat template only)")
    if raw_prompt_flag:
        p.add_argument("--no-chat-template", action="store_true",
                       help="feed the prompt as raw text instead of through the model's chat template")
    p.add_argument("--quiet", "-q", action="store_true", help="no statistics or progress on stderr")


def sampling_from_args(args: argparse.Namespace) -> dict:
    return {"temp": args.temp, "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
            "repetition_penalty": args.repetition_penalty,
            "repetition_context_size": args.repetition_context_size, "seed": args.seed}


def load_from_args(args: argparse.Namespace):
    """Check every option first (a bad one fails in milliseconds, not after a model load), then load."""
    if args.max_tokens < 1:
        raise MlxEdgeError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    SamplingParams(**sampling_from_args(args))
    model = load(args.model if args.model is not None else store.default_model(quiet=args.quiet),
                 backend=args.backend, quiet=args.quiet)
    store.apply_settings(args, model.defaults)  # a Modelfile's SYSTEM / PARAMETERs for flags not given
    return model


def read_prompt(prompt: str) -> str:
    """The --prompt text; `-` reads stdin to its end."""
    if prompt != "-":
        return prompt
    if sys.stdin is None or sys.stdin.closed:
        raise MlxEdgeError("--prompt -: standard input is closed")
    try:
        return sys.stdin.read()
    except (OSError, ValueError) as e:  # ValueError: UnicodeDecodeError, or I/O on a closed file
        raise MlxEdgeError(f"--prompt -: cannot read standard input ({e})") from None


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", "-p", required=True, help="the prompt; `-` reads it from stdin")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (text and statistics) at the end")


def main(args: argparse.Namespace) -> int:
    prompt = read_prompt(args.prompt)
    start = time.perf_counter()
    model = load_from_args(args)
    load_seconds = time.perf_counter() - start
    use_template = False if args.no_chat_template else None
    ids = model.encode_prompt(prompt, system=args.system, chat_template=use_template)
    if not ids:
        raise MlxEdgeError("the prompt is empty")
    gen = model.generation(ids, max_tokens=args.max_tokens, stop=args.stop, **sampling_from_args(args))
    if args.json:
        gen.run()
        print(json.dumps({"text": gen.text, "model": str(model.path), "backend": model.backend,
                          "load_seconds": round(load_seconds, 4), **gen.stats.as_dict()}, ensure_ascii=False))
        return 0
    for piece in gen:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        print("=" * 10, file=sys.stderr)
        print(f"{gen.stats.summary()} | backend: {model.backend}", file=sys.stderr)
    return 0
