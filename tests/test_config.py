"""``curate.config``: one way to check a setting (type, bounds and choices from the field's
metadata), sections built from YAML mappings, and each flag's help from its dataclass."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

import pytest

from curate.config import AT_LEAST_0, POSITIVE, build_section, check_field, read_yaml_mapping


@dataclass
class Section:
    """A settings section of the kind every curate config is made of.

    Attributes:
        workers: worker processes, more than 0.
        retries: tries again, 0 or more.
        share: a fraction of the pool, from 0 to 1.
        mode: how to run, one of fast or exact.
        batch_size: rows a batch, or None (auto).
    """

    workers: int = field(default=2, metadata=POSITIVE)
    retries: int = field(default=0, metadata=AT_LEAST_0)
    share: float = field(default=0.5, metadata={"min": 0, "max": 1})
    mode: str = field(default="fast", metadata={"choices": ("fast", "exact")})
    batch_size: int | None = field(default=None, metadata=POSITIVE)


def check(name, value):
    f = {f.name: f for f in fields(Section)}[name]
    return check_field(f"s.{name}", value, f, getattr(Section(), name))


def test_check_field_enforces_the_bounds_and_choices_of_its_metadata():
    assert check("workers", 3) == 3 and check("retries", 0) == 0
    assert check("share", 0) == 0.0 and check("share", 1) == 1.0  # bounds are inclusive; an int is a float
    assert check("mode", "exact") == "exact"
    assert check("batch_size", None) is None and check("batch_size", "auto") is None  # auto passes the bounds
    for name, value, message in [
        ("workers", 0, "s.workers must be a positive number, got 0"),
        ("workers", -1, "s.workers must be a positive number"),
        ("batch_size", 0, "s.batch_size must be a positive number"),
        ("retries", -1, "s.retries must be at least 0, got -1"),
        ("share", -0.1, "s.share must be at least 0"),
        ("share", 1.5, "s.share must be at most 1, got 1.5"),
        ("mode", "slow", "s.mode must be one of fast, exact, got 'slow'"),
        ("workers", "2", "s.workers must be int"),
        ("workers", True, "s.workers must be int"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            check(name, value)


def test_build_section_checks_every_key_and_names_it():
    assert build_section(Section, None, "s") == Section()
    assert build_section(Section, {"workers": 4, "share": 1}, "s") == Section(workers=4, share=1.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['worker'\] in config section 's'"):
        build_section(Section, {"worker": 4}, "s")
    with pytest.raises(ValueError, match="config section 's' must be a mapping, got list"):
        build_section(Section, [1], "s")
    with pytest.raises(ValueError, match=r"^s\.share must be at most 1"):
        build_section(Section, {"share": 2}, "s")
    with pytest.raises(ValueError, match="^workers must be a positive number"):  # a flat config: no prefix
        build_section(Section, {"workers": 0}, "")


def test_read_yaml_mapping_says_what_is_wrong_with_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("detect: {long_side: 512}\n")
    assert read_yaml_mapping(good, "config") == {"detect": {"long_side": 512}}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml_mapping(empty, "config") == {}
    with pytest.raises(FileNotFoundError, match="train config file not found"):
        read_yaml_mapping(tmp_path / "nope.yaml", "train config")
    with pytest.raises(ValueError, match="is not a file"):
        read_yaml_mapping(tmp_path, "config")
    for text, message in [("a: [unclosed", "is not valid YAML"), ("- 1\n- 2\n", "must be a mapping, got list"),
                          ("42", "must be a mapping, got int")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_yaml_mapping(bad, "config")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="is not valid YAML"):
        read_yaml_mapping(binary, "config")


def test_field_docs_reads_each_attribute_of_the_docstring():
    from curate.config import field_docs

    docs = field_docs(Section)
    assert docs["workers"] == "worker processes, more than 0."
    assert docs["batch_size"] == "rows a batch, or None (auto)."
    assert set(docs) == {f.name for f in fields(Section)}


def test_every_setting_flag_has_help_from_its_dataclass():
    """The help text of each generated flag is the field's docstring entry (no flag without one)."""
    import dataclasses

    from curate.config import field_docs
    from curate.evaluate.make_evalset import EvalsetConfig
    from curate.evaluate.run import EvalConfig
    from curate.io.reshard import ReshardConfig
    from curate.report.data import ReportConfig
    from curate.scoring.config import SECTIONS
    from curate.train.config import TrainConfig

    for cls in (*SECTIONS.values(), TrainConfig, EvalConfig, ReportConfig, ReshardConfig, EvalsetConfig):
        docs = field_docs(cls)
        assert [f.name for f in dataclasses.fields(cls) if len(docs.get(f.name, "")) < 10] == [], cls.__name__
