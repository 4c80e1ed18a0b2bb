"""Usage errors: every one is a clear message and exit code 2, before any shard is read."""

from __future__ import annotations

import pytest
import torch

from curate import schema as S
from curate.cli import main
from curate.scoring.config import PipelineConfig, config_from_dict, load_config
from tests.conftest import SHARDS, TESTS

TINY = TESTS.parent / "pipelines" / "tiny_cpu.yaml"


def run(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("score: [unclosed", "not valid YAML"),
        ("42", "must be a mapping"),
        ("tiny", "must be a mapping"),
        ("detect: {long_side: '512'}", "detect.long_side must be int"),
        ("detect: {long_side: 500}", "multiple of 32"),
        ("detect: {long_sid: 512}", "unknown key"),
        ("mask: {method: blur}", "mask.method"),
        ("score: {num_cpus: 0}", "score.num_cpus must be a positive number"),
        ("decode: {background: [1, 2]}", "list of 3 integers"),
        ("nonsense: {}", "unknown config section"),
    ],
)
def test_bad_configs(tmp_path, capsys, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    code, err = run(["score", str(SHARDS[0]), "--out", str(tmp_path / "o"), "--config", str(cfg)], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_config_coercion():
    cfg = config_from_dict({"detect": {"num_gpus": 1}, "decode": {"background": [0, 0, 0]}})
    assert cfg.detect.num_gpus == 1.0 and cfg.decode.background == (0, 0, 0)
    assert config_from_dict({"score": {"pretrained": None}}).score.pretrained is None
    assert load_config(None) == PipelineConfig()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-cpus", "0"], "must be at least 1"),
        (["--detect-long-side", "0"], "detect.long_side must be a positive number"),
        (["--detector", "bogus"], "detect.detector must be one of craft, dbnet, none"),
        (["--score-precision", "fp16"], "score.precision must be one of auto, fp32, bf16"),
        (["--detect-num-actors", "many"], "'many' is not a number"),
        (["--config", "/tmp"], "is not a file"),
        (["--config", "/nonexistent.yaml"], "config file not found"),
        (["--clip-model", "ViT-Nope"], "unknown open_clip model"),
        (["--clip-model", "tiny", "--pretrained", "/tmp"], "is a folder"),
    ],
)
def test_bad_arguments(tmp_path, capsys, extra, message):
    code, err = run(["score", str(SHARDS[0]), "--out", str(tmp_path / "o")] + extra, capsys)
    assert code == 2 and message in err, err


def test_a_usage_error_is_one_line(tmp_path, capsys):
    """argparse's errors come without the 20-line usage in front of them (issue 30)."""
    code, err = run(["score", str(SHARDS[0]), "--out", str(tmp_path / "o"), "--detector", "easyocr"], capsys)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert err.startswith("curate score: error:") and "detect.detector must be one of" in err
    assert "(see `curate score --help`)" in err
    code, err = run(["filtr"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "invalid choice: 'filtr'" in err, err


def test_a_train_dir_that_does_not_exist(tmp_path, capsys):
    code, err = run(["evaluate", "--train-dir", str(tmp_path / "trian"), "--tasks", "cifar10",
                     "--data-dir", str(tmp_path), "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "trian: no such folder" in err, err


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    code, err = run(["score", str(SHARDS[0]), "--out", str(f), "--clip-model", "tiny"], capsys)
    assert code == 2 and "not a folder" in err
    code, err = run(["score", str(SHARDS[0]), "--out", str(f / "sub"), "--clip-model", "tiny"], capsys)
    assert code == 2 and "cannot create" in err


def test_pretrained_file_that_is_not_a_checkpoint(tmp_path, capsys):
    junk = tmp_path / "r.pt"
    junk.write_bytes(bytes(range(256)) * 20)
    code, err = run(["score", str(SHARDS[0]), "--out", str(tmp_path / "o"), "--clip-model", "tiny",
                     "--pretrained", str(junk)], capsys)
    assert code == 2 and "does not load into open_clip model 'tiny'" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, wrong)
    code, err = run(["score", str(SHARDS[0]), "--out", str(tmp_path / "o"), "--clip-model", "tiny",
                     "--pretrained", str(wrong)], capsys)
    assert code == 2 and "Missing key(s)" in err


def test_legacy_checkpoint_format_is_accepted(tmp_path):
    import open_clip

    from curate.models import register_configs, resolve_pretrained

    register_configs()
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": open_clip.create_model("tiny").state_dict()}, path, _use_new_zipfile_serialization=False)
    assert resolve_pretrained("tiny", str(path)).path == str(path)


def test_resources_the_cluster_cannot_give():
    """The check is derived from the stage specs: every pool at its smallest plus one task."""
    from curate.models import resolve_pretrained
    from curate.runtime import ClusterResources
    from curate.scoring.plan import check_resources, fit_to_cluster, stage_specs

    tiny = resolve_pretrained("tiny", None)
    laptop = ClusterResources(cpus=2, gpus=0)

    def check(cfg, cluster=laptop):
        sized = fit_to_cluster(cfg, cluster)
        check_resources(stage_specs(sized, tiny), sized.decode.num_cpus, cluster)

    check(load_config(TINY))  # fits 2 CPUs
    check(PipelineConfig())  # the defaults (auto) fit a 2-core laptop
    big = PipelineConfig()
    big.detect.num_cpus = big.score.num_cpus = 1.0  # set by hand: 1 CPU per actor + tasks > 2 CPUs
    with pytest.raises(ValueError, match="CPUs"):
        check(big)
    gpu = load_config(TINY)
    gpu.score.num_gpus = 1
    with pytest.raises(ValueError, match="GPUs"):
        check(gpu)
    check(gpu, ClusterResources(cpus=2, gpus=0, fixed=False))  # a cluster that may autoscale: warn only

def test_one_name_per_setting_in_yaml_flags_api_and_metadata():
    """Every setting's name is the same in YAML (section.key), on the command line (--section-key),
    in curate.score's keyword arguments (section__key) and, for those recorded, in the index's
    Parquet metadata (curate.section.key)."""
    import dataclasses

    from curate.cli import build_parser
    from curate.scoring.config import SECTIONS, apply_settings

    score = build_parser()._subparsers._group_actions[0].choices["score"]
    flags = {opt for action in score._actions for opt in action.option_strings}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"--{section}-{f.name}".replace("_", "-") in flags
            value = getattr(cls(), f.name)
            assert config_from_dict({section: {f.name: value}}) == PipelineConfig()  # the YAML key
            expected = PipelineConfig()
            if (section, f.name) == ("score", "clip_model"):
                expected.score.pretrained = None  # a model given without weights: random init, as open_clip
            assert apply_settings(PipelineConfig(), {f"{section}__{f.name}": value}) == expected
    for key in (S.META_CLIP_MODEL, S.META_DETECTOR, S.META_DETECT_LONG_SIDE, S.META_MASK_METHOD):
        section, name = key.removeprefix(S.META_PREFIX).split(".")
        assert name in {f.name for f in dataclasses.fields(SECTIONS[section])}, key


def test_legacy_metadata_keys_are_read_under_their_names(tmp_path):
    """An index file written before the settings were named as in the config is read with the new keys."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.io.index import read_index_metadata

    path = tmp_path / "old.parquet"
    table = pa.table({"x": [1]}).replace_schema_metadata({"curate.detect_long_side": "512", "curate.detector": "craft"})
    pq.write_table(table, path)
    assert read_index_metadata(path) == {S.META_DETECT_LONG_SIDE: "512", S.META_DETECTOR: "craft"}
