"""Data preparation for both adapters: the domain corpus (DAPT) and the labeled task set (SFT), read,
cleaned, scrubbed of personal data, tokenized and saved in the run folder by notebook 01.

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.data.base_samples import write_base_samples
from modft_utils.data.clean import CleanConfig, StepReport, clean_corpus, report_table
from modft_utils.data.closed_book import load_closed_book, prepare_closed_book
from modft_utils.data.coverage import decide_tokenizer
from modft_utils.data.dapt import clean_dapt, clean_metrics, load_dapt_blocks, load_generic_blocks, pack, prepare_dapt
from modft_utils.data.drills import probe_batch, shuffled_answer_set
from modft_utils.data.knowledge import (
    ExposureCounter,
    KnowledgeProbe,
    budget_advice,
    load_knowledge_probe,
    prepare_knowledge_probe,
)
from modft_utils.data.pii import scrub_pii, scrub_pii_with_spans
from modft_utils.data.prompts import PromptFormat, prompt_format
from modft_utils.data.sft import fingerprint_dataset, load_sft, prepare_sft, sft_collator
from modft_utils.data.sources import corpus_sources, describe_sources, load_conversations, load_rows
from modft_utils.data.squad import QAExample, SquadFormatError, squad_metrics
from modft_utils.data.tasks import TaskFormatError, text_metrics
from modft_utils.data.validate import validate_inputs
from modft_utils.errors import DataError

__all__ = [
    "DataError",
    "ExposureCounter",
    "KnowledgeProbe",
    "CleanConfig",
    "PromptFormat",
    "QAExample",
    "SquadFormatError",
    "StepReport",
    "TaskFormatError",
    "budget_advice",
    "clean_corpus",
    "clean_dapt",
    "clean_metrics",
    "corpus_sources",
    "decide_tokenizer",
    "describe_sources",
    "fingerprint_dataset",
    "load_closed_book",
    "load_conversations",
    "load_dapt_blocks",
    "load_generic_blocks",
    "load_knowledge_probe",
    "load_rows",
    "load_sft",
    "pack",
    "prepare_closed_book",
    "prepare_dapt",
    "prepare_knowledge_probe",
    "prepare_sft",
    "probe_batch",
    "prompt_format",
    "report_table",
    "scrub_pii",
    "scrub_pii_with_spans",
    "sft_collator",
    "shuffled_answer_set",
    "squad_metrics",
    "text_metrics",
    "validate_inputs",
    "write_base_samples",
]
