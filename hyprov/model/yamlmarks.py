"""Safe YAML loading that remembers where every value came from.

PyYAML's constructors drop positions and silently keep the last of duplicate
keys. We compose the node graph (libyaml's C composer when available), then
build plain Python values ourselves, recording the line and column of every
value and key, refusing duplicate keys and non-standard tags, and bounding alias
expansion so a "billion laughs" document fails fast instead of hanging. Nesting
is bounded too, before composing: libyaml's composer recurses in C and crashes
the interpreter (SIGSEGV) on a few ten thousand nested brackets.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from hyprov.errors import Problem

Path_ = tuple[str | int, ...]

try:  # libyaml's composer is ~10x faster on large topologies
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - pure-Python fallback
    _Loader = yaml.SafeLoader

MAX_ALIAS_EXPANSION = 100_000  # nodes reached through aliases, in total
MAX_DEPTH = 64  # nested mappings/lists; a topology needs about 6

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null")}
_SCALAR_TAGS.add(_STD + "timestamp")
_STR = _STD + "str"
_constructor = yaml.SafeLoader("")  # only its scalar constructors are used


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    col: int  # 1-based
    raw: str | None = None  # the scalar's source text, for hints ("3.10", "off")


@dataclass
class Document:
    """A loaded document: plain data plus where each part came from."""

    file: str
    data: Any
    # the yaml nodes themselves: a Mark is made only when a problem needs one
    # (building 90,000 Marks up front cost a fifth of loading a 10,000-DP file)
    values: dict[Path_, yaml.Node] = field(default_factory=dict)
    keys: dict[Path_, yaml.Node] = field(default_factory=dict)
    # set by the fast path, which records no positions: the text is composed again
    # (once) the first time a problem needs a line and column
    text: str | None = field(default=None, repr=False)
    # also from the fast path (None: not known): whether any value is a float, and whether
    # any key or value holds a control character or ends with a backslash, so validation
    # can skip two walks over a 10,000-node document
    floats: bool | None = None
    odd_text: bool | None = None

    def _locate(self) -> None:
        if self.text is not None:
            text, self.text = self.text, None
            node = yaml.compose(text, Loader=_Loader)
            if node is not None:
                _Builder(self).build(node, ())

    def where(self, path: Path_, *, key: bool = False) -> Mark:
        """Location of the value (or key) at ``path``; falls back to the nearest parent."""
        self._locate()
        if key and path in self.keys:
            return mark_of(self.keys[path])
        p = tuple(path)
        while p:
            if p in self.values:
                return mark_of(self.values[p])
            p = p[:-1]
        root = self.values.get(())
        return mark_of(root) if root is not None else Mark(1, 1)


    def problem(self, path: Path_, message: str, hint: str | None = None, *, key: bool = False) -> Problem:
        m = self.where(path, key=key)
        return Problem(self.file, m.line, m.col, message, hint)


def mark_of(node: yaml.Node) -> Mark:
    raw = node.value if isinstance(node, yaml.ScalarNode) else None
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1, raw)


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self.expanded = 0
        self.anchors_seen: set[int] = set()
        self.in_progress: set[int] = set()

    def _mark(self, node: yaml.Node) -> Mark:
        return mark_of(node)

    def _err(self, node: yaml.Node, message: str, hint: str | None = None) -> None:
        m = self._mark(node)
        self.problems.append(Problem(self.doc.file, m.line, m.col, message, hint))

    def build(self, node: yaml.Node, path: Path_) -> Any:
        nid = id(node)
        if nid in self.anchors_seen:
            # a node reached twice is an alias: count what it expands to
            self.expanded += 1
            if self.expanded > MAX_ALIAS_EXPANSION:
                raise _TooBig(node)
        if nid in self.in_progress:
            raise _Recursive(node)
        if isinstance(node, yaml.ScalarNode):
            self.anchors_seen.add(nid)
            self.doc.values[path] = node
            return self._scalar(node)
        self.in_progress.add(nid)
        self.doc.values[path] = node
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _STD + "seq":
                    self._err(node, f"unsupported YAML tag {node.tag}", "hyprov reads plain YAML only")
                    return None
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
        finally:
            self.in_progress.discard(nid)
            self.anchors_seen.add(nid)
        return None  # pragma: no cover

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> Any:
        if node.tag != _STD + "map":
            self._err(node, f"unsupported YAML tag {node.tag}", "hyprov reads plain YAML only")
            return None
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == _STD + "merge":
                self._err(knode, "YAML merge keys (<<) are not supported", "repeat the keys, or use 'defaults:'")
                continue
            if not isinstance(knode, yaml.ScalarNode):
                self._err(knode, "a mapping key must be a plain string")
                continue
            key = self._scalar(knode)
            if not isinstance(key, str):
                key = knode.value  # 'on:' / '1:' as keys: keep their text, the schema judges them
            if key in out:
                first = mark_of(self.doc.keys[(*path, key)])
                self._err(knode, f"duplicate key '{key}' (first at line {first.line})",
                          "YAML keeps only the last one; remove one of them")
                continue
            self.doc.keys[(*path, key)] = knode
            out[key] = self.build(vnode, (*path, key))
        return out

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _STR:
            return node.value  # the common case, without a trip through the constructor
        if node.tag not in _SCALAR_TAGS:
            self._err(node, f"unsupported YAML tag {node.tag}", "hyprov reads plain YAML only")
            return None
        try:
            value = _constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            self._err(node, f"bad {node.tag.rsplit(':', 1)[-1]} value {node.value!r}: {exc}")
            return None
        if node.tag == _STD + "timestamp":
            return node.value  # dates are strings to us
        return value


class _TooBig(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _Recursive(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


_BRACKET = re.compile(r"[\[\]{}]")
_CONTENT_COLUMN = re.compile(r"^[ ]*(?:[-?][ ]+)*", re.MULTILINE)


def _depth_bound(text: str) -> int:
    """A cheap upper bound of the nesting, read off the text without a YAML parser.

    Block collections nest only by indentation: each column holds at most two
    levels (a mapping and an indentless sequence under it), and each leading
    "- " or "? " indicator is a column too. Flow collections nest by brackets; a
    bracket inside a quoted string only raises the bound (a closing one is
    clamped at zero), so the bound errs on the side of the exact check.
    """
    block = max((m.end() - m.start() for m in _CONTENT_COLUMN.finditer(text)), default=0)
    flow = deepest = 0
    for m in _BRACKET.finditer(text):
        if m.group() in "[{":
            flow += 1
            deepest = max(deepest, flow)
        elif flow:
            flow -= 1
    return 2 * (block + 1) + deepest


def _too_deep(text: str) -> Any:
    """The mark of the first collection nested deeper than MAX_DEPTH, or None.

    Runs before libyaml reads the text: libyaml 0.2.6 (PyYAML 6.0.4's wheels)
    refuses nesting over 1,000 with its own error while its scanner reads ahead,
    so hyprov's limit and location would depend on the installed PyYAML. Only a
    text whose bound exceeds the limit is parsed, with PyYAML's pure-Python
    parser (events only: no recursion, no depth limit of its own); its syntax
    errors are left to libyaml's composer, which reports them as before.
    """
    if _depth_bound(text) <= MAX_DEPTH:
        return None
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return event.start_mark
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return None
    return None


class _Unusual(Exception):
    """The fast path met something it leaves to the careful one."""


_MAP_TAGS = (None, _STD + "map")
_SEQ_TAGS = (None, _STD + "seq")
_IMPLICIT = yaml.SafeLoader.yaml_implicit_resolvers
_SCALAR_CONSTRUCTORS = yaml.SafeLoader.yaml_constructors


def _plain(value: str) -> Any:
    """A plain (unquoted) scalar as SafeLoader reads it; _Unusual for tags hyprov refuses."""
    tag = _STR
    for candidate, regexp in _IMPLICIT.get(value[:1], ()):
        if regexp.match(value):
            tag = candidate
            break
    if tag == _STR or tag == _STD + "timestamp":  # dates are strings to us
        return value
    if tag not in _SCALAR_TAGS:
        raise _Unusual
    try:
        return _SCALAR_CONSTRUCTORS[tag](_constructor, yaml.ScalarNode(tag, value))
    except (yaml.YAMLError, ValueError) as exc:
        raise _Unusual from exc


# a control character or line/paragraph separator (not a tab), or a trailing backslash
_ODD_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]|\\\\\\s*$")


class _Seen:
    """What the fast path noticed on the way (see Document.floats/odd_text)."""

    floats = False
    odd_text = False


def _fast_load(text: str, seen: _Seen | None = None) -> Any:
    """Plain data straight from libyaml's events, with no node graph and no positions:
    ~3x faster than composing on a 10,000-DP file. Anything a careful look is needed
    for (anchors, aliases, tags, merge keys, duplicate or complex keys, deep nesting,
    bad scalars, several documents) raises _Unusual and :func:`load` takes the slow
    path, which reports it with its position."""
    seen = seen or _Seen()
    loader = _Loader(text)
    get: Callable[[], Any] = loader.get_event
    scalar, m_start, s_start = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent
    m_end, s_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
    try:
        if get().__class__ is not yaml.StreamStartEvent or get().__class__ is not yaml.DocumentStartEvent:
            raise _Unusual
        resolved: dict[str, Any] = {}  # plain scalar text -> value: keys and labels repeat
        value: Any
        stack: list[Any] = []  # open collections
        keys: list[Any] = []  # per open mapping: its pending key (_NO_KEY when none)
        top: Any = None
        root: Any = _NO_KEY
        while True:
            ev = get()
            cls = ev.__class__
            if cls is scalar:
                if ev.anchor is not None:
                    raise _Unusual
                if ev.implicit[0] and ev.tag is None:
                    text = ev.value
                    value = resolved.get(text, _NO_KEY)
                    if value is _NO_KEY:
                        value = resolved[text] = _plain(text) if text else None
                        if value.__class__ is float:
                            seen.floats = True
                        elif value.__class__ is str and _ODD_TEXT.search(value):
                            seen.odd_text = True
                elif ev.tag is None or ev.tag == "!" or ev.tag == _STR:
                    value = ev.value
                    if _ODD_TEXT.search(value):
                        seen.odd_text = True
                else:
                    raise _Unusual
            elif cls is m_start:
                if ev.anchor is not None or ev.tag not in _MAP_TAGS or len(stack) >= MAX_DEPTH:
                    raise _Unusual
                value = {}
            elif cls is s_start:
                if ev.anchor is not None or ev.tag not in _SEQ_TAGS or len(stack) >= MAX_DEPTH:
                    raise _Unusual
                value = []
            elif cls is m_end or cls is s_end:
                stack.pop()
                if cls is m_end:
                    keys.pop()
                top = stack[-1] if stack else None
                if not stack:
                    break
                continue
            else:  # an alias, or the document ends without a value
                raise _Unusual
            # place the value
            if top is None:
                root = value
            elif top.__class__ is list:
                top.append(value)
            else:
                key = keys[-1]
                if key is _NO_KEY:
                    if cls is not scalar or value.__class__ is not str or value in top or value == "<<":
                        raise _Unusual  # complex, non-string, duplicate or merge key
                    keys[-1] = value
                    continue
                top[key] = value
                keys[-1] = _NO_KEY
            if cls is not scalar:
                stack.append(value)
                if cls is m_start:
                    keys.append(_NO_KEY)
                top = value
            elif top is None:
                break  # the document is one scalar
        if get().__class__ is not yaml.DocumentEndEvent or get().__class__ is not yaml.StreamEndEvent:
            raise _Unusual  # more than one document
        return root
    except yaml.YAMLError as exc:
        raise _Unusual from exc
    finally:
        loader.dispose()


_NO_KEY: Any = object()


def load(text_bytes: bytes, file: str) -> tuple[Document, list[Problem]]:
    """Parse YAML bytes into a :class:`Document`; problems instead of exceptions."""
    doc = Document(file, None)
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = text_bytes[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        return doc, [Problem(file, line, col, "the file is not UTF-8 text", "save it as UTF-8")]
    if text.startswith("\ufeff"):
        text = text[1:]
    seen = _Seen()
    try:
        fast = _fast_load(text, seen)
    except _Unusual:
        pass
    else:
        if isinstance(fast, dict | list):
            doc.data, doc.text, doc.floats, doc.odd_text = fast, text, seen.floats, seen.odd_text
            return doc, []
    try:
        deep = _too_deep(text)
        if deep is not None:
            return doc, [Problem(file, deep.line + 1, deep.column + 1,
                                 f"the YAML is nested more than {MAX_DEPTH} levels deep",
                                 "a topology file needs a few levels only")]
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = f"YAML syntax error: {exc.problem or exc.context}"
        ctx = exc.context_mark
        if exc.problem and exc.context and ctx and mark and (ctx.line, ctx.column) != (mark.line, mark.column):
            msg += f" ({exc.context} started at line {ctx.line + 1}, column {ctx.column + 1})"
        hint = ("check the indentation, quotes and brackets on this line and the one before it "
                "(a value holding ': ', '#', '[' or '{' needs quotes)")
        lines = text.splitlines()
        if mark and mark.line < len(lines) and lines[mark.line][mark.column:mark.column + 1] == "\t":
            hint = "YAML does not allow tabs for indentation; use spaces"
        return doc, [Problem(file, line, col, msg, hint)]
    except yaml.reader.ReaderError as exc:
        # a control character: libyaml's position counts bytes, PyYAML's characters,
        # so locate the character itself (the reader stops at its first occurrence)
        char = chr(exc.character) if isinstance(exc.character, int) else ""
        at = text.find(char) if char else -1
        at = at if at >= 0 else min(max(0, exc.position), len(text))
        head = text[:at]
        line = head.count("\n") + 1
        col = at - (head.rfind("\n") + 1) + 1
        what = f"character U+{ord(char):04X}" if char else "character"
        return doc, [Problem(file, line, col, f"the file contains a {what}: {exc.reason}",
                             "remove it (YAML allows tab, newline and printable characters)")]
    except yaml.YAMLError as exc:  # pragma: no cover - every libyaml error is marked or a ReaderError
        return doc, [Problem(file, 1, 1, f"YAML error: {exc}")]
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return doc, [Problem(file, 1, 1, "the file is empty", "start with 'version: 1' (see examples/)")]
    if len(nodes) > 1:
        m = nodes[1].start_mark
        return doc, [Problem(file, m.line + 1, m.column + 1, "more than one YAML document in the file",
                             "keep one document; remove the '---' separator")]
    builder = _Builder(doc)
    try:
        doc.data = builder.build(nodes[0], ())
    except _TooBig as exc:
        m = exc.node.start_mark
        return doc, [Problem(file, m.line + 1, m.column + 1,
                             f"YAML aliases expand to more than {MAX_ALIAS_EXPANSION} nodes",
                             "this looks like an alias bomb; write the values out")]
    except _Recursive as exc:
        m = exc.node.start_mark
        return doc, [Problem(file, m.line + 1, m.column + 1, "recursive YAML alias")]
    return doc, builder.problems
