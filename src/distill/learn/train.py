"""Fine-tune the student on a curated dataset with TRL, and register the result.

    result = train(workspace, config)              # the latest curation run's dataset
    result.version, result.path  # ('v0003', PosixPath('models/student/v0003'))

TRL's `SFTTrainer` trains on the dataset as `curate` wrote it (conversational prompt/completion:
the question with its evidence, and `[n] quote` or the refusal), so the loss is on the completion
only and the student's own chat template frames every example. A full fine-tune by default;
`train.method = "lora"` trains peft adapters on every linear layer instead and merges them, so
either way a version is a plain `save_pretrained` folder that transformers, vLLM or any
OpenAI-compatible server loads. CPU unless accelerate finds a GPU; `accelerate launch` with
a config from `configs/accelerate/` runs the same command data-parallel on several GPUs. Checkpoints every
`train.save_steps` steps under `models/<student>/.work/<dataset hash>/`: rerunning a killed training
resumes from the last one. A version folder appears only when it is complete (written under a
temporary name, then renamed); training never changes which version is `current`. A dataset whose
evidence distill cannot read (`student_mode` "replay", a team's own RAG) becomes a version with its
intents and no weights, at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from distill import registry
from distill.config import Config
from distill.errors import DistillError
from distill.learn.coverage import COVERAGE_FILE
from distill.llm.local import local_model
from distill.progress import quiet_library_bars
from distill.store.schema import current_fields
from distill.store.segments import has_traces
from distill.store.traces import TraceStore
from distill.workspace import Workspace


@dataclass
class TrainResult:
    version: str
    path: Path
    examples: int
    steps: int
    losses: list[float]
    runtime_s: float


def latest_dataset(workspace: Workspace) -> Path:
    """The dataset of the most recent curation run that produced one."""
    if not has_traces(workspace.traces_db):
        raise DistillError(f"no trace store at {workspace.traces_db}; run `distill collect` and `distill curate` first")
    with TraceStore(workspace.traces_db) as store:
        rows = store.sql("SELECT dataset_path FROM curation_runs WHERE dataset_path IS NOT NULL "
                         "ORDER BY created_at DESC LIMIT 1")
    if not rows:
        raise DistillError("no curation run has produced a training set yet; run `distill curate` first")
    return Path(rows[0]["dataset_path"])


def load_training_set(path: Path):
    import datasets

    if not (path / "dataset_info.json").exists() and not (path / "state.json").exists():
        raise DistillError(f"{path} is not a saved dataset; pass a folder written by `distill curate`")
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, IndexError) as err:
        raise DistillError(f"cannot read the dataset {path} ({type(err).__name__}); rerun `distill curate`") from None
    missing = {"prompt", "completion"} - set(dataset.column_names)
    if missing:
        raise DistillError(f"the dataset {path} lacks column '{sorted(missing)[0]}'; it needs prompt and completion "
                           f"(conversational), as `distill curate` writes them")
    if len(dataset) == 0:
        raise DistillError(f"the dataset {path} is empty; relax the [curate] rules or collect more traffic")
    return dataset


def resolve_base(name: str, workspace: Workspace) -> Path:
    return local_model(name, workspace.models_dir, "set train.base_model")


TRAINING_LOG = "training_log.jsonl"  # every dict the trainer logged (loss, grad_norm, learning_rate, ...), one per line


def training_log_callback(path: Path, progress: bool, deadline: float | None = None):
    """A transformers callback: one progress bar per training with the latest loss (when
    `progress`), each logged dict appended to `path` as a JSON line, and a stop after the step
    that passes `deadline` (a `time.time()`; `train.max_minutes`)."""
    from transformers import TrainerCallback

    from distill.progress import Progress

    class TrainingLog(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and progress:
                self.bar = Progress(state.max_steps, "training", "step", initial=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)
            if deadline is not None and time.time() >= deadline:  # the nightly's budget: stop and keep what we have
                control.should_training_stop = True
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as out:
                out.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")
            if self.bar is not None and "loss" in logs:
                self.bar.set_figures(loss=f"{float(logs['loss']):.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return TrainingLog()


def _check_disk(target: Path, base: Path) -> None:
    needed = 2 * sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if free < needed:
        raise DistillError(f"{target} has {free / 1e6:.0f} MB free and training needs about {needed / 1e6:.0f} MB; "
                           f"free some space or point --home elsewhere")


def train(workspace: Workspace, config: Config, dataset_path: Path | None = None,
          progress: bool = True) -> TrainResult | None:
    """Train a new student version on `dataset_path` (default: the latest curated set).

    Returns None in the non-main processes of a multi-process `accelerate launch`."""
    with warnings.catch_warnings():  # peft and the trainer call a renamed transformers method: theirs to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return _train(workspace, config, dataset_path, progress)


def _train(workspace: Workspace, config: Config, dataset_path: Path | None, progress: bool) -> TrainResult | None:
    cfg = config.train
    quiet_library_bars()
    dataset_path = Path(dataset_path) if dataset_path else latest_dataset(workspace)
    if not dataset_path.exists():
        raise DistillError(f"dataset {dataset_path} does not exist; run `distill curate` or pass --dataset")
    dataset = load_training_set(dataset_path)
    meta_file = dataset_path / "distill.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    root = registry.student_dir(workspace.models_dir, cfg.student_name)
    if meta.get("student_mode") == "replay":  # no evidence to train on (a team's own RAG): the intents, no weights
        return _replay_version(workspace, config, dataset, dataset_path, meta)
    base = resolve_base(cfg.base_model, workspace)
    _check_disk(root, base)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base))
    gpu = torch.cuda.is_available()
    work = root / ".work" / (meta.get("content_hash") or dataset_path.name)[:16]
    # transformers 5 renamed gradient checkpointing to activation checkpointing (the old name warns).
    renamed = "activation_checkpointing" in {f.name for f in dataclasses.fields(SFTConfig)}
    args = SFTConfig(
        output_dir=str(work), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, max_length=cfg.max_length,
        logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, seed=cfg.seed,
        report_to=[], disable_tqdm=True, use_cpu=not gpu,  # our own bar (or log lines): TrainingLog
        # TRL defaults to bf16 and gradient checkpointing; on a CPU without bf16 units both make a
        # step of the 135M model 30x slower (98 s instead of about 3 s), and it fits in memory anyway.
        bf16=gpu and torch.cuda.is_bf16_supported(),
        **{"activation_checkpointing" if renamed else "gradient_checkpointing": gpu})
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    # One bar with the loss instead of a printed dict per step; every logged dict goes to a file.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    deadline = time.time() + cfg.max_minutes * 60 if cfg.max_minutes > 0 else None
    trainer.add_callback(training_log_callback(work / TRAINING_LOG, progress, deadline))
    resume = any(p.name.startswith("checkpoint-") for p in work.iterdir()) if work.exists() else False
    started = time.time()
    trainer.train(resume_from_checkpoint=resume or None)
    runtime = time.time() - started
    version = registry.next_version(workspace.models_dir, cfg.student_name)
    tmp = root / f".{version}.tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    # Every process calls save_model: under FSDP it gathers the sharded weights; only the main one writes.
    trainer.save_model(str(tmp))
    if not trainer.is_world_process_zero():
        return None  # under `accelerate launch` or torchrun with several processes, only the main one registers
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    (tmp / "training_args.bin").unlink(missing_ok=True)
    if cfg.method == "lora":  # the saved adapter, merged into the base: a plain model folder vLLM loads
        from peft import PeftModel

        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(tmp)).merge_and_unload()
        shutil.rmtree(tmp)
        merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if (work / TRAINING_LOG).exists():
        shutil.copy(work / TRAINING_LOG, tmp / TRAINING_LOG)
    if (dataset_path / COVERAGE_FILE).exists():  # the evidence the router's coverage decision is calibrated on
        shutil.copy(dataset_path / COVERAGE_FILE, tmp / COVERAGE_FILE)
    manifest = _manifest(cfg, version, dataset, dataset_path, meta, str(base), {
        "train_losses": losses, "steps": trainer.state.global_step, "runtime_s": round(runtime, 1),
        "processes": trainer.args.world_size, "tokens": int(tokens),
        "tokens_per_s": round(tokens / runtime, 1) if runtime > 0 else None})
    registry.complete(tmp, manifest, model_card(manifest))
    os.replace(tmp, root / version)
    shutil.rmtree(work, ignore_errors=True)
    return TrainResult(version, root / version, len(dataset), trainer.state.global_step, losses, runtime)


def _replay_version(workspace: Workspace, config: Config, dataset, dataset_path: Path, meta: dict) -> TrainResult:
    """A version with the curated intents and no weights, for traces whose evidence distill cannot
    read (a team's own RAG): the router replays its intents' agreed answers and sends the rest to
    RAG. Training a student there would buy nothing: with no evidence to read at run time it could
    only answer closed-book, which never served what replay did not serve better (docs/student.md)."""
    cfg = config.train
    root = registry.student_dir(workspace.models_dir, cfg.student_name)
    version, tmp = registry.staging(workspace.models_dir, cfg.student_name)
    tmp.mkdir(parents=True)
    if (dataset_path / COVERAGE_FILE).exists():
        shutil.copy(dataset_path / COVERAGE_FILE, tmp / COVERAGE_FILE)
    manifest = _manifest(cfg, version, dataset, dataset_path, meta, None,
                         {"train_losses": [], "steps": 0, "runtime_s": 0.0, "processes": 1, "tokens": 0,
                          "tokens_per_s": None})
    registry.complete(tmp, manifest, model_card(manifest))
    os.replace(tmp, root / version)
    return TrainResult(version, root / version, len(dataset), 0, [], 0.0)


def _manifest(cfg, version: str, dataset, dataset_path: Path, meta: dict, base_path: str | None, metrics: dict) -> dict:
    """distill.json: where the version came from, how it was trained, and its intents (what replay
    answers, with the wordings, citations and document versions the router checks)."""
    intents = {}
    for row in dataset:
        row = current_fields(dict(row))  # a dataset curated before #25 names its intents cluster_id
        intent = intents.setdefault(row.get("intent_id"), {
            "intent_id": row.get("intent_id"), "scope": row.get("scope"), "wordings": [],
            "answer": row.get("answer") or row["completion"][-1]["content"],  # what replay answers
            "citations": row.get("citations") or [], "cited_doc_versions": row.get("cited_doc_versions") or [],
            "retrieved_doc_versions": row.get("retrieved_doc_versions") or [], "rewordings": []})
        if row.get("query") and row["query"] not in intent["wordings"] + intent["rewordings"]:
            # asked before the cutoff, or written by an LLM and verified (`curate.rewordings`)
            intent["rewordings" if row.get("source") == "rewording" else "wordings"].append(row["query"])
    return {
        "student": cfg.student_name, "version": version, "created_at": datetime.now(timezone.utc).isoformat(),
        "base_model": cfg.base_model if base_path else None, "base_model_path": base_path,
        "dataset_path": str(dataset_path), "dataset_hash": meta.get("content_hash"), "curation_run_id": meta.get("run_id"),
        "prompt_template": meta.get("prompt_template"), "student_mode": meta.get("student_mode", "open_book"),
        "evidence": meta.get("evidence"), "examples": len(dataset),
        "intents": list(intents.values()), "training": asdict(cfg), "metrics": metrics, "eval": None,
    }


def model_card(manifest: dict) -> str:
    if manifest["student_mode"] == "replay":
        return f"""---
library_name: distill
tags: [distill, replay]
---

# {manifest['student']} {manifest['version']}

The curated intents of distill's curation run `{manifest['curation_run_id']}`: {len(manifest['intents'])} intents
from {manifest['examples']} wordings, and no model. The traces' evidence is not in this workspace's corpus
(the team's own RAG answered them), so no student can read it: the router replays each covered
intent's agreed answer and sends everything else to RAG. The intents, their wordings, citations
and document versions are in `distill.json`; the dataset is `{manifest['dataset_path']}`.
"""
    cfg = manifest["training"]
    first, last = (manifest["metrics"]["train_losses"] or [None])[0], (manifest["metrics"]["train_losses"] or [None])[-1]
    return f"""---
base_model: {manifest['base_model']}
library_name: transformers
tags: [distill, trl, sft, {cfg['method']}]
---

# {manifest['student']} {manifest['version']}

A student distilled by distill from its RAG teacher's traces: {manifest['base_model']} fine-tuned
with TRL's SFTTrainer ({cfg['method']}) on {manifest['examples']} curated examples covering
{len(manifest['intents'])} intents. It reads the question with the numbered evidence the router
retrieved and answers `[n] quote` or the refusal; the router serves it only for questions replay
cannot take, where its calibrated confidence (`student_confidence.json`) keeps the expected error
within the bound, and RAG stays the source of truth.

| | |
|---|---|
| dataset | `{manifest['dataset_path']}` (sha256 `{manifest['dataset_hash']}`) |
| curation run | `{manifest['curation_run_id']}` |
| prompt template | `{manifest['prompt_template']}` |
| training | {manifest['metrics']['steps']} steps, batch {cfg['batch_size']}, lr {cfg['learning_rate']} ({cfg['lr_scheduler']}), max length {cfg['max_length']}, seed {cfg['seed']} |
| train loss | {first} -> {last} |
| runtime | {manifest['metrics']['runtime_s']} s on {manifest['metrics']['processes']} process(es), {manifest['metrics']['tokens_per_s']} tokens/s |

The nightly gate adds its evaluation (held-out recent window, covered intents) to `distill.json` under `eval`.

## Serving it elsewhere

This folder is a plain `save_pretrained` model (adapters merged), so any server that loads
Hugging Face folders serves it: `vllm serve <this folder> --served-model-name student`, then set
`student.endpoint` to that server's `/v1` URL and the router calls it instead of loading the weights.
The prompt the server must be sent is the template above, rendered by the router from this manifest.
"""
