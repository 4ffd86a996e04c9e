"""`mlxedge chat --model PATH`: multi-turn chat in the terminal that keeps the KV cache between turns.

Each turn renders the whole conversation with the chat template, keeps the longest token prefix the
cache already holds, trims the cache to it and feeds only the tokens after it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

from .engine import Generation
from .errors import MlxEdgeError, Terminated
from .generate import add_model_args, load_from_args, sampling_from_args
from .sampling import SamplingParams


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ChatSession:
    """A conversation with a model whose KV cache carries over from turn to turn."""

    def __init__(self, model, system: str | None = None, max_tokens: int = 512, stop: Sequence[str] = (),
                 **sampling):
        if model.tokenizer.chat_template is None:
            raise MlxEdgeError("this model has no chat template, so it cannot chat")
        self.model = model
        self.system = system
        self.max_tokens = max_tokens
        self.stop = tuple(stop)
        self.params = SamplingParams(**sampling)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and the cache."""
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.cache = None
        self.cache_tokens: list[int] = []  # exactly the tokens the cache holds
        self.last: Generation | None = None

    def prepare(self, messages: list[dict]) -> list[int]:
        """Trim the cache to what it shares with `messages` rendered; return the tokens still to feed."""
        engine = self.model.engine
        ids = self.model.tokenizer.encode_chat(messages, add_generation_prompt=True)
        if self.cache is None:
            self.cache, self.cache_tokens = engine.make_cache(), []
        keep = min(common_prefix(self.cache_tokens, ids), len(ids) - 1)  # feed at least one token
        if not engine.trim_cache(self.cache, engine.cache_length(self.cache) - keep):
            self.cache, keep = engine.make_cache(), 0  # e.g. a rotating cache past its window
        self.cache_tokens = ids[:keep]
        return ids[keep:]

    def send(self, text: str, should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """Add a user message and stream the reply; the reply joins the conversation when done."""
        ids = self.model.tokenizer.encode_chat(self.messages + [{"role": "user", "content": text}])
        check = getattr(self.model, "check_context", None)
        if check is not None:  # before the message joins the conversation: a refused one is dropped
            check(len(ids))
        self.messages.append({"role": "user", "content": text})
        new_ids = self.prepare(self.messages)
        gen = Generation(self.model.engine, self.model.tokenizer, new_ids, self.params,
                         max_tokens=self.max_tokens, stop=self.stop, cache=self.cache,
                         history=list(self.cache_tokens), should_stop=should_stop)
        self.last = gen
        finished = False
        try:
            yield from gen
            finished = True
        except GeneratorExit:  # the caller stopped reading: we are between tokens, the cache is whole
            finished = True
            raise
        finally:
            self.messages.append({"role": "assistant", "content": gen.text})
            if finished:
                self.cache_tokens = gen.cache_tokens
            else:  # stopped inside a forward pass: the cache may be half-updated
                self.cache, self.cache_tokens = None, []


def _on_interrupt(stop_reply: threading.Event, signum, frame) -> None:
    """The first Ctrl-C ends the reply at the next token; a second one interrupts at once."""
    if stop_reply.is_set():
        signal.default_int_handler(signum, frame)
    stop_reply.set()


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p, max_tokens=512, raw_prompt_flag=False)


def main(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    session = ChatSession(model, system=args.system, max_tokens=args.max_tokens, stop=args.stop,
                          **sampling_from_args(args))
    interactive = sys.stdin.isatty()
    if interactive and not args.quiet:
        print(f"[{model.path.name}, {model.backend}] /reset starts over, /exit quits, "
              f"Ctrl-C stops a reply", file=sys.stderr)
    stop_reply = threading.Event()
    while True:
        try:
            line = input(">> " if interactive else "")
        except EOFError:
            break
        except Terminated:
            raise
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            session.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if not command:
            continue
        stop_reply.clear()
        previous = signal.signal(signal.SIGINT, lambda signum, frame: _on_interrupt(stop_reply, signum, frame))
        try:
            for piece in session.send(line, should_stop=stop_reply.is_set):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except MlxEdgeError as e:  # e.g. the conversation outgrew the context: say so, keep chatting
            print(f"[error: {e}]", file=sys.stderr)
            continue
        except Terminated:
            raise
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, previous)
        sys.stdout.write("\n")
        sys.stdout.flush()
        if not args.quiet and session.last is not None:
            print(f"[{session.last.stats.summary()}]", file=sys.stderr)
    return 0
