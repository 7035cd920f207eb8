"""Rewordings the teacher's LLM writes for each trained wording, kept only when RAG answers them the same way.

People reword. A student, and the router's coverage decision, that saw only the wordings asked
before the cutoff know a need by a handful of strings. When the teacher is an LLM, curation can
ask it for `curate.rewordings` other wordings of every trained wording (`curate.rewording_model`
names another writer, for instance SmolLM2 beside the extractive teacher). Each one is then asked of
the teacher, the whole RAG path, and kept only when the answer comes from the intent's document
with the intent's answer (token F1 at least `eval.success_f1`): the rule that joins real wordings
into one intent. A rewording that a high-risk or injection pattern matches is dropped unasked.

Kept rewordings become training examples (`source` "rewording", with the wording they were written
from) and trained wordings of the intent in the router's calibration evidence. They are never
calibration examples themselves (those are what people asked), and a real wording's leave-one-out
score ignores the rewordings written from it, so the calibration stays honest.

    writer = load_writer(config, workspace)
    writer.write(["How do I reset my password?"], 2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from distill.config import Config
from distill.errors import DistillError
from distill.metrics import normalize_query, token_f1
from distill.progress import track
from distill.rag.corpus import cited_document, compile_patterns
from distill.workspace import Workspace

# Few-shot: a 135M instruct model asked to "rephrase" answers the question instead; shown three
# rewordings first, it writes a fourth (see the module's test and docs/coverage.md).
EXAMPLES = [("How long should I boil an egg?", "How many minutes does it take to hard boil an egg?"),
            ("Why is my cat sneezing?", "What makes a cat sneeze a lot?"),
            ("Can I return an item without a receipt?", "Is it possible to get a refund if I lost the receipt?")]
SYSTEM = "You rewrite questions in other words, as another person would ask them. You never answer them."
BATCH = 16  # wordings rewritten per generate call


def conversation(question: str) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    for asked, reworded in EXAMPLES:
        messages += [{"role": "user", "content": f"Rewrite: {asked}"}, {"role": "assistant", "content": reworded}]
    return messages + [{"role": "user", "content": f"Rewrite: {question}"}]


def clean(text: str) -> str:
    """The first line of a generation, without a list number, quotes or a 'Rewrite:' echo."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = re.sub(r"^\s*(\d+[.)]|[-*])\s*", "", line).strip().strip('"“”\'').strip()
    return re.sub(r"^(rewrite|rewording|question)\s*:\s*", "", line, flags=re.IGNORECASE).strip()


def distinct(question: str, candidates: list[str], n: int) -> list[str]:
    """Up to `n` candidates that are questions of a sensible length and differ from the question
    and from each other once normalized."""
    seen, kept = {normalize_query(question)}, []
    for candidate in candidates:
        key = normalize_query(candidate)
        if key and key not in seen and 2 <= len(key.split()) <= 40:
            seen.add(key)
            kept.append(candidate)
    return kept[:n]


class TransformersWriter:
    """A local causal LM with a chat template: the few-shot prompt, sampled `n` times (greedy
    decoding would write one rewording), seeded so a curation run is reproducible."""

    def __init__(self, model, tokenizer, seed: int = 0, max_new_tokens: int = 40):
        self.model, self.tokenizer, self.seed, self.max_new_tokens = model, tokenizer, seed, max_new_tokens

    @classmethod
    def load(cls, name: str, workspace: Workspace, seed: int, setting: str) -> "TransformersWriter":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from distill.llm.local import local_model

        path = local_model(name, workspace.models_dir, f"set {setting}")
        model = AutoModelForCausalLM.from_pretrained(str(path))
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(str(path)), seed)

    def write(self, questions: list[str], n: int) -> list[list[str]]:
        import torch

        tokenizer, written = self.tokenizer, []
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        for start in track(range(0, len(questions), BATCH), "writing rewordings", "batch",
                           disable=len(questions) <= BATCH):
            batch = questions[start:start + BATCH]
            side, tokenizer.padding_side = tokenizer.padding_side, "left"
            try:
                inputs = tokenizer.apply_chat_template([conversation(q) for q in batch], add_generation_prompt=True,
                                                       return_tensors="pt", return_dict=True, padding=True)
            finally:
                tokenizer.padding_side = side
            torch.manual_seed(self.seed + start)
            with torch.inference_mode():
                out = self.model.generate(**inputs.to(self.model.device), max_new_tokens=self.max_new_tokens,
                                          do_sample=True, temperature=0.9, top_p=0.95, num_return_sequences=2 * n,
                                          pad_token_id=pad, stop_strings=["\n"], tokenizer=tokenizer)
            texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for k, question in enumerate(batch):  # twice the samples asked for: small models repeat themselves
                written.append(distinct(question, [clean(t) for t in texts[2 * n * k: 2 * n * (k + 1)]], n))
        return written


class OpenAIWriter:
    """An OpenAI-compatible endpoint (the teacher's): one request per wording asks for `n` rewordings,
    one per line."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def write(self, questions: list[str], n: int) -> list[list[str]]:
        conversations = [conversation(q)[:-1] + [{"role": "user", "content": f"Rewrite in {n} different ways, one per "
                                                                             f"line: {q}"}] for q in questions]
        generations = self.endpoint.complete_many(conversations, max_tokens=40 * n, stop=["\n\n"])
        return [distinct(q, [clean(line) for line in g.text.splitlines()], n) for q, g in zip(questions, generations)]


def load_writer(config: Config, workspace: Workspace):
    """The writer `curate.rewording_model` names ('' = the teacher's own LLM)."""
    name, teacher = config.curate.rewording_model, config.teacher
    if name:
        return TransformersWriter.load(name, workspace, config.train.seed, "curate.rewording_model")
    if teacher.backend == "transformers":
        return TransformersWriter.load(teacher.transformers.model, workspace, config.train.seed,
                                       "teacher.transformers.model")
    if teacher.backend == "openai":
        from distill.rag.generators import openai_endpoint

        return OpenAIWriter(openai_endpoint(teacher.openai))
    raise DistillError(f"setting 'curate.rewordings' needs an LLM to write them and teacher.backend is "
                       f"'{teacher.backend}'; set curate.rewording_model (for example 'SmolLM2-135M-Instruct') "
                       f"or curate.rewordings = 0")


@dataclass
class Rewording:
    """A rewording the teacher answered the way its intent is answered."""
    text: str
    written_from: str  # the trained wording (normalized) it was written from
    intent_id: str
    scope: str
    answer: str  # the teacher's answer to it
    citations: list[str]


def verified_rewordings(workspace: Workspace, config: Config, wordings: list[dict], writer=None) -> tuple[list[Rewording], int]:
    """Rewordings of `wordings` ([{query, scope, intent_id, doc, answer}]: the trained wordings of
    answered intents) written by `writer` (default: `load_writer`) and kept by `verify`; and how
    many were written in all."""
    if not wordings:
        return [], 0
    writer = writer or load_writer(config, workspace)
    written = writer.write([w["query"] for w in wordings], config.curate.rewordings)
    return verify(workspace, config, wordings, written), sum(len(texts) for texts in written)


def verify(workspace: Workspace, config: Config, wordings: list[dict], written: list[list[str]]) -> list[Rewording]:
    """The rewordings (`written[i]` rewrites `wordings[i]`) that RAG answers from the wording's
    document `doc` with its intent's `answer` (token F1 at least `eval.success_f1`). Duplicates,
    wordings already asked and those a high-risk or injection pattern matches are dropped unasked."""
    from distill.rag.teacher import Teacher

    unsafe = (compile_patterns(config.curate.high_risk_patterns, "curate.high_risk_patterns")
              + compile_patterns(config.corpus.injection_patterns))
    asked = {(w["scope"], normalize_query(w["query"])) for w in wordings}
    candidates = []
    for wording, texts in zip(wordings, written):
        for text in texts:
            key = (wording["scope"], normalize_query(text))
            if key not in asked and not any(p.search(text) for p in unsafe):
                asked.add(key)
                candidates.append((wording, text.strip()))
    if not candidates:
        return []
    teacher = Teacher.from_workspace(workspace, config)
    answers = teacher.answer_batch([(text, w["scope"] or None) for w, text in candidates])
    return [Rewording(text, normalize_query(w["query"]), w["intent_id"], w["scope"], answer.answer, list(answer.citations))
            for (w, text), answer in zip(candidates, answers)
            if not answer.refused and answer.citation_valid and cited_document(answer.citations) == w["doc"]
            and token_f1(answer.answer, w["answer"]) >= config.eval.success_f1]
