"""The one error type for bad user input: the CLI prints it as one line and exits with status 2."""


class PicolmError(Exception):
    """A problem with the user's input (file, field, option) rather than a bug in picolm."""

    exit_code = 2

    def __init__(self, message: str, *, path=None, line: int | None = None, field: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}")
        self.message, self.path, self.line, self.field = message, path, line, field


def first_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` (a library's error can run to pages), for a one-line error."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:limit]}" if line else type(exc).__name__


class TrainingStopped(PicolmError):
    """Training cannot go on (a NaN or infinite loss); the last good checkpoint is kept. Exit status 1."""

    exit_code = 1
