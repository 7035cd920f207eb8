"""A registered student version, loaded for answering: closed-book, with its own prompt template.

    >>> student = Student.load(workspace.models_dir / "student" / "v0003")
    >>> student.answer("How long is the refund window?", scope="billing")
    Generation(text='Refunds are possible within 30 days.', mean_logprob=-0.21, answer_score=0.81, ...)

The prompt is rendered with the template recorded in the version's manifest, the one it was trained
with, so a changed production prompt cannot silently degrade it. Greedy decoding, stopped at the end
of the first line or `max_new_tokens`; the mean token log-probability is the student's confidence.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.errors import DistillError
from distill.registry import MANIFEST
from distill.teacher import Generation, greedy_chat


class Student:
    def __init__(self, model, tokenizer, manifest: dict, max_new_tokens: int = 48):
        self.model, self.tokenizer, self.manifest, self.max_new_tokens = model, tokenizer, manifest, max_new_tokens
        self.template = manifest.get("prompt_template") or "{query}"

    @classmethod
    def load(cls, path: Path, max_new_tokens: int = 48) -> "Student":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        manifest_file = Path(path) / MANIFEST
        if not manifest_file.exists():
            raise DistillError(f"{path} is not a student version (no {MANIFEST}); pass a models/<student>/<version> folder")
        try:
            manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError:
            raise DistillError(f"the manifest {manifest_file} is corrupted; retrain or promote another version") from None
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path))
        model.eval()
        return cls(model, tokenizer, manifest, max_new_tokens)

    def answer(self, query: str, scope: str | None = None) -> Generation:
        prompt = self.template.format(scope=scope or "", query=query.strip())
        generation, raw = greedy_chat(self.model, self.tokenizer, [{"role": "user", "content": prompt}],
                                      self.max_new_tokens, ["\n"])
        generation.text = raw.strip().split("\n")[0].strip()
        return generation
