"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class MlxEdgeError(Exception):
    """A problem with the user's input or environment (bad file, unsupported type, disk full...).

    The message is always one printable line: text taken from a file (a key, a tensor name) may hold
    newlines or control characters, which are shown escaped."""

    def __init__(self, message: str = "", *args):
        if isinstance(message, str) and not message.isprintable():
            message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        super().__init__(message, *args)


class OutOfMemory(MlxEdgeError):
    """The machine cannot hold what was asked (a model in every weight mode): nothing is wrong with
    the input, so nothing made from it (a cache entry) is thrown away."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler wherever the program is, so that it unwinds as for Ctrl-C."""
