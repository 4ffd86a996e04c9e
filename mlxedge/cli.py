"""`mlxedge <command>`: lazy dispatch to mlxedge.<command>.main, one line per user-facing error."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# Before NumPy loads (commands are imported below, on demand). On a 2-core Linux box shared with
# other work, OpenBLAS's threads made the NumPy backend 5-20x slower on SmolLM2 (decode 0.5-2 vs
# 10-15 tokens/s, prefill 15-19 vs 90-110): small matmuls wait on busy cores. Set it to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import __version__  # noqa: E402
from .errors import MlxEdgeError, Terminated  # noqa: E402

COMMANDS = {
    "convert": ("convert", "convert a GGUF / ONNX / Hugging Face model into an MLX bundle"),
    "inspect": ("inspect", "describe a GGUF file or a converted bundle"),
    "generate": ("generate", "generate text from a prompt"),
    "chat": ("chat", "interactive multi-turn chat"),
    "eval": ("eval", "perplexity, KL divergence and top-1 agreement against a reference"),
    "sweep": ("sweep", "convert with several recipes and report size against quality"),
    "pull": ("pull", "add a model to the local store (path, catalogue name or hf.co/OWNER/REPO:QUANT)"),
    "list": ("list", "list the models in the local store"),
    "show": ("show", "describe a stored model (--modelfile: as a Modelfile)"),
    "rm": ("rm", "remove stored models (and the blobs no other model uses)"),
    "cp": ("cp", "give a stored model a second name (blobs shared)"),
    "create": ("create", "create a stored model from a Modelfile"),
    "verify": ("verify", "re-hash the store's blobs"),
    "audit": ("audit", "summarize the store's audit log"),
    "export": ("export", "export a model as a stateful Core ML package (--to coreml)"),
    "serve": ("serve", "serve models over OpenAI- and Ollama-compatible HTTP APIs"),
    "ps": ("ps", "list the models a running server has loaded"),
}


ENVIRONMENT = """environment:
  MLXEDGE_HOME          the local model store: pulled models, and GGUF files given by path to
                        generate/chat/serve, converted once (default ~/.mlxedge)
  MLXEDGE_CACHE         where the test and benchmark model assets are assembled
                        (default ~/.cache/mlxedge)
  OPENBLAS_NUM_THREADS  NumPy backend threads (default 1: faster on a shared CPU)
  MLXEDGE_MATMUL        NumPy backend kernels: auto (default: onnxruntime's where installed),
                        onnxruntime, onnxruntime-int8 (int8 activations: faster) or numpy"""


def _on_sigterm(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C: a convert in progress removes its temp dir, the cache its
    half-built entry."""
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mlxedge", description="GGUF/ONNX/HF -> MLX, and run it.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=ENVIRONMENT)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    if argv[0] not in COMMANDS:
        parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
    name = argv[0]
    module = importlib.import_module(f"mlxedge.{COMMANDS[name][0]}")
    cmd = argparse.ArgumentParser(prog=f"mlxedge {name}", description=COMMANDS[name][1])
    module.configure_parser(cmd)
    args = cmd.parse_args(argv[1:])
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return module.main(args) or 0
    except MlxEdgeError as e:
        message = " ".join(str(e).split("\n"))  # one line, whatever text a file put into the message
        print(f"mlxedge {name}: error: {message}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"mlxedge {name}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
