"""The one exception type users see: a one-line message naming the file/parameter and the fix."""


class WorkbenchError(Exception):
    """A user-facing error. ``str(err)`` is one line: what is wrong, where, and what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
