"""Filters over the score index ("score once, filter many").

- ``curate.filters.rules``: the rule language (``tmars(fraction=0.5) & basic()``), each rule a
  DuckDB predicate, and the checked ``--where`` expression.
- ``curate.filters.run``: ``run_filter`` (``curate filter``): the subset files (``subset.parquet``,
  DataComp's ``subset.npy``, written by ``curate.io.subset``) and ``filter_summary.json``, in
  bounded memory, from one module a role: ``pool`` (``IndexPool``), ``thresholds``
  (``pool_threshold``), ``plan`` (``plan_filter``), ``scan`` (the streaming scan and its external
  sort, ``KeptRuns``) and ``summary`` (``FilterSummary``).
- ``curate.filters.distributed``: ``run_filter_distributed`` (``curate filter --address``): the
  same subset computed by Ray tasks over the index files.
- ``curate.filters.pool_rules``, ``curate.filters.dedup``: rules computed over the whole pool.
- ``curate.filters.datacomp_text``: DataComp's caption tests (fastText and CLD3 English, word and
  character counts, ImageNet-21k words through WordNet), exact, as Arrow-in Arrow-out functions.
"""

from curate.filters.rules import OK, RULES, Leaf, RuleError, check_predicate, leaves, parse_rule, resolve
from curate.filters.run import FilterSummary, pool_threshold, run_filter

__all__ = ["OK", "RULES", "Leaf", "RuleError", "check_predicate", "leaves", "parse_rule", "resolve",
           "FilterSummary", "pool_threshold", "run_filter"]
