"""Profiles: the typed, validated parameters every notebook, the CLI and the tests read.

A profile is a YAML file in ``params/``. It is validated in full before any model or data is loaded:
an unknown key, a value of the wrong type or out of range, or a data path that does not exist raises
:class:`ProfileError` naming the file and the dotted key. Relative paths in a profile are resolved
against the folder the profile lives in, so ``params/tiny.yaml`` says ``../data/sample/...``.

pydantic does the validation: it gives typed, documented fields, ``extra="forbid"`` for unknown keys
and error locations as key paths, which our own validator would only re-implement.

A profile is input from whoever writes it, so reading one is bounded: YAML aliases are refused (a
1 KB "billion laughs" file expands to gigabytes), as are duplicate keys (the second would silently
replace the first), ``extends`` chains deeper than :data:`MAX_EXTENDS_DEPTH` and files over
:data:`MAX_PROFILE_BYTES`; every value an error shows is cut to :data:`MAX_SHOWN_CHARS` (:func:`short`).
Numbers are strict (``max_steps: true`` is not one step) and finite.
"""

from __future__ import annotations

import fnmatch
import os
import re
import reprlib
import socket
import stat
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modft_utils.errors import ModftError

# The promotion gate compares what each SFT format is judged by: SQuAD by the official F1, free
# text by ROUGE-L (rollback.gate_metric: auto).
DEFAULT_GATE_METRIC = {"squad": "f1", "prompt_response": "rouge_l", "messages": "rouge_l"}
MAX_EXTENDS_DEPTH = 16  # profiles in one `extends` chain; the shipped ones use 2
MAX_PROFILE_BYTES = 1 << 20  # a profile is a page of keys; a bigger file is not one
MAX_SHOWN_CHARS = 200  # the most of any one value an error message shows
MAX_SEED = 2**32 - 1  # numpy's RandomState, which datasets and transformers seed, takes no more


class ProfileError(ModftError, ValueError):
    """A profile or override that cannot be used; the message names the file and every bad key."""


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxdict, shown.maxlist, shown.maxtuple, shown.maxset = 3, 6, 8, 8, 8
    shown.maxstring = shown.maxother = shown.maxlong = MAX_SHOWN_CHARS
    return shown


_SHOWN = _bounded_repr()


def short(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, computed in bounded time whatever the value's size.

    reprlib stops at a few items per level and a few levels deep, so a list of a million items (or an
    expanded YAML alias bomb) costs what eight of them do; plain ``repr`` would build the whole text.
    """
    try:
        text = _SHOWN.repr(value)
    except ValueError:  # an int of more than 4,300 digits refuses str() (CVE-2020-10735)
        text = f"<{type(value).__name__} too large to show>"
    return cut(text, limit)


def cut(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` (a key, a library's message) cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_file(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder ("a named pipe (FIFO)"), else None.

    Readers open only regular files: opening a FIFO blocks until someone writes to it, so ``modft
    validate`` hung on one, and a device never ends. ``stat`` does not open, so this never blocks; a
    path that does not exist is None (the callers name that case themselves).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), None)


def is_glob(value: str) -> bool:
    """The value is a glob pattern (``corpus/**/*.txt``), not a path."""
    return any(ch in value for ch in "*?[")


def glob_files(pattern: str | os.PathLike) -> list[Path]:
    """The regular files a glob matches (``**`` spans folders), each once, sorted.

    ``glob.glob(recursive=True)`` follows links to folders: a link to its own parent made ``**`` loop
    until the path was too long (every file read 41 times), and two such links never finished. Here
    the folders are walked with ``os.walk(followlinks=False)``, so a linked folder is not entered, and
    a file reached under two names (a link to a file beside it) is listed once. As with ``glob``, a
    name starting with a dot is matched only by a pattern part that starts with one.
    """
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if is_glob(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    # `**/**` means what `**` does; collapsed, a pattern of many cannot make matching exponential.
    rest = tuple(
        part for i, part in enumerate(parts[fixed:]) if not (part == "**" and parts[fixed:][i - 1 : i] == ("**",))
    )
    if not rest:
        return [root] if root.is_file() else []
    deepest = None if "**" in rest else len(rest) - 1  # folders below root a match can lie in
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        rel = Path(folder).relative_to(root).parts
        dirs.sort()  # walked in order, so of two names for one file the first in order is kept
        if deepest is not None and len(rel) >= deepest:
            dirs.clear()  # no match lies deeper: do not walk a large tree for `corpus/*.txt`
        for name in sorted(files):
            path = Path(folder, name)
            if _glob_match((*rel, name), rest) and path.is_file():
                found.setdefault(os.path.realpath(path), path)
    return sorted(found.values())


def _glob_match(names: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether the path parts ``names`` match the pattern parts (``**``: any number of folders)."""
    if not pattern:
        return not names
    head, tail = pattern[0], pattern[1:]
    if head == "**":
        # zero names, or one (not hidden) name more for this `**`; a trailing `**` takes the file's too
        return _glob_match(names, tail) or (
            bool(names) and not names[0].startswith(".") and _glob_match(names[1:], pattern)
        )
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], head) and _glob_match(names[1:], tail)


class _ProfileLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases and without duplicate keys.

    An alias repeats a node by reference, so nine levels of ten aliases each, in 1.3 KB, expand to
    a billion values once anything walks them (an error message printing one took 312 MB at depth 7
    and never returned at depth 9): a profile refuses aliases (and so ``<<: *base`` merges; use
    ``extends``). A repeated key, such as a second ``data:`` section, would silently replace the first.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"the alias *{event.anchor[:MAX_SHOWN_CHARS]}: profiles do not use YAML anchors and aliases "
                "(they can expand a small file to gigabytes); write the value out, or share keys with 'extends'",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # a merge key is no key; an unhashable key is refused by the constructor
            key = self.construct_object(key_node)
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {short(key)} (first on line {first[key]}); a repeated key would "
                    "silently replace the first: merge the two",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """``text`` read as YAML by :class:`_ProfileLoader`; :class:`ProfileError` says where it is not valid.

    ``where`` starts the message (the file, or the override). A value nested thousands of levels
    deep overflows the composer's recursion and an integer of more than 4,300 digits refuses
    conversion: both are named too, never a traceback.
    """
    try:
        return yaml.load(text, Loader=_ProfileLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ProfileError(f"{where}{at}: not valid YAML: {cut(str(exc.problem or exc.context))}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{where}: not valid YAML: {cut(str(exc))}") from None
    except RecursionError:
        raise ProfileError(f"{where}: not valid YAML: nested too deeply") from None
    except ValueError as exc:  # int("1" * 5000) in the constructor
        raise ProfileError(f"{where}: not valid YAML: {cut(str(exc))}") from None


class _Section(BaseModel):
    # strict: `max_steps: true` is not 1 step and `"20"` is not 20 (an int is still a float);
    # allow_inf_nan: `regression_tolerance: .inf` would make a gate that can never refuse.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


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
        if self.pretrain_seq_len > self.max_position_embeddings:
            raise ValueError(
                f"pretrain_seq_len {self.pretrain_seq_len} is more than max_position_embeddings "
                f"{self.max_position_embeddings}, the longest sequence the base accepts"
            )
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
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "bfloat16",
        description="dtype of the base's matmuls (LoRA weights and optimizer state stay float32); 'auto' is "
        "resolved when the profile is read: bfloat16 where the hardware multiplies in it (a CPU with "
        "AVX512-BF16 or AMX, a recent GPU), float16 on an older GPU, float32 elsewhere",
    )
    experts_implementation: Literal["eager", "grouped_mm", "batched_mm"] | None = Field(
        None, description="transformers MoE kernel; None keeps the model default (eager is fastest on CPU)"
    )
    attn_implementation: Literal["auto", "eager", "sdpa"] = Field(
        "sdpa",
        description="attention kernel; 'auto' is resolved when the profile is read: sdpa on a CUDA GPU, eager on "
        "a CPU (where torch's bf16 sdpa was slower)",
    )
    device_map: str | None = Field(None, description="'auto' spreads the base across GPUs/CPU (accelerate)")
    requires_cuda: bool = Field(False, description="refuse to start on a machine without a CUDA GPU")

    @field_validator("compute_dtype", "attn_implementation")
    @classmethod
    def _resolve_auto(cls, value: str, info) -> str:
        # Resolved once, here: the run folder's profile.resolved.json records the dtype and kernel it
        # ran with, and a run reopened on another machine keeps them.
        if value != "auto":
            return value
        from modft_utils import machine

        native = {"compute_dtype": machine.native_compute_dtype, "attn_implementation": machine.native_attention}
        return native[info.field_name]()

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
    generic_eval_file: str | None = Field(
        None,
        description="JSONL of {'text': ...} prose outside the domain: every stack's perplexity on it measures "
        "what the domain adapter made the base forget (none: not measured)",
    )
    replay_file: str | None = Field(
        None,
        description="JSONL of {'text': ...} general prose mixed into DAPT's training blocks (replay), so the domain "
        "adapter forgets less of what the base knew; blocks that data.generic_eval_file measures are never replayed",
    )
    replay_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of DAPT's training blocks that are replay text from data.replay_file (0: none; 0.5: one "
        "replay block per domain block)",
    )
    replay_loss: Literal["text", "distill"] = Field(
        "text",
        description="what a replay block teaches: text, its own next tokens (cross-entropy, as any block); distill, "
        "the next-token distributions of the stack below the adapter being trained (for DAPT the base) on it, as a "
        "KL divergence, so the adapter is pulled back to what the base predicts rather than to the replay text",
    )
    replay_weight: float = Field(
        1.0,
        gt=0,
        le=100,
        description="with replay_loss distill: how much a replay token's KL counts against a domain token's "
        "cross-entropy (1: the same); a stronger pull towards the base without more replay tokens to compute",
    )
    knowledge_probe: str | None = Field(
        None,
        description="JSON lines of closed-book questions {'entity', 'question', 'answers', 'split': 'train'|'probe'} "
        "about entities of the DAPT corpus: train questions join SFT (closed-book), probe ones are only asked in "
        "notebook 04's grid, so their score is what the domain adapter stored (none: held-out SQuAD questions the "
        "corpus answers); SQuAD-format SFT sets only",
    )

    @model_validator(mode="after")
    def _replay_has_a_file(self) -> DataSpec:
        if self.replay_share > 0 and self.replay_file is None:
            raise ValueError(
                f"replay_share is {self.replay_share} but replay_file is not set: give data.replay_file, the general "
                "text to mix into DAPT, or set data.replay_share to 0"
            )
        if self.replay_weight != 1.0 and self.replay_loss != "distill":
            raise ValueError(
                f"replay_weight is {self.replay_weight} but replay_loss is {self.replay_loss!r}: the weight applies "
                "to distilled replay only; set data.replay_loss: distill or data.replay_weight: 1"
            )
        if self.replay_loss == "distill" and self.replay_share == 0:
            raise ValueError(
                "replay_loss is 'distill' but replay_share is 0: nothing would be distilled; set data.replay_share "
                "(and data.replay_file) or data.replay_loss: text"
            )
        return self


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
    eval_steps: int = Field(50, ge=1, description="measure the held-out loss every N steps and at the last step")
    save_steps: int = Field(0, ge=0, description="checkpoint every N steps (0: only the final adapter)")
    keep_checkpoints: int = Field(
        2, ge=1, description="checkpoints kept on disk, newest first (older ones are deleted); a curve keeps them all"
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    group_by_length: bool = Field(
        False, description="batch examples of similar length (SFT: far less padding); packed DAPT blocks need none"
    )
    report_to: Literal["none", "tensorboard", "mlflow"] = Field("none", description="experiment tracker")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="training seed")

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_within_steps(cls, value: int, info: ValidationInfo) -> int:
        """A warm-up longer than the run never reaches the peak learning rate the profile asks for."""
        steps = info.data.get("max_steps")
        if steps is not None and value > steps:
            raise ValueError(
                f"warmup_steps {value} is more than max_steps {steps}: the learning rate would never reach "
                "its peak; lower warmup_steps (0 is fine for a short run)"
            )
        return value


class DaptSpec(_Section):
    lora: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval_blocks: int = Field(64, ge=1, description="held-out blocks used for perplexity")
    min_fact_exposures: int = Field(
        50,
        ge=1,
        description="training blocks holding a fact that storing it took in the calibration (docs/knowledge.md: "
        "SmolLM2's closed-book probe went 0 -> 24 EM at 50, 38 at 100): notebook 02 warns when DAPT showed the "
        "median data.knowledge_probe fact fewer times",
    )


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
    parity_dtype: Literal["float32", "live"] = Field(
        "float32",
        description="dtype exports are checked in: float32 loads the base a second time in float32 when the "
        "run computes in bf16/fp16 (bf16 rounding would hide a wrong export; costs a second base in memory); "
        "live compares with the running stack as it computes",
    )


class RollbackSpec(_Section):
    gate_metric: Literal["auto", "f1", "exact_match", "rouge_l", "answer_nll"] = Field(
        "auto",
        description="held-out metric the promotion gate compares (answer_nll: lower is better); auto: the "
        "format's own, F1 for squad and ROUGE-L for prompt_response and messages",
    )
    regression_tolerance: float = Field(
        1.0, ge=0, description="how much worse than production a candidate may score on gate_metric (finite)"
    )
    candidate_steps: int = Field(40, ge=1, description="steps of the deliberately regressing candidate in the drill")
    generic_ppl_tolerance: float = Field(
        0.05,
        ge=0,
        description="how far a candidate domain version may raise perplexity on data.generic_eval_file above "
        "the base's, relative (0.05: 5%); the domain gate refuses it beyond",
    )
    force_first_domain: bool = Field(
        False,
        description="promote a run's own domain version to production even when the domain gate, against the "
        "base, refuses it (audited as forced): for a profile whose domain adapter is known to forget, so "
        "notebook 05's drills still run",
    )
    probe_examples: int = Field(8, ge=1, description="held-out prompts whose logits are compared exactly")


class Profile(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="profile name, used in run ids")
    description: str = Field("", description="what this profile is for")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed for data subsets and splits")
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
        tiny = self.model.tiny
        if self.model.id == "tiny" and tiny is not None and self.data.block_size > tiny.max_position_embeddings:
            # The tiny base's config is the profile's; any other base's is checked by `modft validate`.
            raise ValueError(
                f"data.block_size {self.data.block_size} is more than model.tiny.max_position_embeddings "
                f"{tiny.max_position_embeddings}, the longest sequence the base accepts"
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
        protocols = [link.split("://", 1)[0] for link in value.split("::") if "://" in link]
        for protocol in protocols:
            try:
                fsspec.get_filesystem_class(protocol)
            except ValueError:
                raise ValueError(
                    f"unknown storage protocol {short(protocol)}: use a folder or an fsspec URL "
                    "(file://, s3://, gs://, hf://, ...)"
                ) from None
            except ImportError as exc:  # known, but its package is not installed (s3fs, gcsfs)
                raise ValueError(
                    f"storage protocol {protocol!r} needs a package that is not installed: {exc}"
                ) from None
        if "memory" in protocols:
            raise ValueError(
                "memory:// is the memory of one process, and each notebook runs in a process of its own: "
                "notebook 03 would not find what notebook 02 published. Use a folder or a shared store "
                "(file://, s3://, gs://, hf://, ...)"
            )
        return value

    def registry_uri(self) -> str:
        """The artifact store: an fsspec URL as written, or a folder resolved like other paths."""
        return self.registry if "://" in self.registry else str(self.resolve(self.registry))

    def computing_in(self, dtype: Literal["float32", "bfloat16", "float16"]) -> Profile:
        """This profile with ``model.compute_dtype`` set to ``dtype`` (itself when it already is)."""
        if self.model.compute_dtype == dtype:
            return self
        return self.model_copy(update={"model": self.model.model_copy(update={"compute_dtype": dtype})})

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
    ("data.generic_eval_file", lambda p: p.data.generic_eval_file),
    ("data.replay_file", lambda p: p.data.replay_file),
    ("data.knowledge_probe", lambda p: p.data.knowledge_probe),
)


def _path_problem(path: Path, value: str) -> str | None:
    """Why a data path cannot be read (matches nothing, absent, a FIFO...), or None when it can."""
    if is_glob(value):
        return None if glob_files(path) else "matches no file"
    if (kind := special_file(path)) is not None:
        return f"is {kind}, not a regular file: only regular files and folders are read"
    return None if path.exists() else "does not exist"


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the profile:"]
    for e in err.errors():
        key = cut(".".join(str(part) for part in e["loc"])) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key")
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):
            # A check across a section's keys: its message names the keys; the section is no value to show.
            lines.append(f"  - {key}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  - {key}: {e['msg'].removeprefix('Value error, ')} (got {short(e.get('input'))})")
    return "\n".join(lines)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ProfileError(f"override {short(dotted)}: {short(part)} is not a section")
        node = child
    node[parts[-1]] = value


def set_dotted(model: BaseModel, dotted: str, value: Any) -> None:
    """Set the profile key ``dotted`` (``dapt.train.max_steps``) on a validated profile, validating the value."""
    *sections, last = dotted.split(".")
    for part in sections:
        model = getattr(model, part)
    setattr(model, last, value)


def parse_override(text: str) -> tuple[str, Any]:
    """``"dapt.train.max_steps=20"`` -> ``("dapt.train.max_steps", 20)``; the value is read as YAML.

    A value that is not valid YAML (``sft.system_prompt=[oops``) is a :class:`ProfileError` naming the
    override, read by the same loader as a profile (no aliases, no duplicate keys).
    """
    if "=" not in text:
        raise ProfileError(f"override {short(text)}: expected KEY=VALUE, e.g. dapt.train.max_steps=20")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ProfileError(f"override {short(text)}: no key before '='; expected KEY=VALUE")
    return key.strip(), load_yaml(raw, f"override {short(key.strip())}")


def _read_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    """A profile's keys, with those of the profile it ``extends`` underneath (sections merged key by key).

    ``extends: smollm2.yaml`` (relative to the file) lets a variant say only what differs; both files
    must sit in the same folder, so relative data paths mean the same in each. A chain is at most
    :data:`MAX_EXTENDS_DEPTH` profiles long (a chain of 1,200 overflowed the recursion).
    """
    by = f" (extended by {chain[-1]})" if chain else ""
    if (kind := special_file(path)) is not None:
        raise ProfileError(f"profile file {path}{by} is {kind}, not a regular file")
    if not path.is_file():
        raise ProfileError(f"profile file not found: {path}{by}")
    if path in chain:
        raise ProfileError(f"{chain[-1]}: 'extends' makes a loop through {path}")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise ProfileError(
            f"{chain[0]}: 'extends' chains more than {MAX_EXTENDS_DEPTH} profiles (the last: {chain[-1]}); "
            "a variant should extend a profile that extends nothing, or one that does"
        )
    size = path.stat().st_size
    if size > MAX_PROFILE_BYTES:
        raise ProfileError(f"{path}: {size:,} bytes is not a profile (at most {MAX_PROFILE_BYTES:,} bytes)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ProfileError(f"{path}, line {line}: not valid UTF-8 at byte {exc.start}") from None
    tree = load_yaml(text, str(path)) or {}
    if not isinstance(tree, dict):
        raise ProfileError(f"{path}: the top level must be a mapping of keys")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str):
        raise ProfileError(f"{path}: extends {short(parent)}: expected the file name of a profile")
    parent_path = (path.parent / parent).resolve()
    if parent_path.parent != path.parent:
        raise ProfileError(f"{path}: extends {short(parent)}: the profile it extends must be in the same folder")
    return _merge(_read_tree(parent_path, chain + (path,)), tree)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _same_file(a: Path, b: Path) -> bool:
    """Both paths name one file: equal once links are resolved, or one inode (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _split_problems(profile: Profile) -> list[str]:
    """One file named as both splits of a data set: every held-out example would be a training one.

    Notebook 01 drops held-out examples that training has, so the SFT set then failed with a bare
    "no usable examples" after ``modft validate`` had passed it.
    """
    problems = []
    for part in ("dapt", "sft"):
        spec = getattr(profile.data, part)
        train, held = spec.train_file, spec.validation_file
        if train is None or held is None or is_glob(train) or is_glob(held):
            continue  # a hub dataset, or globs (validate compares the files they match)
        if _same_file(profile.resolve(train), profile.resolve(held)):
            problems.append(
                f"  - data.{part}.validation_file: {profile.resolve(held)} is also data.{part}.train_file; "
                "held-out examples must come from another file (every one would also be a training example)"
            )
    return problems


def _store_problems(profile: Profile) -> list[str]:
    """A store path (registry, cache_dir, runs_dir) that is a file where a folder has to be."""
    problems = []
    for key in ("registry", "cache_dir", "runs_dir"):
        value = getattr(profile, key)
        if "://" in value and not value.startswith("file://"):
            continue
        folder = Path(value.removeprefix("file://")) if value.startswith("file://") else profile.resolve(value)
        if folder.exists() and not folder.is_dir():
            kind = special_file(folder) or "a file"
            problems.append(f"  - {key}: {folder} is {kind}; it must be a folder (or not exist yet)")
    return problems


def load_profile(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None, *, check_paths: bool = True
) -> Profile:
    """Read, override and validate a profile; raise :class:`ProfileError` naming every bad key or path.

    ``overrides`` maps dotted keys to values (``{"dapt.train.max_steps": 20}``); they are validated
    exactly like the file, so a typo in an override is named too. With ``check_paths``, every data
    path must exist and be a regular file, a folder or a glob that matches one (a FIFO would block
    the reader that opens it), and the store folders must not be files.
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
            set_dotted(profile, key, str(profile.resolve(value)))
    if check_paths:
        missing = [
            f"  - {key}: {profile.resolve(value)} {problem}"
            for key, getter in _PATH_KEYS
            if (value := getter(profile)) is not None
            and (problem := _path_problem(profile.resolve(value), value)) is not None
        ]
        if missing:
            raise ProfileError(f"{path}: data path(s) not found or not readable:\n" + "\n".join(missing))
    if problems := _split_problems(profile) + (_store_problems(profile) if check_paths else []):
        raise ProfileError(f"{path}: {len(problems)} problem(s) in the profile:\n" + "\n".join(problems))
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
