"""YAML → validated documents, keeping source positions so every error names path:line:col.

Files arrive as bytes (from a directory or a git tree). Hostile input is bounded: file size,
node count (alias bombs expand here and are stopped), and nesting depth, which is checked on the
parser's events before any composer runs (composers recurse; libyaml's segfaulted at ~30,000 levels).

Parsing has two paths that give the same trees. The fast one composes nodes with ruamel.yaml's C
parser (ruamel.yaml.clib, libyaml), whose nodes carry start marks, and builds the round-trip tree
(CommentedMap/CommentedSeq with .lc line/column) with ruamel's own round-trip constructor. Any file
it cannot take (C parser not installed, a %YAML directive, or any error at all) goes through the
pure-Python round-trip parser, so errors and their texts are exactly those of the pure parser.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.compat import _DEFAULT_YAML_VERSION
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver, implicit_resolvers
from ruamel.yaml.tag import Tag

try:  # ruamel.yaml.clib: libyaml's reader, scanner and parser
    from ruamel.yaml.cyaml import CParser
except ImportError:  # pragma: no cover - without the C extension every file takes the pure path
    CParser = None

from .diagnostics import Diagnostic
from .models import API_VERSION, KINDS, Campaign, Document, Provider, ProviderGroup, Segment, Settings

MAX_FILE_BYTES = 1_048_576
MAX_NODES_PER_DOCUMENT = 100_000
MAX_DEPTH = 64
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SourceFile:
    path: str
    content: bytes


class _StringTimestampConstructor(RoundTripConstructor):
    """Keep timestamps as written; the models parse them (ruamel would drop the UTC offset)."""


_StringTimestampConstructor.add_constructor(
    "tag:yaml.org,2002:timestamp", RoundTripConstructor.construct_yaml_str
)


def _new_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Constructor = _StringTimestampConstructor
    yaml.allow_duplicate_keys = False
    return yaml


# ---------------------------------------------------------------- fast path (C parser)

# Inputs where libyaml is more lenient than ruamel's scanner (found by the parity fuzz tests in
# tests/test_loading_fastpath.py); they take the pure path so the pure parser decides.
# Also an anchor or alias name followed by one of ?:%@` (libyaml ends the name there and goes on;
# ruamel takes the character into the name). Also the Unicode line breaks NEL, LS and PS (libyaml
# counts them as line breaks inside quoted scalars too, so later positions differ).
_PURE_ONLY = re.compile(r"^%YAML|\t|[|>][-+0-9]*#|[&*][0-9A-Za-z_-]+[?:%@`]|[\x85\u2028\u2029]", re.MULTILINE)


def _resolver_table(version: tuple[int, int]) -> dict[Any, list[tuple[str, Any]]]:
    """The implicit-tag rules of one YAML version, grouped by first character (as VersionedResolver)."""
    table: dict[Any, list[tuple[str, Any]]] = {}
    for versions, tag, regexp, first in implicit_resolvers:
        if version in versions:
            keys: list[str | None] = list(first) if first else [None]
            for ch in keys:
                table.setdefault(ch, []).append((tag, regexp))
    return table


class _FastResolver(VersionedResolver):
    """VersionedResolver at the default YAML version (1.2) with the rule table built once.

    Only used for documents without a %YAML directive, which is exactly when the pure path
    resolves at the default version too. Same rules, same order, same tags.
    """

    _TABLE = _resolver_table(_DEFAULT_YAML_VERSION)

    @property
    def processing_version(self) -> Any:
        return _DEFAULT_YAML_VERSION

    @property
    def versioned_resolver(self) -> Any:
        return self._TABLE

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            for tag, regexp in (*self._TABLE.get(value[0] if value else "", ()), *self._TABLE.get(None, ())):
                if regexp.match(value):
                    return Tag(suffix=tag)
        if kind is ScalarNode:
            return self.DEFAULT_SCALAR_TAG
        if kind is SequenceNode:
            return self.DEFAULT_SEQUENCE_TAG
        if kind is MappingNode:
            return self.DEFAULT_MAPPING_TAG
        return None


class _PureParserNeeded(Exception):
    pass


class _FastConstructor(_StringTimestampConstructor):
    comment_handling = None  # the C parser keeps no comments; positions do not need them

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # libyaml marks an empty plain scalar (`key:` with nothing, `- ` alone) where the next token
        # starts, the pure parser where the empty value is: such files take the pure path.
        if node.__class__ is ScalarNode and not node.value and not node.style:
            raise _PureParserNeeded
        return super().construct_object(node, deep)


if CParser is not None:

    class _FastLoader(CParser, _FastConstructor, _FastResolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            self._parser = self._composer = self
            _FastConstructor.__init__(self, loader=self)
            self.allow_duplicate_keys = False
            _FastResolver.__init__(self, loadumper=self)


def _parse_fast(text: str) -> list[Any] | None:
    """All documents of `text` through the C parser, or None: the caller then takes the pure path.

    Also pure: a %YAML directive (the pure parser switches rule sets) and any tab character
    (libyaml accepts tabs in places where ruamel's scanner reports an error).
    """
    if CParser is None or _PURE_ONLY.search(text):
        return None
    loader = _FastLoader(text)
    try:
        trees = []
        while loader.check_data():
            trees.append(loader.get_data())
        return trees
    except Exception:  # any problem is reported by the pure parser, with its exact text
        return None
    finally:
        loader.dispose()


# ---------------------------------------------------------------- nesting depth (before composing)

# Every collection opens with a character of its own: a flow bracket, a `:` (block or flow mapping
# value, also JSON-like `"k":v` in flow), or a block indicator `-`/`?` followed by a blank. Their
# count bounds the nesting depth from above, so most files need no further look.
_BLOCK_INDICATOR = re.compile(r"[-?](?=[ \t\r\n\x85\u2028\u2029]|\Z)")


def _nesting_bound(text: str) -> int:
    """An upper bound of the collection nesting depth of `text` (never below the real depth)."""
    return text.count("[") + text.count("{") + text.count(":") + len(_BLOCK_INDICATOR.findall(text))


def _events(text: str, pure: bool) -> Iterator[Any]:
    """Parse events of `text` (libyaml's iterative parser, or ruamel's pure one); lazy."""
    if pure or CParser is None:
        yield from _new_yaml().parse(text)
        return
    parser = CParser(text)
    try:
        while parser.check_event():
            yield parser.get_event()
    finally:
        parser.dispose()


def _first_too_deep(text: str, pure: bool) -> Any:
    """Start mark of the first collection nested deeper than MAX_DEPTH, or None.

    Parsers are iterative (no recursion, unlike composers: ruamel.yaml.clib's composer overflows
    the C stack at some 30,000 levels), and stop reading at the first too-deep collection, so
    this costs O(MAX_DEPTH) events for hostile input however large. A parse error ends the scan:
    the composer stops at the same event, no deeper than the scan went.
    """
    depth = 0
    for event in _events(text, pure):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH + 1:  # the root collection is depth 0 in _to_plain
                return event.start_mark
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
    return None


def _too_deep(text: str) -> Any:
    """Start mark of a collection nested deeper than MAX_DEPTH in `text`, or None.

    Checked with libyaml's parser (fast; also for files the pure parser composes: depth is
    structure both parsers agree on), and with the pure parser where libyaml fails on the text.
    """
    if _nesting_bound(text) <= MAX_DEPTH + 1:
        return None
    for use_pure in ((False, True) if CParser is not None else (True,)):
        try:
            return _first_too_deep(text, use_pure)
        except Exception:  # a syntax error: the loader reports it with its position
            continue
    return None


class _TooLarge(Exception):
    def __init__(self, message: str, node: Any) -> None:
        super().__init__(message)
        self.node = node


@dataclass
class LoadedDocument:
    """One validated document and the YAML tree it came from (for positions)."""

    model: Document
    path: str
    tree: CommentedMap

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def name(self) -> str:
        return self.model.metadata.name

    def locate(self, field_path: Sequence[str | int] = ()) -> tuple[int, int, str]:
        return locate(self.tree, field_path)


def locate(tree: Any, loc: Sequence[str | int], missing_leaf: bool = False) -> tuple[int, int, str]:
    """Walk a pydantic error location through the YAML tree.

    Returns (line, col, dotted field), 1-based. Location parts that are not keys of the data are
    union tags and are skipped, except a missing field at the end, which is named and reported at
    its parent mapping.
    """
    node = tree
    line, col = _node_position(tree)
    shown: list[str] = []
    last = len(loc) - 1
    for index, part in enumerate(loc):
        if isinstance(node, CommentedMap):
            key = _yaml_key(node, part)
            if key is None:
                if missing_leaf and index == last:
                    shown.append(str(part).rstrip("_"))
                continue
            kline, kcol = node.lc.key(key)
            line, col = kline + 1, kcol + 1
            shown.append(str(key))
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            iline, icol = node.lc.item(part)
            line, col = iline + 1, icol + 1
            shown[-1:] = [f"{shown[-1]}[{part}]"] if shown else [f"[{part}]"]
            node = node[part]
        elif missing_leaf and index == last:
            shown.append(str(part))
    return line, col, ".".join(shown)


def _yaml_key(node: CommentedMap, part: str | int) -> Any:
    if part in node:
        return part
    if part == "from_" and "from" in node:
        return "from"
    if part == "not_" and "not" in node:
        return "not"
    return None


def _node_position(node: Any) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line + 1, lc.col + 1
    return 1, 1


def _to_plain(node: Any, budget: list[int], depth: int = 0) -> Any:
    """Copy the ruamel tree into plain Python values, bounding size and depth."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(f"document has more than {MAX_NODES_PER_DOCUMENT} nodes (alias bomb?)", node)
    if depth > MAX_DEPTH:
        raise _TooLarge(f"document nests deeper than {MAX_DEPTH} levels", node)
    if isinstance(node, dict):
        return {str(k): _to_plain(v, budget, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_to_plain(v, budget, depth + 1) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return str(node)


@dataclass
class DesiredState:
    """Everything one commit (or directory) declares, indexed by kind and name."""

    providers: dict[str, Provider] = field(default_factory=dict)
    groups: dict[str, ProviderGroup] = field(default_factory=dict)
    campaigns: dict[str, Campaign] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    settings: Settings = field(
        default_factory=lambda: Settings.model_validate(
            {"apiVersion": API_VERSION, "kind": "Settings", "metadata": {"name": "default"}}
        )
    )
    documents: list[LoadedDocument] = field(default_factory=list)
    _found: tuple[int, int, dict[tuple[str, str], LoadedDocument]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def find(self, kind: str, name: str) -> LoadedDocument | None:
        """The first document of that kind and name (indexed once per documents list: validation
        looks up every campaign, and a linear scan made that quadratic)."""
        docs = self.documents
        if self._found is None or self._found[0] != id(docs) or self._found[1] != len(docs):
            index: dict[tuple[str, str], LoadedDocument] = {}
            for doc in docs:
                index.setdefault((doc.kind, doc.name), doc)
            self._found = (id(docs), len(docs), index)
        return self._found[2].get((kind, name))

    def add(self, model: Document) -> None:
        """Index one object under its kind (a later Settings replaces the earlier one)."""
        if isinstance(model, Provider):
            self.providers[model.name] = model
        elif isinstance(model, ProviderGroup):
            self.groups[model.name] = model
        elif isinstance(model, Campaign):
            self.campaigns[model.name] = model
        elif isinstance(model, Segment):
            self.segments[model.name] = model
        elif isinstance(model, Settings):
            self.settings = model

    def default_group(self) -> ProviderGroup | None:
        return next((g for g in self.groups.values() if g.spec.default), None)

    def objects(self) -> Iterator[Document]:
        yield from self.providers.values()
        yield from self.groups.values()
        yield from self.segments.values()
        yield from self.campaigns.values()


@dataclass
class LoadResult:
    state: DesiredState
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[SourceFile], list[Diagnostic]]:
    """Read every *.yaml / *.yml under the given files or directories (hidden entries skipped)."""
    files: list[SourceFile] = []
    problems: list[Diagnostic] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            problems.append(Diagnostic(str(root), 1, 1, "", "", "", "no such file or directory"))
            continue
        candidates = [root] if root.is_file() else sorted(
            p for p in root.rglob("*")
            if p.is_file() and p.suffix in YAML_SUFFIXES and not _hidden(p.relative_to(root))
        )
        for path in candidates:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                problems.append(Diagnostic(str(path), 1, 1, "", "", "",
                                           f"file is {size} bytes; the limit is {MAX_FILE_BYTES}"))
                continue
            files.append(SourceFile(str(path), path.read_bytes()))
    return files, problems


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def load_paths(paths: Iterable[str | os.PathLike[str]]) -> LoadResult:
    files, problems = collect_files(paths)
    result = load_files(files)
    result.diagnostics[:0] = problems
    return result


def load_files(files: Iterable[SourceFile]) -> LoadResult:
    from .validation import check_state

    state = DesiredState()
    diagnostics: list[Diagnostic] = []
    for source in files:
        for doc, problems in _load_file(source):
            diagnostics.extend(problems)
            if doc is not None:
                state.documents.append(doc)
    diagnostics.extend(_index(state))
    diagnostics.extend(check_state(state))
    return LoadResult(state, diagnostics)


def _load_file(source: SourceFile) -> Iterator[tuple[LoadedDocument | None, list[Diagnostic]]]:
    def fail(message: str, line: int = 1, col: int = 1) -> tuple[None, list[Diagnostic]]:
        return None, [Diagnostic(source.path, line, col, "", "", "", message)]

    if len(source.content) > MAX_FILE_BYTES:
        yield fail(f"file is {len(source.content)} bytes; the limit is {MAX_FILE_BYTES}")
        return
    try:
        text = source.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield fail(f"file is not valid UTF-8 (byte {exc.start}: {exc.reason})")
        return
    deep = _too_deep(text)
    if deep is not None:
        yield fail(f"document nests deeper than {MAX_DEPTH} levels", deep.line + 1, deep.column + 1)
        return
    try:
        trees = _parse_fast(text)
        if trees is None:
            trees = list(_new_yaml().load_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        if exc.__class__.__name__ == "DuplicateKeyError":
            problem = f"duplicate key: {exc.problem}"
        yield fail(f"YAML syntax error: {problem}", line, col)
        return
    except (YAMLError, RecursionError, ValueError) as exc:
        yield fail(f"YAML error: {exc}")
        return
    except TypeError as exc:  # a complex key holding a list or mapping cannot be a dict key
        yield fail(f"YAML error: unsupported mapping key ({exc})")
        return
    for tree in trees:
        if tree is None:
            continue
        yield _validate_document(source.path, tree)


def _validate_document(path: str, tree: Any) -> tuple[LoadedDocument | None, list[Diagnostic]]:
    line, col = _node_position(tree)
    if not isinstance(tree, CommentedMap):
        return None, [Diagnostic(path, line, col, "", "", "", "a document must be a mapping with apiVersion, kind, metadata")]
    try:
        data = _to_plain(tree, [MAX_NODES_PER_DOCUMENT])
    except _TooLarge as exc:
        nline, ncol = _node_position(exc.node)
        return None, [Diagnostic(path, nline, ncol, "", "", "", str(exc))]
    kind = data.get("kind")
    metadata = data.get("metadata")
    name = str(metadata.get("name", "")) if isinstance(metadata, dict) else ""
    kind_text = kind if isinstance(kind, str) else ""
    if data.get("apiVersion") != API_VERSION:
        kline, kcol, _ = locate(tree, ["apiVersion"])
        return None, [Diagnostic(path, kline, kcol, kind_text, name, "apiVersion",
                                 f"must be '{API_VERSION}' (got {data.get('apiVersion')!r})")]
    model_cls = KINDS.get(kind_text)
    if model_cls is None:
        kline, kcol, _ = locate(tree, ["kind"])
        return None, [Diagnostic(path, kline, kcol, kind_text, name, "kind",
                                 f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")]
    try:
        model = model_cls.model_validate(data)
    except ValidationError as exc:
        return None, [_diagnostic_from_error(path, tree, kind_text, name, err) for err in exc.errors()]
    return LoadedDocument(model, path, tree), []


def _diagnostic_from_error(path: str, tree: Any, kind: str, name: str, err: Any) -> Diagnostic:
    loc = tuple(err["loc"])
    line, col, field_name = locate(tree, loc, missing_leaf=err["type"] == "missing")
    message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] in _SHOW_INPUT or "type" in err["type"]:
        message = f"{message} (got {_short(err.get('input'))})"
    return Diagnostic(path, line, col, kind, name, field_name, message)


_SHOW_INPUT = {"literal_error", "enum", "greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _index(state: DesiredState) -> list[Diagnostic]:
    """Index documents by kind and name; duplicates are errors naming the first definition."""
    problems: list[Diagnostic] = []
    seen: dict[tuple[str, str], LoadedDocument] = {}
    kept: list[LoadedDocument] = []
    for doc in state.documents:
        key = (doc.kind, doc.name)
        if key in seen:
            first = seen[key]
            fline, _, _ = first.locate()
            line, col, _ = doc.locate(["metadata", "name"])
            problems.append(Diagnostic(doc.path, line, col, doc.kind, doc.name, "metadata.name",
                                       f"duplicate {doc.kind} name; first defined at {first.path}:{fline}"))
            continue
        if doc.kind == "Settings" and any(d.kind == "Settings" for d in kept):
            first = next(d for d in kept if d.kind == "Settings")
            line, col, _ = doc.locate()
            problems.append(Diagnostic(doc.path, line, col, doc.kind, doc.name, "",
                                       f"only one Settings document is allowed; first at {first.path}"))
            continue
        seen[key] = doc
        kept.append(doc)
        state.add(doc.model)
    state.documents = kept
    return problems
