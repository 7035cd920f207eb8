"""The registry: versioned folders, an atomic `current` pointer, promotion and rollback."""

import json
import os
import subprocess
import sys

import pytest

from distill import registry
from distill.errors import DistillError


def fake_version(models, version):
    path = models / "student" / version
    path.mkdir(parents=True)
    (path / "distill.json").write_text(json.dumps({"version": version}))


def test_promote_and_rollback(tmp_path):
    for version in ("v0001", "v0002"):
        fake_version(tmp_path, version)
    with pytest.raises(DistillError, match="no earlier promoted version"):
        registry.rollback(tmp_path, "student")
    registry.promote(tmp_path, "student", "v0001")
    registry.promote(tmp_path, "student", "v0002")
    assert registry.current(tmp_path, "student") == "v0002"
    assert registry.rollback(tmp_path, "student") == "v0001"
    assert registry.current(tmp_path, "student") == "v0001"
    with pytest.raises(DistillError, match="no version 'v0009'"):
        registry.promote(tmp_path, "student", "v0009")
    assert registry.next_version(tmp_path, "student") == "v0003"


def test_a_killed_promotion_leaves_a_valid_current(tmp_path):
    """A process killed while promoting in a loop never leaves `current` empty or half-written."""
    for version in ("v0001", "v0002"):
        fake_version(tmp_path, version)
    registry.promote(tmp_path, "student", "v0001")
    code = ("import sys; from pathlib import Path; from distill import registry\n"
            "while True:\n"
            "    for v in ('v0001', 'v0002'): registry.promote(Path(sys.argv[1]), 'student', v)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    for _ in range(200):
        assert (tmp_path / "student" / "current").read_text().strip() in {"v0001", "v0002"}
    os.kill(process.pid, 9)
    process.wait()
    assert registry.current(tmp_path, "student") in {"v0001", "v0002"}


def test_eval_figures_are_recorded_in_the_manifest_and_a_corrupted_one_is_named(tmp_path):
    fake_version(tmp_path, "v0001")
    registry.record_eval(tmp_path, "student", "v0001", {"f1_vs_teacher": 0.9})
    assert registry.manifest(tmp_path, "student", "v0001") == {"version": "v0001", "eval": {"f1_vs_teacher": 0.9}}
    (tmp_path / "student" / "v0001" / "distill.json").write_text("{not json")
    with pytest.raises(DistillError, match="is corrupted; retrain or promote another version"):
        registry.manifest(tmp_path, "student", "v0001")
    assert registry.current(tmp_path, "student") is None  # never promoted
