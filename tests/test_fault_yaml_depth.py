"""YAML nesting depth is bounded before composing: no depth, size or style crashes the loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from reconciler import loading
from reconciler.loading import MAX_DEPTH, SourceFile, load_files

LEVELS = 100_000


def _deep_cases() -> dict[str, str]:
    """Hostile nesting in every style the parsers know; 100,000 levels each."""
    return {
        "flow-seq": "a: " + "[" * LEVELS + "]" * LEVELS + "\n",
        "flow-map": "a: " + "{a: " * LEVELS + "}" * LEVELS + "\n",
        "flow-unclosed": "a: " + "[" * LEVELS,
        "json-adjacent": '["a":' * LEVELS,
        "implicit-pairs": "[a: " * LEVELS,
        "block-compact-seq": "- " * LEVELS + "x\n",
        "block-explicit-key": "? " * LEVELS + "x\n",
        "block-indented-map": "".join(" " * i + "a:\n" for i in range(300)),
        "block-then-flow": "".join("  " * i + "- b:\n" for i in range(40)) + "  " * 40 + "c: " + "[{d: " * 40,
        "tab-in-flow (pure path)": "a: [\t" + "[" * LEVELS + "]" * (LEVELS + 1),
        "yaml-1.1 directive": "%YAML 1.1\n---\n" + "[" * LEVELS,
        "anchored": "a: " + "[&x " * LEVELS,
        "crlf-block": "a:\r\n" + "".join(" " * i + "b:\r\n" for i in range(1, 300)),
    }


@pytest.mark.parametrize("name", list(_deep_cases()))
def test_deep_nesting_is_one_positioned_error(name: str) -> None:
    text = _deep_cases()[name]
    result = load_files([SourceFile(f"{name}.yaml", text.encode())])
    assert [d.message for d in result.errors] == [f"document nests deeper than {MAX_DEPTH} levels"]
    error = result.errors[0]
    assert error.line > 1 or error.col > 1, "the error points at the first too-deep collection"


def test_limit_is_exact_and_parser_independent() -> None:
    """64 nested sequences under the root mapping load; 65 do not, on the C and the pure path."""
    for tab in ("", "\t"):  # a tab sends the file through the pure parser
        ok = f"a: [{tab}" + "[" * 63 + "]" * 64 + "\n"
        deep = f"a: [{tab}" + "[" * 64 + "]" * 65 + "\n"
        ok_result = load_files([SourceFile("ok.yaml", ok.encode())])
        assert not any("nests deeper" in d.message for d in ok_result.diagnostics)
        deep_result = load_files([SourceFile("deep.yaml", deep.encode())])
        assert [(d.line, d.col) for d in deep_result.errors] == [(1, 4 + len(tab) + 64)]


def test_megabytes_of_nesting_are_cut_short() -> None:
    """Several MB of nesting: the scan stops at the first too-deep collection; a file that size is
    refused by the size limit before parsing."""
    text = "a: " + "{a: [" * 1_000_000
    mark = loading._too_deep(text)
    assert mark is not None and (mark.line, mark.column) == (0, 3 + 5 * 32)  # the 66th collection: a `{`
    result = load_files([SourceFile("huge.yaml", text.encode())])
    assert [d.message for d in result.errors] == [f"file is {len(text)} bytes; the limit is {loading.MAX_FILE_BYTES}"]


def test_syntax_error_before_the_depth_is_reported_as_such() -> None:
    result = load_files([SourceFile("bad.yaml", ("a: b: c\n" + "[" * LEVELS).encode())])
    assert [(d.line, d.col) for d in result.errors] == [(1, 5)]
    assert "mapping values are not allowed" in result.errors[0].message


_values = st.recursive(
    st.one_of(st.integers(), st.text(alphabet="ab:-?[]{}# '\"", max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="ab:-", min_size=1, max_size=3),
                                                                inner, max_size=3),
    max_leaves=40,
)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(_values)
def test_cheap_bound_never_undercounts(value: object) -> None:
    """The pre-scan bound is at least the real depth, in flow (JSON) and block style alike."""
    import io

    block = io.StringIO()
    YAML().dump({"root": value}, block)
    for text in (json.dumps({"root": value}), json.dumps({"root": value}, separators=(",", ":")), block.getvalue()):
        assert loading._nesting_bound(text) >= 1 + _depth(value)


def test_a_deep_file_in_a_commit_is_refused_where_the_daemon_reads_it(tmp_path: Path) -> None:
    """The daemon loads commits from git blobs through the same loader: the deep file is one error,
    and the commit's other files still load (the reconciler then keeps the last good state)."""
    from git import Actor, Repo

    from reconciler.gitsource import read_commit

    root = tmp_path / "repo"
    (root / "campaigns").mkdir(parents=True)
    (root / "campaigns" / "deep.yaml").write_text("a: " + "{a: " * 30_000 + "}" * 30_000 + "\n")
    (root / "campaigns" / "segment.yaml").write_text(
        "apiVersion: herald/v1\nkind: Segment\nmetadata: {name: fine}\nspec: {rules: {property: {name: a, op: exists}}}\n")
    repo = Repo.init(root, initial_branch="main")
    repo.index.add(["campaigns/deep.yaml", "campaigns/segment.yaml"])
    bot = Actor("Test", "test@example.com")
    repo.index.commit("deep", author=bot, committer=bot)
    result = read_commit(repo).load()
    assert [(Path(d.path).name, d.line, d.col, d.message) for d in result.errors] == [
        ("deep.yaml", 1, 260, f"document nests deeper than {MAX_DEPTH} levels")]
    assert set(result.state.segments) == {"fine"}
