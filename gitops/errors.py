"""The two kinds of failure every stage reports, after kopf's.

A ``TemporaryError`` is worth retrying later (network, 5xx, 429, timeouts).
A ``PermanentError`` is not: retrying the same input fails the same way.
"""


class GitopsError(Exception):
    pass


class TemporaryError(GitopsError):
    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(GitopsError):
    pass
