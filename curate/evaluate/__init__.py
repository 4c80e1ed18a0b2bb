"""DataComp-style zero-shot evaluation from local data only (``curate evaluate``, ``curate make-evalset``).

- ``tasks``: DataComp's 40 tasks, main metrics, groups, folder names.
- ``datasets``: webdataset test folders (clip_benchmark's reader) and ImageFolder trees.
- ``run``: metrics through clip_benchmark, ``eval_results.jsonl``, the table.
- ``make_evalset``: class-folder trees and caption files into DataComp-format test folders.
"""
