import re
import tomllib

import pytest

from distill.config import CHOICES, RENAMED, as_toml, describe, load_config, setting
from distill.errors import DistillError, DistillWarning
from distill.workspace import Workspace


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


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_enum_setting_is_checked(key):
    section, name = key.split(".")
    with pytest.raises(DistillError, match=f"setting '{key}' must be one of"):
        load_config(None, {section: {name: "nonsense"}})
    assert setting(load_config(), key) in CHOICES[key]  # the default is one of its choices


def test_an_old_setting_name_still_works_with_a_warning_naming_the_new_one(tmp_path):
    (tmp_path / "distill.toml").write_text("[serve]\nmax_concurrent = 8\n")
    with pytest.warns(DistillWarning, match=r"'serve.max_concurrent' is now 'serve.max_concurrency'; rename it in .*distill.toml"):
        config = load_config(tmp_path)
    assert config.serve.max_concurrency == 8  # the workspace's value, not the default under the new name
    with pytest.warns(DistillWarning, match="teacher.context_words"):
        assert load_config(None, {"teacher": {"context_token_budget": 99}}).teacher.context_words == 99
    defaults = load_config()
    for old, new in RENAMED.items():  # every old name is gone, every new one a setting
        new = new[0] if isinstance(new, tuple) else new
        with pytest.raises(AttributeError):
            setting(defaults, old)
        setting(defaults, new)
    with pytest.warns(DistillWarning, match="'router.batch_wait_ms' is now 'router.batch_wait_s'"):
        assert load_config(None, {"router": {"batch_wait_ms": 200}}).router.batch_wait_s == 0.2  # converted


def test_as_toml_is_a_config_file_with_the_help_and_the_changed_defaults_marked(tmp_path):
    (tmp_path / "distill.toml").write_text("[router]\nmax_error_rate = 0.05\n")
    config = load_config(tmp_path)
    text = as_toml(config, defaults=load_config())
    assert tomllib.loads(text)["router"]["max_error_rate"] == 0.05
    assert tomllib.loads(text)["teacher"]["openai"]["model"] == config.teacher.openai.model
    assert len(re.findall(r"\(default [^)]*\)", text)) == 1 and "(default 0.02)" in text
    assert {key for key, _, _ in describe(config)} == {key for key, _, _ in describe(load_config())}
    only = as_toml(config, "teacher.backend")
    assert only.splitlines()[0] == "[teacher]" and "one of: extractive, transformers, openai, http" in only
    with pytest.raises(DistillError, match="no setting starts with 'nope'"):
        as_toml(config, "nope")


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


def test_the_docstring_example_runs():
    import doctest

    import distill.config

    assert doctest.testmod(distill.config).attempted == 1 and doctest.testmod(distill.config).failed == 0
