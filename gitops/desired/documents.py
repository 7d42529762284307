"""YAML and JSON documents that remember the line of every value.

Validators report ``file:line: field: message``. PyYAML's composer keeps a mark
on every node, so documents are composed to nodes and built into plain Python
values here, recording a line for each path on the way. JSON is parsed with the
``json`` module first (so JSON's own rules and error positions apply) and then
composed as YAML, which is a superset, for the positions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from gitops.desired.errors import ValidationError

try:
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - libyaml is in PyYAML's wheels
    _Loader = yaml.SafeLoader

PathKey = tuple[str | int, ...]

_SCALAR_BUILDER = yaml.constructor.SafeConstructor()


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


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[PathKey, int] = {}
        self.errors: list[ValidationError] = []

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            try:
                return _SCALAR_BUILDER.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as exc:
                self.errors.append(
                    ValidationError(self.file, node.start_mark.line + 1, dotted(path), str(exc))
                )
                return None
        raise TypeError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.errors.append(
                    ValidationError(
                        self.file,
                        key_node.start_mark.line + 1,
                        dotted(path),
                        "YAML merge keys (<<) are not supported",
                    )
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(
                    ValidationError(
                        self.file, key_node.start_mark.line + 1, dotted(path), "keys must be scalars"
                    )
                )
                continue
            # A key keeps its source text: YAML 1.1 would read `on:` as True and `8080:` as a number.
            key_text = str(key_node.value)
            child = (*path, key_text)
            if key_text in result:
                self.errors.append(
                    ValidationError(
                        self.file,
                        key_node.start_mark.line + 1,
                        dotted(child),
                        f"duplicate key {key_text!r} (first defined on line {self.lines[child]})",
                    )
                )
                continue
            result[key_text] = self.build(value_node, child)
            # The key's own line is where an editor should jump for this field.
            self.lines[child] = key_node.start_mark.line + 1
        return result


def _syntax_error(file: str, exc: yaml.YAMLError) -> ValidationError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return ValidationError(file, mark.line + 1 if mark else None, "", message)


def _decode(file: str, content: bytes | str) -> tuple[str, ValidationError | None]:
    if isinstance(content, str):
        return content, None
    try:
        return content.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return "", ValidationError(file, None, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")


def load_yaml(file: str, content: bytes | str) -> tuple[list[Document], list[ValidationError]]:
    """All documents of a (multi-document) YAML file; empty documents are dropped."""
    text, problem = _decode(file, content)
    if problem:
        return [], [problem]
    documents: list[Document] = []
    errors: list[ValidationError] = []
    try:
        for index, node in enumerate(_compose_all(text)):
            if node is None:
                continue
            builder = _Builder(file)
            data = builder.build(node, ())
            errors.extend(builder.errors)
            if data is not None:
                documents.append(Document(file, index, data, builder.lines))
    except yaml.YAMLError as exc:
        return [], [_syntax_error(file, exc)]
    return documents, errors


def _compose_all(text: str) -> Iterator[yaml.Node | None]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


def load_json(file: str, content: bytes | str) -> tuple[list[Document], list[ValidationError]]:
    """One JSON document, with JSON's own syntax rules and YAML-derived line numbers."""
    text, problem = _decode(file, content)
    if problem:
        return [], [problem]
    duplicates: list[str] = []

    def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    try:
        data = json.loads(text, object_pairs_hook=reject_duplicates)
    except json.JSONDecodeError as exc:
        return [], [
            ValidationError(file, exc.lineno, "", f"JSON syntax error: {exc.msg} (column {exc.colno})")
        ]
    except RecursionError:
        return [], [ValidationError(file, None, "", "JSON is nested too deeply")]
    try:
        # Positions (and duplicate keys with their lines) from the YAML composer.
        documents, errors = load_yaml(file, text)
    except RecursionError:
        documents, errors = [], []
    # A duplicate key makes the two parsers keep different values; the revision is
    # rejected either way, so keep the version that knows its lines.
    if len(documents) == 1 and (documents[0].data == data or (duplicates and errors)):
        return documents, errors
    # Valid JSON that YAML 1.1 reads differently: keep the data, lose the lines.
    errors = [ValidationError(file, None, "", f"duplicate key {key!r}") for key in duplicates]
    return [Document(file, 0, data, {})], errors
