"""Profiles: the typed, validated parameters every notebook, the CLI and the tests read.

A profile is a YAML file in ``params/``. It is validated in full before any model or data is loaded:
an unknown key, a value of the wrong type or out of range, or a data path that does not exist raises
:class:`ProfileError` naming the file and the dotted key. Relative paths in a profile are resolved
against the folder the profile lives in, so ``params/tiny.yaml`` says ``../data/sample/...``.

pydantic does the validation: it gives typed, documented fields, ``extra="forbid"`` for unknown keys
and error locations as key paths, which our own validator would only re-implement.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modft_utils.errors import ModftError

# The promotion gate compares what each SFT format is judged by: SQuAD by the official F1, free
# text by ROUGE-L (rollback.gate_metric: auto).
DEFAULT_GATE_METRIC = {"squad": "f1", "prompt_response": "rouge_l", "messages": "rouge_l"}


class ProfileError(ModftError, ValueError):
    """A profile or override that cannot be used; the message names the file and every bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyBaseSpec(_Section):
    """A scaled-down MiniMax-M2 built and briefly pretrained locally when no hub is reachable."""

    hidden_size: int = Field(128, ge=16, le=4096, description="model width")
    num_hidden_layers: int = Field(4, ge=1, le=64, description="decoder layers")
    num_attention_heads: int = Field(4, ge=1, description="query heads")
    num_key_value_heads: int = Field(2, ge=1, description="key/value heads (GQA as in MiniMax-M2)")
    head_dim: int = Field(32, ge=8, description="per-head width")
    intermediate_size: int = Field(256, ge=8, description="per-expert FFN width")
    num_local_experts: int = Field(8, ge=2, description="experts per layer (fused 3-D parameters)")
    num_experts_per_tok: int = Field(2, ge=1, description="experts each token is routed to")
    vocab_size: int = Field(2048, ge=300, le=65536, description="byte-level BPE vocabulary size")
    max_position_embeddings: int = Field(1024, ge=64, description="longest sequence the base accepts")
    pretrain_steps: int = Field(240, ge=0, description="generic-text pretraining steps; 0 leaves it random")
    pretrain_batch_size: int = Field(16, ge=1, description="sequences per pretraining step")
    pretrain_seq_len: int = Field(128, ge=16, description="tokens per pretraining sequence")
    pretrain_lr: float = Field(3e-3, gt=0, lt=1, description="AdamW peak learning rate for pretraining")
    generic_corpus: str = Field(..., description="JSONL of {'text': ...} generic prose the base is pretrained on")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyBaseSpec:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ValueError("num_experts_per_tok cannot exceed num_local_experts")
        return self


class ModelSpec(_Section):
    id: str = Field(
        ...,
        description="hub id (MiniMaxAI/MiniMax-M2), a local model folder, 'tiny' to build one, or "
        "'package:<distribution>' (an installed Python package holding model.gguf_file)",
    )
    revision: str | None = Field(None, description="hub revision (commit or tag) pinned for reproducibility")
    gguf_file: str | None = Field(
        None,
        description="a GGUF checkpoint inside model.id (folder, package or hub repo), converted once into "
        "the cache as a safetensors folder keyed by its sha256",
    )
    tiny: TinyBaseSpec | None = Field(None, description="how to build the base when id is 'tiny'")
    load_in_4bit: bool = Field(True, description="QLoRA: store the frozen base in bitsandbytes 4-bit")
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type; NF4 suits normally distributed weights"
    )
    double_quant: bool = Field(True, description="also quantize the 4-bit scales (saves ~0.4 bit/param)")
    experts_4bit: bool = Field(
        True,
        description="with load_in_4bit, store the fused MoE experts in NF4 too (stock bitsandbytes leaves them 16-bit)",
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16", description="dtype of matmuls and LoRA weights; float32 on CPU keeps invariants bit-exact"
    )
    experts_implementation: Literal["eager", "grouped_mm", "batched_mm"] | None = Field(
        None, description="transformers MoE kernel; None keeps the model default (eager is fastest on CPU)"
    )
    attn_implementation: Literal["eager", "sdpa"] = Field("sdpa", description="attention kernel")
    device_map: str | None = Field(None, description="'auto' spreads the base across GPUs/CPU (accelerate)")
    requires_cuda: bool = Field(False, description="refuse to start on a machine without a CUDA GPU")

    @model_validator(mode="after")
    def _tiny_needs_spec(self) -> ModelSpec:
        if self.id == "tiny" and self.tiny is None:
            raise ValueError("model.id 'tiny' needs a model.tiny section")
        if self.id == "tiny" and self.gguf_file:
            raise ValueError("model.gguf_file names a GGUF file to load; it cannot go with model.id 'tiny'")
        if self.id.startswith("package:") and not self.gguf_file:
            raise ValueError("model.id 'package:...' needs model.gguf_file: the file inside that package")
        return self


class _SourceSpec(_Section):
    """Where a dataset comes from: a hub dataset, or local files."""

    hub_name: str | None = Field(None, description="hub dataset name, e.g. wikitext or squad")
    hub_config: str | None = Field(None, description="hub dataset config, e.g. wikitext-2-raw-v1")
    train_file: str | None = Field(None, description="local train split")
    validation_file: str | None = Field(None, description="local held-out split, as train_file")

    @model_validator(mode="after")
    def _one_source(self) -> _SourceSpec:
        if (self.hub_name is None) == (self.train_file is None):
            raise ValueError("give either hub_name or train_file (exactly one)")
        if self.train_file is not None and self.validation_file is None:
            raise ValueError("a local corpus needs validation_file too")
        return self


class CorpusSpec(_SourceSpec):
    """The domain corpus: a hub dataset, or local files in any format :mod:`modft_utils.data.readers` reads."""

    train_file: str | None = Field(
        None,
        description="local train split: a file, a folder or a glob (.jsonl .raw .txt .md .parquet .csv, "
        "optionally .gz, or a save_to_disk folder)",
    )
    format: Literal["auto", "jsonl", "wikitext", "text", "parquet", "csv", "saved"] = Field(
        "auto", description="how local files are read; auto goes by the extension (see modft_utils.data.readers)"
    )
    text_column: str = Field("text", description="the column holding the text in parquet, CSV and saved datasets")


class FieldsSpec(_Section):
    """Where a prompt_response row keeps its parts; the defaults read alpaca files as they are."""

    prompt: str = Field("instruction", description="field with the instruction or prompt")
    input: str | None = Field("input", description="optional field appended to the prompt (alpaca's input); null: none")
    response: str = Field("output", description="field with the response that is learned and scored")
    system: str | None = Field(None, description="optional field with a system prompt for the row")
    id: str | None = Field("id", description="optional field with a unique id (otherwise a hash of the row's content)")


class SftSourceSpec(_SourceSpec):
    """The labeled set for SFT: SQuAD, instruction (prompt/response) or chat (messages) rows."""

    train_file: str | None = Field(
        None,
        description="local train split: SQuAD in any layout (original nested JSON, JSON lines, a JSON list); "
        "prompt_response and messages sets as .jsonl, .json, .csv or .parquet",
    )
    format: Literal["squad", "prompt_response", "messages"] = Field(
        "squad",
        description="squad: extractive QA scored by the official EM/F1; prompt_response: instruction rows "
        "(data.sft.fields); messages: multi-turn chats rendered with the chat template, loss on assistant turns",
    )
    fields: FieldsSpec = Field(default_factory=FieldsSpec, description="prompt_response: the row's field names")
    messages_field: str = Field(
        "messages", description="messages: the field with the list of turns (role/content, or ShareGPT from/value)"
    )


class DataSpec(_Section):
    dapt: CorpusSpec = Field(..., description="domain corpus for DAPT (wikitext-2-raw rows)")
    sft: SftSourceSpec = Field(..., description="labeled set for SFT (SQuAD, instruction or chat rows)")
    sft_subset_size: int = Field(1000, ge=10, description="training examples drawn (seeded) from the SFT train split")
    sft_eval_size: int = Field(200, ge=10, description="held-out QA examples evaluated")
    min_sft_examples: int = Field(
        10,
        ge=1,
        description="fewest usable SFT examples per split after validation and de-duplication; fewer is an error",
    )
    unanswerable: Literal["drop", "keep"] = Field("drop", description="SQuAD v2 questions without an answer")
    normalization: Literal["NFKC", "NFC", "none"] = Field("NFKC", description="Unicode normalization of the corpus")
    section_headings: Literal["keep", "drop"] = Field("keep", description="wikitext = = Section = = lines")
    min_doc_chars: int = Field(200, ge=0, description="documents shorter than this after cleaning are dropped")
    near_dup_threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity above which documents are near-duplicates"
    )
    scrub_pii: bool = Field(True, description="replace e-mails, phones, cards... with typed placeholders")
    block_size: int = Field(128, ge=16, description="tokens per packed DAPT block")
    max_sft_tokens: int = Field(
        256, ge=32, description="longest tokenized SFT example; longer contexts are cut around the answer"
    )
    tokenizer_extend_threshold: float = Field(
        1.6, gt=0, description="extend the tokenizer when domain tokens per word exceed this"
    )
    tokenizer_max_new_tokens: int = Field(
        100, ge=0, description="most domain words added when extending (0: record the decision, add nothing)"
    )
    tokenizer_min_word_count: int = Field(
        5, ge=1, description="a word added to the tokenizer occurs at least this often"
    )
    tokenizer_min_pieces: int = Field(
        3, ge=2, description="a word added to the tokenizer is now cut into at least this many pieces"
    )


class LoraSpec(_Section):
    r: int = Field(16, ge=1, le=1024, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout; 0 keeps training deterministic")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="module names that get LoRA (attention projections are Linear4bit in QLoRA)",
    )


class TrainSpec(_Section):
    max_steps: int = Field(100, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="sequences per device step")
    grad_accum: int = Field(1, ge=1, description="steps accumulated per optimizer step")
    learning_rate: float = Field(2e-3, gt=0, lt=1, description="peak AdamW learning rate")
    warmup_steps: int = Field(10, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    logging_steps: int = Field(10, ge=1, description="log the loss every N steps")
    eval_steps: int = Field(50, ge=1, description="evaluate the held-out loss every N steps")
    save_steps: int = Field(0, ge=0, description="checkpoint every N steps (0: only the final adapter)")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    group_by_length: bool = Field(
        False, description="batch examples of similar length (SFT: far less padding); packed DAPT blocks need none"
    )
    report_to: Literal["none", "tensorboard", "mlflow"] = Field("none", description="experiment tracker")
    seed: int = Field(0, description="training seed")


class DaptSpec(_Section):
    lora: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval_blocks: int = Field(64, ge=1, description="held-out blocks used for perplexity")


class SftSpec(_Section):
    lora: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    max_new_tokens: int = Field(12, ge=1, le=512, description="greedy decoding budget for an answer")
    prompt_style: Literal["plain", "chat"] = Field(
        "plain",
        description="plain: 'Context: ... Question: ... Answer:'; chat: the same as a user turn rendered "
        "with the base's own chat template (instruct models)",
    )
    system_prompt: str | None = Field(
        None, description="with prompt_style chat: a system turn to add (None keeps the template's default)"
    )
    eval_batch_size: int = Field(32, ge=1, description="prompts decoded together when scoring (left-padded)")
    chat_template: str | None = Field(
        None,
        description="with prompt_style chat: a Jinja chat template (text, or a .jinja file beside the profile) "
        "used instead of the base's own; needed for a base that ships none",
    )


class ComposeSpec(_Section):
    eval_examples: int = Field(64, ge=1, description="held-out QA examples in the comparison table")
    closed_book_examples: int = Field(
        64, ge=0, description="held-out questions the DAPT corpus answers, asked without context (what DAPT buys)"
    )
    switch_repeats: int = Field(200, ge=1, description="stack switches timed for compose.switch_ms")


class RollbackSpec(_Section):
    gate_metric: Literal["auto", "f1", "exact_match", "rouge_l", "answer_nll"] = Field(
        "auto",
        description="held-out metric the promotion gate compares (answer_nll: lower is better); auto: the "
        "format's own, F1 for squad and ROUGE-L for prompt_response and messages",
    )
    regression_tolerance: float = Field(
        1.0, ge=0, description="how much worse than production a candidate may score on gate_metric"
    )
    candidate_steps: int = Field(40, ge=1, description="steps of the deliberately regressing candidate in the drill")
    probe_examples: int = Field(8, ge=1, description="held-out prompts whose logits are compared exactly")


class Profile(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="profile name, used in run ids")
    description: str = Field("", description="what this profile is for")
    seed: int = Field(0, description="seed for data subsets and splits")
    model: ModelSpec
    data: DataSpec
    dapt: DaptSpec = Field(default_factory=DaptSpec)
    sft: SftSpec = Field(default_factory=SftSpec)
    compose: ComposeSpec = Field(default_factory=ComposeSpec)
    rollback: RollbackSpec = Field(default_factory=RollbackSpec)
    registry: str = Field("../outputs/registry", description="artifact store: a folder or an fsspec URL")
    cache_dir: str = Field("../outputs/cache", description="where locally built bases are kept and reused")
    runs_dir: str = Field("../outputs/runs", description="where `modft run` creates run folders")

    # Set by load_profile, not by the YAML: where the profile came from.
    source: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _task_format_fits(self) -> Profile:
        fmt = self.data.sft.format
        if fmt == "messages" and self.sft.prompt_style != "chat":
            raise ValueError(
                "data.sft.format 'messages' renders conversations with a chat template: set "
                "sft.prompt_style: chat (and sft.chat_template if the base has none)"
            )
        if fmt == "squad" and self.rollback.gate_metric == "rouge_l":
            raise ValueError(
                "rollback.gate_metric 'rouge_l' is reported for prompt_response and messages sets; "
                "SQuAD is scored by the official exact match and F1"
            )
        return self

    def gate_metric(self) -> str:
        """The metric the promotion gate compares: rollback.gate_metric, or the SFT format's own."""

        configured = self.rollback.gate_metric
        return DEFAULT_GATE_METRIC[self.data.sft.format] if configured == "auto" else configured

    @field_validator("registry")
    @classmethod
    def _registry_protocol_known(cls, value: str) -> str:
        """A store URL this machine cannot open fails with the profile, not when notebook 02 publishes."""
        import fsspec

        # fsspec chains protocols ("simplecache::s3://bucket/store"); each link must be known.
        for link in value.split("::"):
            if "://" not in link:
                continue
            protocol = link.split("://", 1)[0]
            try:
                fsspec.get_filesystem_class(protocol)
            except ValueError:
                raise ValueError(
                    f"unknown storage protocol {protocol!r}: use a folder or an fsspec URL "
                    "(file://, memory://, s3://, gs://, hf://, ...)"
                ) from None
            except ImportError as exc:  # known, but its package is not installed (s3fs, gcsfs)
                raise ValueError(
                    f"storage protocol {protocol!r} needs a package that is not installed: {exc}"
                ) from None
        return value

    def registry_uri(self) -> str:
        """The artifact store: an fsspec URL as written, or a folder resolved like other paths."""
        return self.registry if "://" in self.registry else str(self.resolve(self.registry))

    def resolve(self, path: str) -> Path:
        """A path from this profile, absolute; relative ones are relative to the profile's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.source).parent / p).resolve()

    def data_file(self, which: Literal["dapt", "sft"], split: Literal["train", "validation"]) -> Path | None:
        """``data.<which>.<split>_file`` as an absolute path (a file, folder or glob); None for a hub dataset."""
        value = getattr(getattr(self.data, which), f"{split}_file")
        return None if value is None else self.resolve(value)


_PATH_KEYS = (
    ("data.dapt.train_file", lambda p: p.data.dapt.train_file),
    ("data.dapt.validation_file", lambda p: p.data.dapt.validation_file),
    ("data.sft.train_file", lambda p: p.data.sft.train_file),
    ("data.sft.validation_file", lambda p: p.data.sft.validation_file),
    ("model.tiny.generic_corpus", lambda p: p.model.tiny.generic_corpus if p.model.tiny else None),
)


def _is_glob(value: str) -> bool:
    return any(ch in value for ch in "*?[")


def _path_exists(path: Path, value: str) -> bool:
    """A data path exists, or (a glob such as ``corpus/*.txt``) matches at least one file."""
    import glob

    return bool(glob.glob(str(path), recursive=True)) if _is_glob(value) else path.exists()


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the profile:"]
    for e in err.errors():
        key = ".".join(str(part) for part in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ProfileError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _set_attr_dotted(model: BaseModel, dotted: str, value: Any) -> None:
    *sections, last = dotted.split(".")
    for part in sections:
        model = getattr(model, part)
    setattr(model, last, value)


def parse_override(text: str) -> tuple[str, Any]:
    """``"dapt.train.max_steps=20"`` -> ``("dapt.train.max_steps", 20)``; the value is read as YAML."""
    if "=" not in text:
        raise ProfileError(f"override {text!r}: expected KEY=VALUE, e.g. dapt.train.max_steps=20")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def _read_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    """A profile's keys, with those of the profile it ``extends`` underneath (sections merged key by key).

    ``extends: smollm2.yaml`` (relative to the file) lets a variant say only what differs; both files
    must sit in the same folder, so relative data paths mean the same in each.
    """
    if not path.is_file():
        raise ProfileError(f"profile file not found: {path}" + (f" (extended by {chain[-1]})" if chain else ""))
    if path in chain:
        raise ProfileError(f"{chain[-1]}: 'extends' makes a loop through {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ProfileError(f"{path}: the top level must be a mapping of keys")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    parent_path = (path.parent / str(parent)).resolve()
    if parent_path.parent != path.parent:
        raise ProfileError(f"{path}: extends {parent!r}: the profile it extends must be in the same folder")
    return _merge(_read_tree(parent_path, chain + (path,)), tree)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_profile(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None, *, check_paths: bool = True
) -> Profile:
    """Read, override and validate a profile; raise :class:`ProfileError` naming every bad key or path.

    ``overrides`` maps dotted keys to values (``{"dapt.train.max_steps": 20}``); they are validated
    exactly like the file, so a typo in an override is named too.
    """
    path = Path(path).expanduser().resolve()
    tree = _read_tree(path, ())
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    try:
        profile = Profile.model_validate(tree)
    except ValidationError as exc:
        raise ProfileError(_format_errors(str(path), exc)) from None
    profile.source = str(path)
    # Data paths are made absolute once, here: every reader, the run folder's resolved profile and a
    # later notebook comparing it then see the same path, wherever they run from.
    for key, getter in _PATH_KEYS:
        if (value := getter(profile)) is not None and not Path(value).expanduser().is_absolute():
            _set_attr_dotted(profile, key, str(profile.resolve(value)))
    if check_paths:
        missing = [
            f"  - {key}: {profile.resolve(value)} " + ("matches no file" if _is_glob(value) else "does not exist")
            for key, getter in _PATH_KEYS
            if (value := getter(profile)) is not None and not _path_exists(profile.resolve(value), value)
        ]
        if missing:
            raise ProfileError(f"{path}: data path(s) not found:\n" + "\n".join(missing))
    return profile


def check_device(profile: Profile) -> None:
    """Refuse, before any loading, a profile that needs CUDA on a machine without it."""
    import torch

    if profile.model.requires_cuda and not torch.cuda.is_available():
        raise ProfileError(
            f"{profile.source}: profile {profile.name!r} needs a CUDA GPU (model.requires_cuda) and none is "
            "available here. Run it on a GPU machine, or use params/tiny.yaml, the profile that runs on CPU."
        )


def new_run_id(profile: Profile) -> str:
    """A sortable, unique-enough id: UTC time, profile name, host."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:12] or "host"
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{profile.name}-{host}"


def describe(model_cls: type[BaseModel] = Profile, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows of (key, type, default, help) for every profile key; the README and ``modft params`` print them."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model_cls.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{name}"
        ann = field.annotation
        sub = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if sub is not None:
            rows.extend(describe(sub, key + "."))
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append((key, type_name, default, field.description or ""))
    return rows
