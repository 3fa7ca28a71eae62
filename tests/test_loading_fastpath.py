"""The C-parser fast path builds the same trees as the pure round-trip parser: same values, same
types, same line/column of every mapping, key, value and item; whatever it cannot take goes to the
pure parser (errors keep the pure parser's exact text)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconciler import loading
from reconciler.loading import _new_yaml, _parse_fast, _to_plain, collect_files, load_files

ROOT = Path(__file__).resolve().parent.parent
needs_c = pytest.mark.skipif(loading.CParser is None, reason="ruamel.yaml.clib is not installed")


def shape(node: Any, out: list[Any], path: str = "$", seen: set[int] | None = None) -> list[Any]:
    """Every value, its type and every recorded position, in document order (aliases not expanded)."""
    seen = set() if seen is None else seen
    lc: Any = getattr(node, "lc", None)
    if isinstance(node, dict | list):
        if id(node) in seen:
            out.append((path, "alias"))
            return out
        seen.add(id(node))
    if isinstance(node, dict):
        out.append((path, type(node).__name__, lc.line, lc.col))
        for key, value in node.items():
            out.append((path, repr(key), type(key).__name__, lc.key(key), lc.value(key)))
            shape(value, out, f"{path}.{key}", seen)
    elif isinstance(node, list):
        out.append((path, type(node).__name__, lc.line, lc.col))
        for index, value in enumerate(node):
            out.append((path, index, lc.item(index)))
            shape(value, out, f"{path}[{index}]", seen)
    else:  # what validation sees: the plain value (a TaggedScalar's style, '' or None, is not part of it)
        out.append((path, type(node).__name__, repr(_to_plain(node, [10])), type(_to_plain(node, [10])).__name__))
    return out


def pure(text: str) -> list[Any] | None:
    try:
        return [shape(tree, []) for tree in _new_yaml().load_all(text)]
    except Exception:
        return None


def fast(text: str) -> list[Any] | None:
    trees = _parse_fast(text)
    return None if trees is None else [shape(tree, []) for tree in trees]


def example_texts() -> list[tuple[str, str]]:
    files, _ = collect_files([ROOT / "providers", ROOT / "campaigns", ROOT / "tests" / "broken"])
    return [(f.path, f.content.decode("utf-8", "replace")) for f in files]


@needs_c
@pytest.mark.parametrize(("path", "text"), example_texts(), ids=lambda v: Path(v).name if "/" in v else "")
def test_examples_parse_identically(path: str, text: str) -> None:
    expected = pure(text)
    found = fast(text)
    if expected is None:
        assert found is None  # an error: reported by the pure parser
    elif "broken" not in path:
        assert found == expected  # valid examples really take the fast path
    else:
        assert found in (expected, None)


@needs_c
def test_errors_fall_back_to_the_pure_parser_texts() -> None:
    tabs = (ROOT / "tests" / "broken" / "tabs.yaml").read_bytes()
    assert _parse_fast(tabs.decode()) is None
    [diagnostic] = load_files([loading.SourceFile("tabs.yaml", tabs)]).diagnostics
    assert diagnostic.message == "YAML syntax error: while scanning for the next token found character '\\t' " \
                                 "that cannot start any token"


def test_yaml_directive_documents_take_the_pure_path() -> None:
    text = "%YAML 1.1\n---\napiVersion: herald/v1\nflag: yes\n"
    assert _parse_fast(text) is None
    assert [tree["flag"] for tree in _new_yaml().load_all(text)] == [True]  # 1.1 booleans, as before


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=12), st.sampled_from(["yes", "no", "on", "0o17", "017", "1_000", "2026-12-01",
                                                            "2026-12-01T10:00:00Z", "~", "null", ".inf", "<<", "="]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=25)


def block_yaml(value: Any, indent: int = 0) -> str:
    """A block-style rendering (plain scalars where JSON allows them) to exercise the block scanner."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        return "".join(f"{pad}{json.dumps(k)}:" + (f"\n{block_yaml(v, indent + 2)}" if isinstance(v, dict | list) and v
                                                  else f" {_scalar(v)}\n") for k, v in value.items())
    if isinstance(value, list) and value:
        return "".join(f"{pad}-" + (f"\n{block_yaml(v, indent + 2)}" if isinstance(v, dict | list) and v
                                   else f" {_scalar(v)}\n") for v in value)
    return f"{pad}{_scalar(value)}\n"


def _scalar(value: Any) -> str:
    if isinstance(value, str) and value.isalnum():
        return value  # plain: resolved by the implicit-tag rules
    return json.dumps(value, ensure_ascii=False)


@needs_c
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
@example(["\x85", None])  # NEL inside a quoted scalar: libyaml counted a line break
@example(["\u2028", {"a": "\u2029"}])
def test_generated_documents_parse_identically(value: Any) -> None:
    for text in (json.dumps(value, ensure_ascii=False), block_yaml(value)):
        expected, found = pure(text), fast(text)
        assert found is None or found == expected, text


def outcome(text: str) -> tuple[list[str], list[Any]]:
    """What callers see: diagnostics (with positions), models and document positions."""
    result = load_files([loading.SourceFile("f.yaml", text.encode())])
    return ([d.format() for d in result.diagnostics],
            [(d.kind, d.name, d.model.model_dump(mode="json"), d.locate()) for d in result.state.documents])


PREFIX = "apiVersion: herald/v1\nkind: Segment\nmetadata: {name: s}\n"


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:- \n\t#&*!|>'\"{}[],?%@`=<\\0.~\r\u00e9\U0001F381")), max_size=60),
       st.booleans())
def test_arbitrary_text_loads_identically(text: str, prefixed: bool) -> None:
    text = PREFIX + text if prefixed else text
    fast_outcome = outcome(text)
    with mock.patch.object(loading, "CParser", None):  # the pure parser only, as before the fast path
        assert fast_outcome == outcome(text), repr(text)


_EXAMPLES = [text for path, text in example_texts() if "broken" not in path]


@needs_c
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_EXAMPLES), st.floats(0, 1), st.integers(0, 3),
       st.text(alphabet=st.sampled_from(list("ab:- \n#&*!|>'\"{}[],?%=.~1")), max_size=4))
def test_edited_examples_load_identically(text: str, where: float, cut: int, insert: str) -> None:
    """Near-valid documents (an edit somewhere) give the same errors at the same positions."""
    at = int(where * len(text))
    edited = text[:at] + insert + text[at + cut:]
    fast_outcome = outcome(edited)
    with mock.patch.object(loading, "CParser", None):
        assert fast_outcome == outcome(edited), repr(edited)


def test_a_complex_key_holding_a_list_is_an_error_not_a_crash() -> None:
    text = b"apiVersion: herald/v1\nkind: Segment\nmetadata: {name: s}\nspec:\n  ? {a: [1, 2]}\n  : x\n"
    for parser in (loading.CParser, None):
        with mock.patch.object(loading, "CParser", parser):
            [diagnostic] = load_files([loading.SourceFile("k.yaml", text)]).diagnostics
            assert diagnostic.message.startswith("YAML error: unsupported mapping key")


@needs_c
def test_anchor_names_the_scanners_end_differently_take_the_pure_path() -> None:
    assert _parse_fast("&0:0") is None and _parse_fast("a: &x:y 1\n") is None
    assert _parse_fast("a: &x 1\nb: *x\n") is not None  # plain anchors and aliases are the same in both
    assert _parse_fast('schedule: {cron: "0 10 * * *"}\n') is not None
