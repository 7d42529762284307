"""YAML and JSON documents that remember the line of every value, read within ``Limits``.

Validators report ``file:line: field: message``. Documents are built straight from
the YAML parser's events into plain Python values, recording a line for each path
on the way. Building from events, rather than letting PyYAML compose a node graph
first, is what makes hostile input cheap to refuse:

- nesting is counted as it opens, so a document nested 50,000 deep is refused at
  the limit instead of overflowing the C stack of libyaml's recursive composer;
- every value built counts against the file's node budget, and each use of an
  alias counts its whole anchored value again, so an alias bomb ("billion laughs")
  is refused after a bounded amount of work, and a recursive alias is an error;
- scalars are converted one at a time, and whatever the conversion raises (a year
  0, a number of 5,000 digits, ``!!bool maybe``) becomes an error of that value.

JSON is parsed with the ``json`` module too (so JSON's own rules and error
positions apply); the YAML pass, YAML being a superset, supplies the positions.
"""

from __future__ import annotations

import copy
import enum
import json
import re
from _json import scanstring as _scan_json_string  # json's C string scanner, linear in the string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from gitops.desired.errors import ValidationError
from gitops.desired.limits import DEFAULT_LIMITS, Limits, setting_hint

try:
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - libyaml is in PyYAML's wheels
    _Loader = yaml.SafeLoader

PathKey = tuple[str | int, ...]

_YAML_TAG: Final = "tag:yaml.org,2002:"
_STR_TAG: Final = _YAML_TAG + "str"
_INT_TAG: Final = _YAML_TAG + "int"
_MERGE_TAG: Final = _YAML_TAG + "merge"
# The scalar types a configuration file may hold; collection tags (!!set, !!omap) on a
# scalar, Python tags and local tags have no meaning for Sluice.
_SCALAR_TAGS: Final = frozenset(
    _YAML_TAG + name for name in ("null", "bool", "int", "float", "str", "binary", "timestamp")
)
_COLLECTION_TAGS: Final = frozenset((None, "!", _YAML_TAG + "seq", _YAML_TAG + "map"))
_SCALAR_BUILDER: Final = yaml.constructor.SafeConstructor()

_RESOLVER: Final = yaml.resolver.Resolver()
# Python refuses to convert integers of more than 4,300 digits, and a YAML 1.1
# sexagesimal integer (1:2:3:...) costs quadratic time in its length.
MAX_NUMBER_CHARS: Final = 100
# What YAML 1.1 may hold (its "printable" set); libyaml reports anything else
# without a line. JSON forbids the C0 controls other than tab, LF and CR.
_NOT_YAML: Final = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NOT_JSON: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def dotted(path: PathKey) -> str:
    """``("data", "a.b", 0)`` -> ``data["a.b"][0]``; plain keys are joined with dots."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and all(c.isalnum() or c in "-_" for c in part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


@dataclass(frozen=True)
class Document:
    file: str
    index: int  # position in a multi-document YAML file, from 0
    data: Any
    lines: Mapping[PathKey, int] = field(default_factory=dict, repr=False, compare=False)

    def line_of(self, *path: str | int) -> int | None:
        """Line of the value at ``path``, or of its nearest ancestor that has one."""
        key: PathKey = tuple(path)
        while True:
            line = self.lines.get(key)
            if line is not None or not key:
                return line
            key = key[:-1]

    def error(self, path: PathKey, message: str) -> ValidationError:
        return ValidationError(self.file, self.line_of(*path), dotted(path), message)


@dataclass
class Usage:
    """What reading one file built; ``parse_file`` keeps ``nodes`` to bound a whole revision."""

    nodes: int = 0
    aliases: int = 0
    chars: int = 0  # text of the scalars built, each use of an alias counting its anchored text again


class _Refused(Exception):
    """The file went past a limit (or holds a recursive alias): it is rejected as a whole."""

    def __init__(self, error: ValidationError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Anchored:
    value: Any
    nodes: int  # nodes an alias to it builds again
    height: int  # nesting levels it adds where an alias puts it
    key_text: str | None  # the source text of an anchored scalar, for use as a mapping key
    chars: int  # the text an alias to it builds again


class _Expect(enum.Enum):
    KEY = enum.auto()
    KEY_COLLECTION = enum.auto()  # a list or mapping used as a key: an error, built only to skip it
    VALUE = enum.auto()


@dataclass(eq=False, slots=True)
class _Frame:
    """A list or mapping being built; ``path`` is None when it is built only to be thrown away."""

    value: list[Any] | dict[str, Any]
    is_map: bool
    path: PathKey | None
    anchor: str | None
    nodes_before: int
    chars_before: int
    height: int = 1
    expect: _Expect = _Expect.KEY
    key: str | None = None  # for a mapping expecting a value: its key, None to throw the value away


class _Builder:
    """Turns the events of one file's documents into values, within ``limits``."""

    def __init__(self, file: str, limits: Limits, usage: Usage) -> None:
        self.file = file
        self.limits = limits
        self.usage = usage
        self.errors: list[ValidationError] = []
        self._begin_document()

    def _begin_document(self) -> None:
        self.lines: dict[PathKey, int] = {}
        self.anchors: dict[str, _Anchored] = {}
        self.open_anchors: set[str] = set()
        self.stack: list[_Frame] = []
        self.root: Any = None

    def documents(self, loader: yaml.SafeLoader) -> list[Document]:
        handlers: dict[type[yaml.Event], Callable[[Any], None]] = {
            yaml.ScalarEvent: self._on_scalar,
            yaml.AliasEvent: self._on_alias,
            yaml.SequenceStartEvent: self._open,
            yaml.MappingStartEvent: self._open,
            yaml.SequenceEndEvent: self._close,
            yaml.MappingEndEvent: self._close,
        }
        scalar_event, on_scalar = yaml.ScalarEvent, self._on_scalar
        documents: list[Document] = []
        next_event: Callable[[], yaml.Event] = loader.get_event
        next_event()  # StreamStartEvent
        index = 0
        while not loader.check_event(yaml.StreamEndEvent):
            next_event()  # DocumentStartEvent
            self._begin_document()
            event = next_event()
            # Every value of every file passes here. Scalars are most events: they skip the handler lookup.
            while type(event) is not yaml.DocumentEndEvent:
                if type(event) is scalar_event:
                    on_scalar(event)
                else:
                    handlers[type(event)](event)
                event = next_event()
            if self.root is not None:
                documents.append(Document(self.file, index, self.root, self.lines))
            index += 1
        return documents

    def _on_scalar(self, event: yaml.ScalarEvent) -> None:
        """A plain or quoted scalar without tag or anchor inside a collection (nearly every value)
        is built here inline; anything else takes the general path (``_scalar``, ``_scalar_key``).
        Both count, record lines and report exactly the same."""
        mark = event.start_mark
        line = mark.line + 1 if mark else 0
        stack = self.stack
        if not stack or event.tag is not None or event.anchor is not None:
            self._on_any_scalar(event, line)
            return
        parent = stack[-1]
        text: str = event.value
        usage = self.usage
        if usage.nodes >= self.limits.max_file_nodes:
            self._count(line)  # one more is past the budget: this raises, with the refusal's message
        if parent.is_map and parent.expect is _Expect.KEY:
            if text == "<<" and event.implicit[0]:
                self._on_any_scalar(event, line)  # counts it
                return
            usage.nodes += 1
            usage.chars += len(text)
            self._key(text, line)
            return
        usage.nodes += 1
        usage.chars += len(text)
        # Text unless plain and YAML reads it otherwise (a number, boolean, null or date): that is
        # built below, by the general path's conversion and its errors, from the tag found here.
        tag = _plain_tag(text) if event.implicit[0] else _STR_TAG
        path = parent.path
        child: PathKey | None = None
        if path is not None:
            if not parent.is_map:
                child = (*path, len(parent.value))
                self.lines.setdefault(child, line)
            elif parent.key is not None:
                child = (*path, parent.key)  # its line is the key's, recorded by ``_key``
        value = text if tag == _STR_TAG else self._construct(event, line, child, resolved=tag)
        if parent.is_map:
            if parent.key is not None:
                parent.value[parent.key] = value  # type: ignore[call-overload]
            parent.expect = _Expect.KEY
        else:
            parent.value.append(value)  # type: ignore[union-attr]

    def _on_any_scalar(self, event: yaml.ScalarEvent, line: int) -> None:
        if self._expecting_key():
            self._scalar_key(event, line)
        else:
            self._scalar(event, line)

    def _on_alias(self, event: yaml.AliasEvent) -> None:
        self._alias(event.anchor or "", _line(event))

    def _expecting_key(self) -> bool:
        if not self.stack:
            return False
        parent = self.stack[-1]
        return parent.is_map and parent.expect is _Expect.KEY

    # -- budget ------------------------------------------------------------------------

    def _refuse(self, line: int | None, message: str) -> _Refused:
        return _Refused(ValidationError(self.file, line, "", message))

    def _count(self, line: int, nodes: int = 1) -> None:
        self.usage.nodes += nodes
        if self.usage.nodes > self.limits.max_file_nodes:
            aliases = " (each use of an alias counts its whole value again)" if self.usage.aliases else ""
            raise self._refuse(
                line,
                f"the file builds more than {self.limits.max_file_nodes:,} values{aliases}"
                f"{setting_hint('max_file_nodes')}",
            )

    def _count_text(self, line: int, chars: int) -> None:
        """An alias builds its anchored text again: a long string's uses, each one value, made a file of
        2 MB a flag set of 2 GB. Without aliases the file's own text bounds it; with them, twice that."""
        self.usage.chars += chars
        bound = 2 * self.limits.max_file_bytes
        if self.usage.chars > bound:
            raise self._refuse(
                line,
                f"the file's values hold more than {bound:,} characters of text (each use of an alias "
                f"counts its whole value again){setting_hint('max_file_bytes')}",
            )

    def _check_depth(self, line: int, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise self._refuse(
                line,
                f"lists and mappings are nested more than {self.limits.max_depth} deep"
                f"{setting_hint('max_depth')}",
            )

    # -- where a value goes ---------------------------------------------------------------

    def _child_path(self) -> PathKey | None:
        """The path of the value that starts now, or None when it will be thrown away."""
        if not self.stack:
            return ()
        parent = self.stack[-1]
        if parent.path is None:
            return None
        if not parent.is_map:
            return (*parent.path, len(parent.value))
        if parent.expect is _Expect.VALUE and parent.key is not None:
            return (*parent.path, parent.key)
        return None

    def _attach(self, value: Any, height: int) -> None:
        if not self.stack:
            self.root = value
            return
        parent = self.stack[-1]
        if isinstance(parent.value, list):
            parent.value.append(value)
        elif parent.expect is _Expect.VALUE:
            if parent.key is not None:
                parent.value[parent.key] = value
            parent.expect = _Expect.KEY
        else:  # the key collection ended: its value follows, and is thrown away
            parent.expect, parent.key = _Expect.VALUE, None
        if height >= parent.height:
            parent.height = height + 1

    def _remember(self, anchor: str | None, anchored: _Anchored) -> None:
        if anchor is not None:
            self.anchors[anchor] = anchored
            self.open_anchors.discard(anchor)

    # -- events ---------------------------------------------------------------------------

    def _scalar(self, event: yaml.ScalarEvent, line: int) -> None:
        self._count(line)
        self.usage.chars += len(event.value)
        path = self._child_path()
        if path is not None:
            self.lines.setdefault(path, line)
        value = self._construct(event, line, path)
        if event.anchor is not None:
            self._remember(event.anchor, _Anchored(value, 1, 0, str(event.value), len(event.value)))
        self._attach(value, 0)

    def _scalar_key(self, event: yaml.ScalarEvent, line: int) -> None:
        self._count(line)
        self.usage.chars += len(event.value)
        if event.anchor is not None:
            value = self._construct(event, line, None)
            self._remember(event.anchor, _Anchored(value, 1, 0, str(event.value), len(event.value)))
        tag = event.tag
        if tag is None and event.value == "<<":
            tag = _resolve(event)
        if tag == _MERGE_TAG:
            self._key_error(line, "YAML merge keys (<<) are not supported")
            return
        if tag not in (None, "!") and tag not in _SCALAR_TAGS:
            # As on a value: `!vault k: v` loaded as the key "k", which another YAML reader reads otherwise.
            self._key_error(line, f"the tag {tag!r} is not supported on a key; write a plain key")
            return
        self._key(str(event.value), line)

    def _key(self, key_text: str, line: int) -> None:
        # A key keeps its source text: YAML 1.1 would read `on:` as True and `8080:` as a number.
        mapping = self.stack[-1]
        mapping.expect, mapping.key = _Expect.VALUE, None
        if mapping.path is None:
            return
        child = (*mapping.path, key_text)
        if key_text in mapping.value:
            first = self.lines.get(child)
            self.errors.append(
                ValidationError(
                    self.file,
                    line,
                    dotted(child),
                    f"duplicate key {key_text!r}" + (f" (first defined on line {first})" if first else ""),
                )
            )
            return
        # The key's own line is where an editor should jump for this field.
        self.lines[child] = line
        mapping.key = key_text

    def _key_error(self, line: int, message: str) -> None:
        mapping = self.stack[-1]
        mapping.expect, mapping.key = _Expect.VALUE, None
        if mapping.path is not None:
            self.errors.append(ValidationError(self.file, line, dotted(mapping.path), message))

    def _alias(self, name: str, line: int) -> None:
        if name in self.open_anchors:
            raise self._refuse(
                line, f"the alias *{name} is inside the value it refers to (a recursive alias)"
            )
        anchored = self.anchors.get(name)
        if anchored is None:
            raise self._refuse(line, f"the alias *{name} refers to no anchor &{name} defined before it")
        self.usage.aliases += 1
        if self.usage.aliases > self.limits.max_aliases:
            raise self._refuse(
                line,
                f"the file uses aliases more than {self.limits.max_aliases:,} times"
                f"{setting_hint('max_aliases')}",
            )
        self._count(line, anchored.nodes)
        self._count_text(line, anchored.chars)
        self._check_depth(line, len(self.stack) + anchored.height)
        if self._expecting_key():
            if anchored.key_text is None:
                self._key_error(line, "keys must be scalars")
            else:
                self._key(anchored.key_text, line)
            return
        path = self._child_path()
        if path is not None:
            self.lines.setdefault(path, line)
        # A copy, as if the anchored text were written here: nothing downstream shares state.
        value = copy.deepcopy(anchored.value) if anchored.height else anchored.value
        self._attach(value, anchored.height)

    def _open(self, event: yaml.CollectionStartEvent) -> None:
        line = _line(event)
        self._count(line)
        self._check_depth(line, len(self.stack) + 1)
        if self._expecting_key():
            self._key_error(line, "keys must be scalars")
            self.stack[-1].expect = _Expect.KEY_COLLECTION
            path = None
        else:
            path = self._child_path()
            if path is not None:
                self.lines.setdefault(path, line)
        if event.tag not in _COLLECTION_TAGS and path is not None:
            problem = f"the tag {event.tag!r} is not supported; write a plain list or mapping"
            self.errors.append(ValidationError(self.file, line, dotted(path), problem))
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        is_map = type(event) is yaml.MappingStartEvent
        value: list[Any] | dict[str, Any] = {} if is_map else []
        self.stack.append(_Frame(value, is_map, path, event.anchor, self.usage.nodes, self.usage.chars))

    def _close(self, _: yaml.CollectionEndEvent) -> None:
        frame = self.stack.pop()
        if frame.anchor is not None:
            nodes = self.usage.nodes - frame.nodes_before + 1
            chars = self.usage.chars - frame.chars_before
            self._remember(frame.anchor, _Anchored(frame.value, nodes, frame.height, None, chars))
        self._attach(frame.value, frame.height)

    # -- scalars --------------------------------------------------------------------------

    def _construct(
        self, event: yaml.ScalarEvent, line: int, path: PathKey | None, *, resolved: str | None = None
    ) -> Any:
        """``resolved``: the tag of an untagged plain scalar, when the caller has it already."""
        tag = event.tag
        if tag is None and not event.implicit[0]:
            # Quoted, a literal or a folded block: text, as YAML resolves it, however long or digit-like.
            return event.value
        if tag is None or tag == "!":
            tag = resolved or _resolve(event)
        if tag == _STR_TAG:
            return event.value
        problem = None
        if tag not in _SCALAR_TAGS:
            problem = f"the tag {tag!r} is not supported; write a plain value"
        elif tag == _INT_TAG and len(event.value) > MAX_NUMBER_CHARS:
            problem = f"a number of {len(event.value):,} characters is too long; quote it if it is text"
        else:
            node = yaml.ScalarNode(tag, event.value, None, None, event.style)
            try:
                return _SCALAR_BUILDER.yaml_constructors[tag](_SCALAR_BUILDER, node)
            except Exception as exc:  # PyYAML's converters meet hostile text here: any failure is the text's
                kind = tag.removeprefix(_YAML_TAG)
                reason = "" if isinstance(exc, LookupError) else f" ({exc})"
                problem = f"{_clip(event.value)!r} is not a valid {kind}{reason}; quote it if it is text"
        if path is not None:
            self.errors.append(ValidationError(self.file, line, dotted(path), problem))
        return None


def _line(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark else 0


# No number, boolean, null or date is this long: longer plain scalars are text, and the resolver's
# patterns (some backtrack, such as YAML 1.1's base-60 integers) never see megabytes of it.
MAX_RESOLVED_CHARS = 1000
_LONG_INTEGER = re.compile(r"[-+]?[0-9_]+")


# The tags of short plain scalars met before: a revision repeats the same few values ("true",
# "info", "v1") thousands of times, and YAML's resolver tries up to a dozen patterns on each.
_PLAIN_TAG_CACHE: dict[str, str] = {}
_PLAIN_TAG_CACHE_ENTRIES: Final = 4096
_PLAIN_TAG_CACHE_CHARS: Final = 64


def _plain_tag(text: str) -> str:
    """The tag YAML 1.1 gives an untagged plain scalar; ``_resolve`` for one, remembered when short."""
    tag = _PLAIN_TAG_CACHE.get(text)
    if tag is None:
        tag = _resolve_text(text, (True, False))
        if len(text) <= _PLAIN_TAG_CACHE_CHARS:
            if len(_PLAIN_TAG_CACHE) >= _PLAIN_TAG_CACHE_ENTRIES:
                _PLAIN_TAG_CACHE.clear()  # bounded: whatever a hostile file holds, 4,096 short strings
            _PLAIN_TAG_CACHE[text] = tag
    return tag


def _resolve(event: yaml.ScalarEvent) -> str:
    """The tag YAML 1.1 gives an untagged scalar (int for 8080, bool for on, str for text)."""
    return _resolve_text(event.value, event.implicit)


def _resolve_text(text: str, implicit: tuple[bool, bool]) -> str:
    if len(text) > MAX_RESOLVED_CHARS:
        return _INT_TAG if _LONG_INTEGER.fullmatch(text) else _STR_TAG
    tag: str = _RESOLVER.resolve(yaml.ScalarNode, text, implicit)  # type: ignore[no-untyped-call]
    return tag


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# -- loading -----------------------------------------------------------------------------------


def _decode(
    file: str, content: bytes | str, limits: Limits, not_allowed: re.Pattern[str]
) -> tuple[str, ValidationError | None]:
    size = len(content.encode() if isinstance(content, str) else content)
    if size > limits.max_file_bytes:
        return "", ValidationError(
            file,
            None,
            "",
            f"the file is {size:,} bytes; files are read up to {limits.max_file_bytes:,} bytes"
            f"{setting_hint('max_file_bytes')}",
        )
    if isinstance(content, str):
        text = content
    else:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = content.count(b"\n", 0, exc.start) + 1
            return "", ValidationError(file, line, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")
    if match := not_allowed.search(text):
        line = text.count("\n", 0, match.start()) + 1
        column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
        return "", ValidationError(
            file,
            line,
            "",
            f"the character U+{ord(match[0]):04X} at column {column} is not allowed in this file "
            "(control characters and NUL bytes never are)",
        )
    return text, None


def _syntax_error(file: str, exc: yaml.YAMLError) -> ValidationError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return ValidationError(file, mark.line + 1 if mark else None, "", message)


def _build(
    file: str, text: str, limits: Limits, usage: Usage
) -> tuple[list[Document], list[ValidationError]]:
    """Raises ``_Refused`` past a limit and ``yaml.YAMLError`` on a syntax error."""
    builder = _Builder(file, limits, usage)
    loader = _Loader(text)
    try:
        documents = builder.documents(loader)
    finally:
        loader.dispose()
    return documents, builder.errors


def load_yaml(
    file: str, content: bytes | str, *, limits: Limits = DEFAULT_LIMITS, usage: Usage | None = None
) -> tuple[list[Document], list[ValidationError]]:
    """All documents of a (multi-document) YAML file; empty documents are dropped."""
    text, problem = _decode(file, content, limits, _NOT_YAML)
    if problem:
        return [], [problem]
    try:
        return _build(file, text, limits, usage if usage is not None else Usage())
    except _Refused as refused:
        return [], [refused.error]
    except yaml.YAMLError as exc:
        return [], [_syntax_error(file, exc)]
    except UnicodeError as exc:  # libyaml handing back text Python cannot encode
        return [], [ValidationError(file, None, "", f"YAML syntax error: {exc}")]


def load_json(
    file: str, content: bytes | str, *, limits: Limits = DEFAULT_LIMITS, usage: Usage | None = None
) -> tuple[list[Document], list[ValidationError]]:
    """One JSON document, with JSON's own syntax rules and YAML-derived line numbers."""
    usage = usage if usage is not None else Usage()
    text, problem = _decode(file, content, limits, _NOT_JSON)
    if problem:
        return [], [problem]
    # The YAML pass first: it enforces the limits (with a line) before json builds anything.
    documents: list[Document] = []
    errors: list[ValidationError] = []
    used_before = Usage(usage.nodes, usage.aliases, usage.chars)
    try:
        documents, errors = _build(file, text, limits, usage)
    except _Refused as refused:
        return [], [refused.error]
    except (yaml.YAMLError, UnicodeError):
        # Valid JSON that libyaml cannot read (a key over 1,024 characters, say): json's data, no lines.
        usage.nodes, usage.aliases, usage.chars = used_before.nodes, used_before.aliases, used_before.chars
        if problem := _too_many_json_values(file, text, limits):
            return [], [problem]
    data, duplicates, problem = _json_data(file, text)
    if problem:
        # A number too long for Python is a value error; the YAML pass has it with its line.
        return [], (errors if problem.line is None and errors else [problem])
    # A duplicate key makes the two parsers keep different values; the revision is
    # rejected either way, so keep the version that knows its lines.
    if len(documents) == 1 and (documents[0].data == data or (duplicates and errors)):
        return documents, errors
    # Valid JSON that YAML 1.1 reads differently, or cannot read: keep json's data, lose the lines.
    nodes, problem = _check_json_data(file, data, limits)
    if problem:
        return [], [problem]
    if not documents:
        usage.nodes += nodes
    errors = [ValidationError(file, None, "", f"duplicate key {_clip(key)!r}") for key in duplicates]
    # Where YAML read the same shape (NaN or 1e5 read as text, say), its lines still hold.
    lines = documents[0].lines if len(documents) == 1 and not duplicates else {}
    return [Document(file, 0, data, lines)], errors


def _too_many_json_values(file: str, text: str, limits: Limits) -> ValidationError | None:
    """Checked before ``json`` builds anything. Outside strings, every value but the first
    follows a "[", "," or ":", so counting those bounds what json would build; strings are
    skipped with json's own scanner (a regular expression would backtrack on escapes)."""
    bound, position = 1, 0
    while bound <= limits.max_file_nodes:
        quote = text.find('"', position)
        end = len(text) if quote < 0 else quote
        bound += sum(text.count(mark, position, end) for mark in "[,:")
        if quote < 0:
            break
        try:
            _, position = _scan_json_string(text, quote + 1, True)
        except ValueError:
            break  # json.loads reports the broken string
    if bound > limits.max_file_nodes:
        return ValidationError(
            file,
            None,
            "",
            f"the file holds more than {limits.max_file_nodes:,} values{setting_hint('max_file_nodes')}",
        )
    return None


def _json_data(file: str, text: str) -> tuple[Any, list[str], ValidationError | None]:
    duplicates: list[str] = []

    def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=reject_duplicates), duplicates, None
    except json.JSONDecodeError as exc:
        message = f"JSON syntax error: {exc.msg} (column {exc.colno})"
        return None, duplicates, ValidationError(file, exc.lineno, "", message)
    except RecursionError:
        return None, duplicates, ValidationError(file, None, "", "JSON is nested too deeply")
    except ValueError as exc:  # a number of more than 4,300 digits
        return None, duplicates, ValidationError(file, None, "", f"JSON value error: {_clip(str(exc), 120)}")


def _check_json_data(file: str, data: Any, limits: Limits) -> tuple[int, ValidationError | None]:
    """The values json built on its own (no YAML pass vouched for them), and what of the limits
    they break; also the lone surrogates JSON's escapes allow and no UTF-8 text can hold."""
    nodes = 0
    pending: list[tuple[Any, int]] = [(data, 0)]
    while pending:
        value, depth = pending.pop()
        nodes += 1
        problem = None
        if nodes > limits.max_file_nodes:
            problem = (
                f"the file holds more than {limits.max_file_nodes:,} values{setting_hint('max_file_nodes')}"
            )
        elif isinstance(value, str) and _SURROGATE.search(value):
            problem = f"{_clip(value)!r} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff)"
        elif isinstance(value, int) and value.bit_length() > 300 and len(str(value)) > MAX_NUMBER_CHARS:
            # As the YAML pass refuses it: a reader with 64-bit numbers (flagd's Go, JavaScript) cannot.
            problem = f"a number of {len(str(value)):,} characters is too long; quote it if it is text"
        elif isinstance(value, dict | list) and depth + 1 > limits.max_depth:
            problem = (
                f"lists and mappings are nested more than {limits.max_depth} deep{setting_hint('max_depth')}"
            )
        if problem:
            return nodes, ValidationError(file, None, "", problem)
        if isinstance(value, dict):
            pending.extend((child, depth + 1) for child in (*value, *value.values()))
        elif isinstance(value, list):
            pending.extend((child, depth + 1) for child in value)
    return nodes, None
