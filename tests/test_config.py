import pytest

from distill.config import Workspace, load_config
from distill.errors import DistillError


def test_defaults_load_with_types():
    config = load_config()
    assert config.teacher.backend == "extractive"
    assert isinstance(config.teacher.openai.timeout_s, float)
    assert config.corpus.allowed_sources == ["*"]


def test_workspace_file_then_overrides(tmp_path):
    (tmp_path / "distill.toml").write_text('[teacher]\nbackend = "openai"\ncontext_chunks = 2\n')
    config = load_config(tmp_path, {"teacher": {"context_chunks": 1}})
    assert config.teacher.backend == "openai"
    assert config.teacher.context_chunks == 1
    assert config.index.top_k == load_config().index.top_k


def test_unknown_key_is_named(tmp_path):
    (tmp_path / "distill.toml").write_text("[teacher]\nbakend = 'openai'\n")
    with pytest.raises(DistillError, match="teacher.bakend"):
        load_config(tmp_path)


def test_wrong_type_is_named():
    with pytest.raises(DistillError, match="index.top_k"):
        load_config(None, {"index": {"top_k": "five"}})


def test_an_enum_setting_outside_its_choices_is_named():
    with pytest.raises(DistillError, match=r"setting 'eval.teacher_pricing' must be one of api, local \(got 'free'\)"):
        load_config(None, {"eval": {"teacher_pricing": "free"}})


@pytest.mark.parametrize("section, name", [("router", "fast_path"), ("student", "mode"), ("router", "min_student_logprob")])
def test_a_removed_setting_says_why_and_what_to_do(tmp_path, section, name):
    (tmp_path / "distill.toml").write_text(f'[{section}]\n{name} = "x"\n')
    with pytest.raises(DistillError, match=rf"setting '{section}.{name}' was removed: .*; delete it from your config"):
        load_config(tmp_path)


def test_invalid_toml_names_the_file(tmp_path):
    (tmp_path / "distill.toml").write_text("[teacher\n")
    with pytest.raises(DistillError, match="distill.toml"):
        load_config(tmp_path)


def test_workspace_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    assert Workspace.resolve().home == tmp_path.resolve()
    assert Workspace.resolve(tmp_path / "x").traces_db == (tmp_path / "x" / "traces" / "traces.duckdb").resolve()
