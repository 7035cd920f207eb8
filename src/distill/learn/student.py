"""A registered version, loaded for answering: the open-book student with the prompt template it
was trained on, or a version that only replays.

    student = load_version(workspace.models_dir / "student" / "v0003")
    student.answer("How long is the refund window?", "billing", evidence=chunks)

The student reads the numbered evidence the router retrieved and answers `[n] quote` or the
refusal (open_book.py). The prompt is rendered with the template recorded in the version's
manifest, the one it was trained with, so a changed production prompt cannot silently degrade it.
Greedy decoding, stopped at the end of the first line or `max_new_tokens`; the mean token
log-probability is the student's confidence.

A version whose traces' evidence distill cannot read (a team's own RAG behind `teacher.backend =
"http"`) has no student: it carries its intents for replay and no weights (`Replay`). So does a
version trained closed-book before the open-book student: a closed-book student never served what
replay did not serve better (docs/student.md), so its weights are not loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from distill.config import CHOICES
from distill.errors import DistillError
from distill.learn.open_book import DEFAULT_TEMPLATE, render_prompt
from distill.llm.local import Generation, greedy_chats
from distill.registry import read_manifest

RUNTIMES = CHOICES["student.runtime"]


class StudentVersion(Protocol):
    """What the router, the nightly gate and the evaluation read of a registered version."""

    manifest: dict  # distill.json: the intents replay answers, the prompt template, where it came from
    folder: Path | None  # the version folder (the coverage evidence is read from it)
    generates: bool  # whether it answers from evidence; a `Replay` only replays its intents' answers


def load_version(path: Path, runtime: str = "fp32", max_new_tokens: int = 48, endpoint=None) -> StudentVersion:
    """The registered version at `path`, as its manifest's `student_mode` says (`STUDENT_MODES`):
    a `Student` (a `RemoteStudent` with `endpoint`), or a `Replay`."""
    mode = read_manifest(path).get("student_mode")
    return STUDENT_MODES.get(mode, STUDENT_MODES["replay"])(Path(path), runtime, max_new_tokens, endpoint)


class Replay:
    """A version that only replays its intents' agreed answers: its manifest, no model."""

    generates = False

    def __init__(self, manifest: dict, folder: Path | None = None):
        self.manifest, self.folder = manifest, folder

    @classmethod
    def load(cls, path: Path) -> "Replay":
        return cls(read_manifest(path), Path(path))


class Student:
    generates = True  # it answers from evidence; a `Replay` does not

    def __init__(self, model, tokenizer, manifest: dict, max_new_tokens: int = 48, folder: Path | None = None):
        self.model, self.tokenizer, self.manifest, self.max_new_tokens = model, tokenizer, manifest, max_new_tokens
        self.template = manifest.get("prompt_template") or DEFAULT_TEMPLATE
        self.folder = folder  # the version folder: the router reads the coverage calibration from it
        self.evidence_words = int((manifest.get("evidence") or {}).get("words") or 250)

    @classmethod
    def load(cls, path: Path, runtime: str = "fp32", max_new_tokens: int = 48) -> "Student":
        """Load a registered version. `runtime` picks the weights used for answering: fp32, bf16
        (half the memory traffic) or int8 dynamic quantization of the linear layers, fastest on a
        CPU (on a GPU, int8 means bf16); docs/design-figures.md has their speeds."""
        manifest = read_manifest(path)
        model, tokenizer = load_causal_lm(Path(path), runtime)
        return cls(model, tokenizer, manifest, max_new_tokens, Path(path))

    def prompt(self, query: str, scope: str | None = None, evidence: list[dict] | None = None) -> list[dict]:
        """The chat the student was trained on: the question with the numbered evidence
        (open_book.render_prompt)."""
        return [{"role": "user", "content": render_prompt(self.template, query, evidence or [], self.evidence_words)}]

    def answer(self, query: str, scope: str | None = None, evidence: list[dict] | None = None) -> Generation:
        return self.answer_batch([(query, scope, evidence)])[0]

    def answer_batch(self, questions: list[tuple], max_time: float | None = None) -> list[Generation]:
        """Answer (query, scope, evidence) triples in one left-padded `generate` call: several times
        the throughput of one at a time on a CPU, with the same greedy answers."""
        if not questions:
            return []
        outputs = greedy_chats(self.model, self.tokenizer, [self.prompt(*q) for q in questions],
                               self.max_new_tokens, ["\n"], max_time)
        for generation, raw in outputs:
            generation.text = first_line(raw)
        return [generation for generation, _ in outputs]


class RemoteStudent(Student):
    """A registered student served by an OpenAI-compatible server instead of in this process:
    vLLM (`vllm serve models/student/v0003 --served-model-name student`) or `distill serve --model`.

    The manifest (intents, prompt template) is read from the same local version folder, so the
    router's coverage and the prompt are those the student was trained with; only generation moves.
    A batch of questions is sent as concurrent requests, which the server batches itself.

        student = RemoteStudent.load(version_dir, ChatEndpoint("http://gpu-1:8000/v1", "student", 10))
        student.answer("How long is the refund window?", scope="billing").text
    """

    def __init__(self, endpoint, manifest: dict, max_new_tokens: int = 48, folder: Path | None = None):
        super().__init__(None, None, manifest, max_new_tokens, folder)
        self.endpoint = endpoint

    @classmethod
    def load(cls, path: Path, endpoint, max_new_tokens: int = 48) -> "RemoteStudent":
        return cls(endpoint, read_manifest(path), max_new_tokens, Path(path))

    def answer_batch(self, questions: list[tuple], max_time: float | None = None) -> list[Generation]:
        generations = self.endpoint.complete_many([self.prompt(*q) for q in questions], self.max_new_tokens,
                                                  ["\n"], timeout_s=max_time)
        for generation in generations:
            generation.text = first_line(generation.text)
        return generations


STUDENT_MODES: dict[str, Callable[..., StudentVersion]] = {  # manifest's student_mode -> (path, runtime, max_new_tokens, endpoint) -> version
    "replay": lambda path, runtime, max_new_tokens, endpoint: Replay.load(path),  # and closed-book versions from before
    "open_book": lambda path, runtime, max_new_tokens, endpoint: (
        Student.load(path, runtime, max_new_tokens) if endpoint is None else RemoteStudent.load(path, endpoint, max_new_tokens)),
}


class ChatModel:
    """Any local causal LM with a chat template, answering chat-completions requests: what
    `distill serve --model` serves, a CPU stand-in for vLLM (greedy decoding only).

    `answer_batch` takes (messages, max_tokens, stop strings) requests and answers those that share
    max_tokens and stop strings in one `generate` call. As in the OpenAI API, a stop string ends the
    answer and is not part of it.
    """

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name

    @classmethod
    def load(cls, name: str, models_dir: Path, runtime: str = "fp32") -> "ChatModel":
        """`name`: 'SmolLM2-135M-Instruct' (the offline GGUF), a registered student version or any
        `save_pretrained` folder."""
        from distill.llm.local import SMOLLM2, local_model

        path = local_model(name, models_dir, "pass a models/<student>/<version> folder")
        model, tokenizer = load_causal_lm(path, runtime)
        return cls(model, tokenizer, name if name == SMOLLM2 else path.resolve().name)

    def answer_batch(self, requests: list[tuple[list[dict], int, tuple[str, ...]]],
                     max_time: float | None = None) -> list[Generation]:
        answers: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, (_, max_tokens, stop) in enumerate(requests):
            groups.setdefault((max_tokens, tuple(stop)), []).append(i)
        for (max_tokens, stop), members in groups.items():
            outputs = greedy_chats(self.model, self.tokenizer, [requests[i][0] for i in members], max_tokens,
                                   list(stop), max_time)
            for i, (generation, raw) in zip(members, outputs):
                cut = min([raw.find(s) for s in stop if s in raw], default=len(raw))
                generation.text = raw[:cut]
                answers[i] = generation
        return answers


def first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def load_causal_lm(path: Path, runtime: str = "fp32"):
    """A `save_pretrained` folder's model (in eval mode, on the GPU when there is one) and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if runtime not in RUNTIMES:
        raise DistillError(f"setting 'student.runtime' must be one of {', '.join(RUNTIMES)} (got {runtime!r})")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    model.eval()
    if torch.cuda.is_available():
        model = model.to("cuda", torch.float32 if runtime == "fp32" else torch.bfloat16)
    elif runtime == "bf16":
        model = model.to(torch.bfloat16)
    elif runtime == "int8":
        model = _quantize_int8(model)
    return model, tokenizer


def _quantize_int8(model):
    """Dynamic int8 quantization of every linear layer (weights int8, activations quantized per
    batch): 2.5x faster decoding on a CPU, but on the PolicyQA student its answers agreed with
    fp32's at token F1 0.54 only (scripts/bench_student.py), hence not the default."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch points eager quantization users to torchao; it still works
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
