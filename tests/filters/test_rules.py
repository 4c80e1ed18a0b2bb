"""The rule language (``curate.filters.rules``): the parser, resolution to one SQL predicate, the
rule list of ``curate filter --help`` and the one-expression check of ``--where``."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.cli import main
from curate.filters import RuleError, parse_rule


def test_where_is_one_expression_and_nothing_else_runs(hostile_index, tmp_path, capsys):
    _, out, _ = hostile_index
    target = tmp_path / "x.csv"
    where = (f"TRUE), FALSE); COPY (SELECT 42 AS x) TO '{target}'; SELECT uid, shard, key FROM scores "
             "WHERE coalesce((TRUE")
    assert main(["filter", "--index", str(out), "--rule", "tmars(fraction=1.0)", "--where", where,
                 "--out", str(tmp_path / "o")]) == 2
    assert "not one SQL expression" in capsys.readouterr().err and not target.exists()
    for where in ("FALSE), FALSE) OR coalesce((TRUE", "TRUE UNION SELECT TRUE", "1 FROM scores", "x AS y"):
        assert main(["filter", "--index", str(out), "--where", where, "--out", str(tmp_path / "o")]) == 2
    # Whatever --where says, a row whose status is not ok is never kept.
    assert main(["filter", "--index", str(out), "--where", "status <> 'ok' OR TRUE",
                 "--out", str(tmp_path / "all")]) == 0
    statuses = set(query_statuses(out, tmp_path / "all"))
    assert statuses == {"ok"}
    # The summary is strict JSON: a keep-all threshold is "-inf", never -Infinity.
    assert main(["filter", "--index", str(out), "--rule", "tmars(fraction=1.0)", "--out", str(tmp_path / "f1")]) == 0
    summary = json.loads((tmp_path / "f1" / "filter_summary.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert list(summary["thresholds"].values()) == ["-inf"]
    capsys.readouterr()


def query_statuses(index, subset_dir):
    from curate.query import query

    keys = set(pq.read_table(subset_dir / "subset.parquet").column(S.UID).to_pylist())
    return [r["status"] for r in query("SELECT uid, status FROM scores", index).to_pylist() if r["uid"] in keys]


@pytest.mark.parametrize("bad", ["tmars()", "tmars(threshold=0.1, fraction=0.5)", "nope()", "tmars(0.3)",
                                 "basic() + laion()", "tmars(fraction=2)", "text_area(min=0.1)", "basic(", "import os"])
def test_bad_rules(bad):
    with pytest.raises(RuleError):
        from curate.filters import resolve

        resolve(parse_rule(bad), lambda c, f: 0.0)


def test_filter_help_lists_every_rule(capsys):
    """The rule list of ``curate filter --help`` is read from ``RULES`` (``text_match()`` was missing
    from the hand-written one, issue 30)."""
    from curate.filters.rules import RULES

    with pytest.raises(SystemExit) as e:
        main(["filter", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    for name in RULES:
        assert f"{name}(" in text, name
    assert "text_match(min_confidence=, threshold=)" in text


def test_parse_rule_builds_the_tree_and_resolve_writes_one_predicate():
    from curate.filters.rules import OK, Leaf, Node, leaves, resolve

    tree = parse_rule(" tmars(fraction=0.5) & ~(text_area(max=0.3) | clip_score(threshold=0.28)) ")
    assert isinstance(tree, Node) and tree.op == "and" and tree.children[1].op == "not"
    assert [(leaf.name, leaf.kwargs) for leaf in leaves(tree)] == [
        ("tmars", {"fraction": 0.5}), ("text_area", {"max": 0.3}), ("clip_score", {"threshold": 0.28})]
    asked = []

    def threshold_of(column, fraction):
        asked.append((column, fraction))
        return 0.25

    sql = resolve(tree, threshold_of)
    assert asked == [(S.MASKED_CLIP_SCORE, 0.5)]  # only a fraction asks the pool
    assert leaves(tree)[0].thresholds == {S.MASKED_CLIP_SCORE: 0.25}
    assert sql.startswith(f"{OK} AND (coalesce(") and " OR " in sql and "(NOT (" in sql
    assert "CAST(0.25 AS FLOAT)" in sql and "CAST(0.28 AS FLOAT)" in sql
    # a fraction that keeps everything is TRUE, not a comparison with -inf
    keep_all = parse_rule("clip_score(fraction=1.0)")
    assert resolve(keep_all, lambda c, f: -math.inf) == f"{OK} AND coalesce(TRUE, FALSE)"
    assert isinstance(keep_all, Leaf) and str(keep_all) == "clip_score(fraction=1.0)"


@pytest.mark.parametrize("text, message", [
    ("nope()", "unknown rule 'nope'"),
    ("tmars(0.3)", "keyword arguments only"),
    ("tmars(fractoin=0.5)", "has no argument 'fractoin'"),
    ("tmars(fraction=x)", "must be a constant"),
    ("basic() + laion()", "use rule calls with & | ~"),
    ("basic(", "cannot parse rule"),
])
def test_parse_rule_names_what_is_wrong(text, message):
    with pytest.raises(RuleError, match=message):
        parse_rule(text)


def test_check_predicate_returns_one_canonical_expression():
    from curate.filters.rules import check_predicate

    got = check_predicate("num_text_boxes = 0 -- a comment")
    assert got.startswith("(") and got.endswith(")") and "num_text_boxes = 0" in got and "comment" not in got
    assert check_predicate(got) == got  # printed back from DuckDB's parse tree: a fixed point
    for where in ("", "  ", "1; SELECT 2", "x AS y", "* ", "TRUE UNION SELECT TRUE", "1 FROM scores",
                  "TRUE) OR (TRUE"):
        with pytest.raises(RuleError):
            check_predicate(where)
