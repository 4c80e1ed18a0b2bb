"""The one base class of the errors a user can fix (layer 0: imports nothing of curate).

``CurateError`` marks an error whose message is the whole story for the person at the command
line: a bad rule, a bad setting, a folder that is not what it should be, weights that are not on
this machine, an output that would overwrite what curate did not write. The CLI prints its one
line (``curate <command>: error: ...``) and exits 2; a library caller catches ``CurateError``.
Each subclass also keeps the built-in base it had before (``ValueError`` or ``RuntimeError``), so
``except ValueError`` in callers' code still catches it. Python's own ``ValueError`` and
``FileNotFoundError`` raised by curate for bad input are handled the same way by the CLI; any
other exception is a bug and keeps its traceback.

Subclasses: ``curate.filters.rules.RuleError``, ``curate.query.QueryError``,
``curate.scoring.provenance.IndexConfigMismatch``, ``curate.models.PretrainedNotAvailable``,
``curate.io.atomic.ForeignOutput``, ``curate.io.embeddings.NoEmbeddings``,
``curate.filters.datacomp_text.DataCompAssetError``.
"""

from __future__ import annotations


class CurateError(Exception):
    """An error the user can fix from its message alone; the CLI exits 2 with that one line."""
