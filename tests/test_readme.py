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
