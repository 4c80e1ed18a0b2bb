"""The README's code does what the README says."""

from __future__ import annotations

import re
import subprocess
import sys

import open_clip
import torch

from tests.conftest import REPO

README_CHECKPOINT = "out/train/checkpoints/step_00000300.pt"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_checkpoint_example_loads_a_curate_checkpoint_as_written(tmp_path):
    """The block that loads a ``curate train`` checkpoint with open_clip runs unchanged in a fresh
    interpreter (in a folder holding a checkpoint at the README's path) and gives the checkpoint's
    weights: open_clip alone does not know curate's ``tiny`` config, the block's
    ``curate.register_configs()`` adds it."""
    block = next(b for b in python_blocks() if "create_model_and_transforms" in b)
    assert README_CHECKPOINT in block
    from curate.models import register_configs

    register_configs()
    torch.manual_seed(123)
    trained = open_clip.create_model("tiny")
    path = tmp_path / README_CHECKPOINT
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": trained.state_dict(), "curate": {"step": 300}}, path)
    script = block + "\nimport torch\ntorch.save(model.state_dict(), 'loaded.pt')\nassert callable(preprocess)\n"
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded[name], value), name


def datacomp_block() -> str:
    """The bash block of README's "DataComp participants" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## DataComp participants"):]
    return re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)


def test_datacomp_track_commands_run_as_written(tmp_path, scored):
    """The DataComp section's filter, report and reshard commands, as written, in a folder holding the
    repository's data and a score index of the sample shards at ``out/index`` (the session's
    scored pool standing in for ``make demo``'s): the metadata-only and the joined filters write
    subsets, the joined one counts the metadata rows the index lacks, and reshard blurs the
    face boxes of the samples it writes. Train and evaluate are the README's own commands
    (tested with their sections) over the resharded shards; here only their flags are parsed."""
    import os
    import shlex

    from curate.cli import build_parser

    commands = [c.replace("\\\n", " ") for c in re.split(r"\n(?=\.venv/bin/curate )", datacomp_block().strip())]
    assert [shlex.split(c)[1] for c in commands] == ["filter", "filter", "report", "reshard", "train", "evaluate"]
    os.symlink(REPO / "tests", tmp_path / "tests")
    os.symlink(REPO / ".venv", tmp_path / ".venv")
    (tmp_path / "out").mkdir()
    os.symlink(scored[0], tmp_path / "out" / "index")
    outputs = []
    for command in commands[:4]:
        r = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-2000:])
        outputs.append(r.stdout)
    assert "not scored    3 row(s)" in outputs[1], outputs[1]
    assert "subset kept" in outputs[2] and (tmp_path / "out/datacomp/report/index.html").is_file(), outputs[2]
    import json

    summary = json.loads((tmp_path / "out/datacomp/shards/reshard_summary.json").read_text())
    assert summary["written_samples"] > 0 and summary["blurred_images"] > 0, summary
    parser = build_parser()
    for command in commands[4:]:
        parser.parse_args(shlex.split(command)[1:])
