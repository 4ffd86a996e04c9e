"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class MlxEdgeError(Exception):
    """A problem with the user's input or environment (bad file, unsupported type, disk full...)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler wherever the program is, so that it unwinds as for Ctrl-C."""
