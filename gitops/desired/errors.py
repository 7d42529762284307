from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Final

# A rejected revision reports this many errors at most, and says how many it left out:
# enough to fix a revision by, little enough to store, show and notify.
MAX_REPORTED_ERRORS: Final = 100
# One file keeps this many of its errors, the first found, and counts the rest (``ErrorTally``): each
# error held costs up to a few KB, and one error per value or two would otherwise let a revision at its
# value limits hold hundreds of MB of them.
MAX_FILE_ERRORS: Final = MAX_REPORTED_ERRORS
# Keys and values quoted in messages come from the repository; a megabyte-long key must not
# become a megabyte-long error in the database, on the dashboard and in every notification.
MAX_FILE_CHARS: Final = 300
MAX_FIELD_CHARS: Final = 200
MAX_MESSAGE_CHARS: Final = 1000


def clipped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters from its middle, where a quoted value usually is:
    the start says what is wrong, the end how to fix it."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    return text[: limit - tail - 3] + " … " + text[-tail:]


@dataclass(frozen=True, order=True)
class ValidationError:
    """One problem in a revision, located as precisely as the file format allows.

    ``field`` is a dotted path inside the document (``data.LOG_LEVEL``,
    ``flags.new-checkout.defaultVariant``); empty when the whole file is at fault.
    """

    file: str
    line: int | None
    field: str
    message: str

    def __post_init__(self) -> None:
        for name, limit in (
            ("file", MAX_FILE_CHARS),
            ("field", MAX_FIELD_CHARS),
            ("message", MAX_MESSAGE_CHARS),
        ):
            value = getattr(self, name)
            if len(value) > limit:
                object.__setattr__(self, name, clipped(value, limit))

    def __str__(self) -> str:
        location = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{location}: {self.field}: {self.message}" if self.field else f"{location}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, object]) -> ValidationError:
        line = value.get("line")
        return cls(
            file=str(value["file"]),
            line=int(line) if isinstance(line, int) else None,
            field=str(value.get("field", "")),
            message=str(value["message"]),
        )


class ErrorTally:
    """One file's errors as its checks find them: the first ``MAX_FILE_ERRORS`` kept, the rest counted,
    and said in one more error of the file (``listed``). A check whose message costs work to build asks
    ``full`` first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.kept: list[ValidationError] = []
        self.unlisted = 0

    @property
    def full(self) -> bool:
        return len(self.kept) >= MAX_FILE_ERRORS

    @property
    def failed(self) -> bool:
        return bool(self.kept or self.unlisted)

    def add(self, error: ValidationError) -> None:
        if self.full:
            self.unlisted += 1
        else:
            self.kept.append(error)

    def extend(self, errors: list[ValidationError]) -> None:
        for error in errors:
            self.add(error)

    def listed(self) -> list[ValidationError]:
        """The errors kept, and one more that says how many were not (for a file checked on its own: a
        revision counts them among those it leaves out, ``ParsedFile.unlisted``)."""
        if not self.unlisted:
            return list(self.kept)
        last = self.kept[-1]
        more = f"... and {self.unlisted:,} more errors in this file not shown"
        return [*self.kept, ValidationError(self.file, last.line, "", more)]


class RevisionRejected(Exception):
    """A revision failed validation; nothing of it may be applied."""

    def __init__(
        self, errors: list[ValidationError], *, unlisted: int = 0, stopped: ValidationError | None = None
    ) -> None:
        """``unlisted``: errors found past those the checks keep, counted among those left out.
        ``stopped``: why the checks stopped before the end, said last however many errors are left out."""
        super().__init__(f"{len(errors) + unlisted} validation error(s)")
        ordered = sorted(errors, key=lambda e: (e.file, e.line or 0, e.field, e.message))
        shown = ordered[:MAX_REPORTED_ERRORS]
        left_out = len(ordered) - len(shown) + unlisted
        if left_out and shown:
            last = shown[-1]
            shown.append(
                ValidationError(last.file, last.line, "", f"... and {left_out:,} more errors not shown")
            )
        self.errors = [*shown, stopped] if stopped else shown


def source_path_error(shown: str, kind: str | None) -> ValidationError:
    """The revision's refusal when the source's path (``shown``, from the repository's root) is gone from
    the commit (``kind`` None) or is ``kind`` there ("a symlink", "a file", "a submodule"): the worker's,
    and ``gitops validate``'s for the same commit."""
    found = "does not exist in this commit" if kind is None else f"is {kind} in this commit, not a directory"
    advice = "restore the directory, or have an administrator change the source's path (update-source --path)"
    return ValidationError(shown, None, "", f"the source's path {found}; {advice}")
