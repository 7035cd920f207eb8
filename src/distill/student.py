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

import numpy as np

from distill.errors import DistillError
from distill.registry import MANIFEST
from distill.teacher import Generation


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
        import torch

        prompt = self.template.format(scope=scope or "", query=query.strip())
        inputs = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      output_scores=True, return_dict_in_generate=True, stop_strings=["\n"],
                                      tokenizer=self.tokenizer,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = out.sequences[0, prompt_len:]
        logprobs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, new_tokens)]
        mean = float(np.mean(logprobs)) if logprobs else None
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip().split("\n")[0].strip()
        return Generation(text=text, mean_logprob=mean, answer_score=float(np.exp(mean)) if mean is not None else None,
                          prompt_tokens=int(prompt_len), completion_tokens=int(len(new_tokens)))
