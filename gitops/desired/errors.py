from __future__ import annotations

from dataclasses import asdict, dataclass


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


class RevisionRejected(Exception):
    """A revision failed validation; nothing of it may be applied."""

    def __init__(self, errors: list[ValidationError]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = sorted(errors, key=lambda e: (e.file, e.line or 0, e.field, e.message))
