"""The pool of ``curate filter`` (``IndexPool``): the ``curate.filters.rules.Pool`` that a rule
is resolved against on one node, over the locked-down DuckDB connection of ``curate.query``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema as S
from curate.filters.rules import OK, Leaf, Pool
from curate.filters.thresholds import pool_threshold
from curate.io.atomic import atomic_path, refuse_foreign
from curate.io.datacomp import SCORE_COLUMNS as DATACOMP_SCORES
from curate.query import VIEW, score_index_of


class IndexPool(Pool):
    """The pool of ``curate filter``: thresholds from the locked DuckDB connection, row sets
    registered in it as in-memory Arrow tables, the index folder for rules that read embedding
    files, and the output folder for what they write for inspection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, index, out: str | Path,
                 work: str | Path | None = None, owned: set[str] = frozenset()):
        super().__init__(lambda column, fraction: pool_threshold(
            con, column, fraction, "TRUE" if column in DATACOMP_SCORES else OK))
        # The score index as given (its embedding files and settings), else the metadata folder.
        self.con, self.index, self.out = con, Path(score_index_of(index)), Path(out)
        self.work = Path(work) if work else None
        self.owned = owned  # names in out that a previous run wrote (``check_filter_out``)
        self.staged: list[tuple[Path, Path]] = []  # (written in work, its place in out)
        self._sets = 0
        self._udfs = 0

    def has_values(self, column: str) -> bool:
        """Whether some ``ok`` row has a value in ``column`` (stops at the first)."""
        if column not in {row[0] for row in self.con.execute(f"DESCRIBE {VIEW}").fetchall()}:
            return False  # an index written before the column existed
        return self.con.execute(f"SELECT 1 FROM {VIEW} WHERE {OK} AND {column} IS NOT NULL LIMIT 1").fetchall() != []

    def need_whole_pool(self, leaf: Leaf, what: str) -> None:
        """This pool holds the whole index: every rule may read it."""

    def artifact(self, name: str) -> Path:
        """``out/<name>``, for what a rule writes for inspection (the folder is created).

        Raises:
            ForeignOutput: ``out/<name>`` exists and no previous filter run wrote it.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        refuse_foreign([self.out / name], lambda path: path.name in self.owned)
        return self.out / name

    def write_artifact(self, path: Path, table: pa.Table) -> None:
        """Write ``table`` to ``path`` (from ``artifact``): into ``work`` when the pool has one,
        moved into place with the subset files by ``publish`` (so a failed run leaves the
        previous run's files as they were), else directly (atomically)."""
        if self.work is None:
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
            return
        staged = self.work / f"artifact-{len(self.staged)}.parquet"
        pq.write_table(table, staged)
        self.staged.append((staged, path))

    def publish(self) -> None:
        """Move the staged artifacts into place."""
        for staged, path in self.staged:
            staged.replace(path)
        self.staged.clear()

    def udf(self, leaf: Leaf, fn: Callable, types: tuple[str, ...] = ("VARCHAR",)) -> str:
        """Register ``fn`` in the connection as ``_udf_<n>`` (``types -> BOOLEAN``, default one
        ``VARCHAR``; Arrow batches, nulls passed in: ``fn`` maps them to False)."""
        name = f"_udf_{self._udfs}"  # our own identifier: nothing of the user's reaches the SQL
        self._udfs += 1
        self.con.create_function(name, fn, list(types), "BOOLEAN", type="arrow", null_handling="special",
                                 side_effects=False)
        return name

    def keep_rows(self, leaf: Leaf, rows: pa.Table) -> str:
        name = f"_keep_{self._sets}"  # our own identifier: nothing of the user's reaches the SQL
        self._sets += 1
        self.con.register(name, rows.select([S.SHARD, S.KEY]))
        return f"(({S.SHARD}, {S.KEY}) IN (SELECT {S.SHARD}, {S.KEY} FROM {name}))"
