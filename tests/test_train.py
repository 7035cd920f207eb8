import json

import pytest
import torch

from distill import registry
from distill.errors import DistillError
from distill.learn.open_book import DEFAULT_TEMPLATE
from distill.learn.train import train
from distill.workspace import Workspace

from conftest import QA, evidence, write_dataset


@pytest.fixture
def workspace(tmp_path, tiny_lm_dir):
    ws = Workspace(tmp_path)
    (tmp_path / "distill.toml").write_text(
        f'[train]\nbase_model = "{tiny_lm_dir}"\nmethod = "lora"\nmax_steps = 12\nbatch_size = 3\nlearning_rate = 5e-3\n'
        f'lr_scheduler = "constant"\nwarmup_ratio = 0.0\n')
    return ws


def test_training_logs_a_falling_loss_changes_weights_and_registers_a_loadable_version(workspace, tmp_path, tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dataset = write_dataset(tmp_path / "ds")
    result = train(workspace, workspace.config(), dataset, progress=False)
    assert result.version == "v0001" and result.steps == 12 and len(result.losses) == 12
    assert result.losses[-1] < result.losses[0]
    model = AutoModelForCausalLM.from_pretrained(str(result.path))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed, "LoRA was merged into the weights"
    tokenizer = AutoTokenizer.from_pretrained(str(result.path))
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Can I pay with PayPal?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert model.generate(**inputs, max_new_tokens=4, do_sample=False).shape[1] > inputs["input_ids"].shape[1]
    manifest = json.loads((result.path / "distill.json").read_text())
    assert manifest["dataset_hash"] == "ab" * 32 and manifest["curation_run_id"] == "run1"
    assert manifest["prompt_template"] == DEFAULT_TEMPLATE and len(manifest["intents"]) == 3
    assert manifest["student_mode"] == "open_book" and manifest["intents"][1]["answer"] == "PayPal is not supported."
    assert manifest["intents"][0]["cited_doc_versions"] == [{"doc_id": "billing/doc0", "version": 1}]
    assert manifest["intents"][0]["wordings"] == ["How long is the refund window?"]
    assert "base_model:" in (result.path / "README.md").read_text()
    assert registry.current(workspace.models_dir, "student") is None  # training never promotes
    logged = [json.loads(line) for line in (result.path / "training_log.jsonl").read_text().splitlines()]
    assert [row["loss"] for row in logged if "loss" in row] == pytest.approx(result.losses)  # the raw log, kept


def test_training_shows_its_progress_as_lines_in_a_log_not_the_trainers_dicts(workspace, tmp_path, capsys):
    import warnings

    dataset = write_dataset(tmp_path / "ds")
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        train(workspace, workspace.config({"train": {"max_steps": 3}}), dataset, progress=True)
    assert not [w for w in raised if issubclass(w.category, FutureWarning)]  # no deprecation reaches the user
    shown = capsys.readouterr()  # not a terminal: whole lines (a bar's frames would be one long line in a log)
    lines = shown.err.splitlines()
    assert lines[0] == "training: 0/3 steps" and lines[-1].startswith("training: 3/3 steps (100%) in ")
    assert ", loss " in lines[-1] and "\r" not in shown.err
    assert "{'loss'" not in shown.out + shown.err and "grad_norm" not in shown.out + shown.err


def test_full_fine_tune(workspace, tmp_path):
    result = train(workspace, workspace.config({"train": {"method": "full", "max_steps": 4}}),
                   write_dataset(tmp_path / "ds"), progress=False)
    assert result.steps == 4 and (result.path / "model.safetensors").exists()
    # what vLLM loads: a plain model folder with its tokenizer and chat template, nothing of the trainer's
    names = {p.name for p in result.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert "training_args.bin" not in names and not any(n.startswith("adapter") for n in names)
    assert "vllm serve" in (result.path / "README.md").read_text()


@pytest.mark.slow
def test_data_parallel_training_with_two_processes_registers_one_version(workspace, tmp_path):
    """torchrun (as `accelerate launch` with configs/accelerate/multi-gpu.yaml does on GPUs): two
    DDP processes on the CPU (gloo); only the main one writes the registry."""
    import subprocess
    import sys
    from pathlib import Path

    dataset = write_dataset(tmp_path / "ds")
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "distill.cli", "train", "--dataset",
                           str(dataset), "--method", "full", "--max-steps", "3", "--home", str(workspace.home)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in registry.student_dir(workspace.models_dir, "student").iterdir()
                  if not p.name.startswith(".")) == ["v0001"]
    metrics = json.loads((registry.student_dir(workspace.models_dir, "student") / "v0001" / "distill.json")
                         .read_text())["metrics"]
    assert metrics["processes"] == 2 and metrics["steps"] == 3 and metrics["tokens_per_s"] > 0


def test_bad_inputs_are_one_line_errors(workspace, tmp_path):
    with pytest.raises(DistillError, match="distill curate"):
        train(workspace, workspace.config())  # no curation run yet
    with pytest.raises(DistillError, match="does not exist"):
        train(workspace, workspace.config(), tmp_path / "missing")
    (tmp_path / "notads").mkdir()
    with pytest.raises(DistillError, match="not a saved dataset"):
        train(workspace, workspace.config(), tmp_path / "notads")
    import datasets

    datasets.Dataset.from_list([{"text": "hello"}]).save_to_disk(str(tmp_path / "wrong"))
    with pytest.raises(DistillError, match="lacks column 'completion'"):
        train(workspace, workspace.config(), tmp_path / "wrong")
    datasets.Dataset.from_dict({"prompt": [], "completion": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(DistillError, match="is empty|cannot read the dataset"):  # datasets cannot reload 0 rows
        train(workspace, workspace.config(), tmp_path / "empty")
    with pytest.raises(DistillError, match="train.base_model"):
        train(workspace, workspace.config({"train": {"base_model": str(tmp_path / "nope")}}), write_dataset(tmp_path / "ds"))
    with pytest.raises(DistillError, match="train.method"):
        train(workspace, workspace.config({"train": {"method": "qlora"}}), write_dataset(tmp_path / "ds2"))


def test_a_trained_version_answers_with_its_own_template(workspace, tmp_path):
    from distill.learn.student import Student

    result = train(workspace, workspace.config({"train": {"max_steps": 2}}), write_dataset(tmp_path / "ds"),
                   progress=False)
    student = Student.load(result.path, max_new_tokens=5)
    assert student.template == DEFAULT_TEMPLATE
    shown = evidence("billing", 1, "PayPal is not supported.")
    assert "PayPal is not supported." in student.prompt("Can I pay with PayPal?", "billing", shown)[0]["content"]
    generation = student.answer("Can I pay with PayPal?", "billing", shown)
    assert 0 < generation.completion_tokens <= 5 and generation.mean_logprob < 0
    assert 0 < generation.answer_score <= 1 and generation.prompt_tokens > 5
    with pytest.raises(DistillError, match="not a student version"):
        Student.load(tmp_path)


@pytest.mark.parametrize("name, kind", [("cpu", "NO"), ("multi-gpu", "MULTI_GPU"), ("fsdp", "FSDP"),
                                        ("multi-node", "MULTI_GPU")])
def test_the_shipped_accelerate_configs_parse(name, kind):
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"))
    assert str(config.distributed_type).split(".")[-1] == kind


def test_a_dataset_without_readable_evidence_becomes_a_version_that_only_replays(workspace, tmp_path):
    """A team's own RAG: curate records student_mode 'replay'; the version carries the intents and no weights."""
    from distill.learn.student import Replay, load_version

    result = train(workspace, workspace.config(), write_dataset(tmp_path / "ds", student_mode="replay",
                                                                 prompt_template=None), progress=False)
    assert result.steps == 0 and result.version == "v0001"
    assert not any(result.path.glob("*.safetensors")) and "no model" in (result.path / "README.md").read_text()
    version = load_version(result.path)
    assert isinstance(version, Replay) and not version.generates
    assert [c["answer"] for c in version.manifest["intents"]] == [a for _, _, a in QA]
    manifest = json.loads((result.path / "distill.json").read_text())
    (result.path / "distill.json").write_text(json.dumps({**manifest, "student_mode": "closed_book"}))
    assert isinstance(load_version(result.path), Replay)  # a mode no longer served (STUDENT_MODES) replays
