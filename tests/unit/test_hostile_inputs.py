"""Hostile inputs: every reader and every profile path either refuses with our own error, naming the key,
the file and where in it, or accepts with the right result. Nothing hangs, nothing ends in a library's
traceback, and no error message prints an unbounded value.

Each case runs under a time limit (SIGALRM, on the main thread, where pytest runs tests): a case that
blocks, in Python or in a system call such as opening a FIFO, fails instead of hanging the suite. The
alias bomb, whose old failure was a C-level ``repr`` that no signal interrupts, runs in a subprocess.
No model is loaded: profiles are ``params/tiny.yaml`` with overrides, files are written to ``tmp_path``.
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from profile_tree import portable_tree

from modft_utils import config, data
from modft_utils.cli import main
from modft_utils.config import ProfileError
from modft_utils.data import prompts, readers, squad, tasks
from modft_utils.errors import DataError, ModftError
from modft_utils.modeling import cache, gguf, tiny

CASE_SECONDS = 60  # generous for a loaded 2-core machine; the fixed cases take well under a second or two
MESSAGE_CHARS = 2000  # an error message about one bad value is a few lines, whatever the value
WIKI = "data/sample/wikitext"
ALPACA = [{"id": f"r{i}", "instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(12)]
FIFO = re.escape("is a named pipe (FIFO), not a regular file")


class CaseTimeout(BaseException):
    """A case ran past CASE_SECONDS; a BaseException, so no ``except Exception`` in the code under test keeps it."""


@pytest.fixture(autouse=True)
def time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a case that runs longer than CASE_SECONDS; the signal also interrupts a blocking open()."""

    def expired(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"{request.node.name} ran for more than {CASE_SECONDS} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer with an EOS and no chat template (what the tiny base ships); no model."""
    return tiny.train_tokenizer(["plain prose for a tokenizer that ships no chat template"] * 20, vocab_size=300)


# --------------------------------------------------------------------------------------------------
# Helpers


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _tree(root: Path) -> dict:
    """params/tiny.yaml with its data paths absolute, so a copy anywhere reads the same files."""
    return portable_tree(root, "tiny")


def _write(root: Path, tmp_path: Path, changes: dict | None = None, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(_merge(_tree(root), changes or {})))
    return path


def _profile(root: Path, tmp_path: Path, changes: dict | None = None, **kwargs: Any) -> config.Profile:
    return config.load_profile(_write(root, tmp_path, changes), **kwargs)


def _jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _sft(train: str, validation: str, fmt: str = "prompt_response") -> dict:
    """Profile changes for an SFT set of a few rows (min_sft_examples lowered to 1 for them)."""
    return {
        "data": {
            "sft": {"format": fmt, "train_file": train, "validation_file": validation},
            "min_sft_examples": 1,
            "knowledge_probe": None,  # closed-book probe questions join SQuAD-format sets only
        }
    }


def _dapt(root: Path, train: str, **extra: Any) -> dict:
    return {"data": {"dapt": {"train_file": train, "validation_file": str(root / WIKI / "validation.jsonl"), **extra}}}


def _records(path: Path) -> list[tuple[str, Any]]:
    return list(tasks.read_records(path, "data.sft.train_file"))


def _conversations(path: Path, fmt: str = "prompt_response") -> list[tasks.Conversation]:
    convs, _ = tasks.read_conversations(
        path, "data.sft.train_file", fmt, fields=tasks.FieldMap(), messages_field="messages"
    )
    return convs


def _squad_rows(root: Path, n: int = 3) -> list[dict]:
    with open(root / "data/sample/squad/train.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


def _parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _cut_in_half(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


# --------------------------------------------------------------------------------------------------
# Inputs that hung or exploded


ALIAS_BOMB_DEPTH = 9  # 10**9 values once expanded; the file is 1.3 KB


def _alias_bomb(depth: int) -> str:
    names = [f"l{i}" for i in range(depth + 1)]
    lines = [f"{names[0]}: &{names[0]} [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"{n}: &{n} [" + ", ".join([f"*{prev}"] * 10) + "]" for prev, n in zip(names, names[1:])]
    return "\n".join(lines) + f"\nname: *{names[-1]}\n"


def test_a_yaml_alias_bomb_is_refused_at_its_first_alias(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(ALIAS_BOMB_DEPTH))
    assert bomb.stat().st_size < 1500
    with pytest.raises(
        ProfileError,
        match=r"bomb\.yaml, line 2, column \d+: not valid YAML: the alias \*l0: profiles do not use YAML anchors",
    ) as err:
        config.load_profile(bomb)
    assert len(str(err.value)) < MESSAGE_CHARS
    # A subprocess, because the old failure (repr of 10**9 values) runs in C, where no signal reaches.
    code = "import sys\nfrom modft_utils.config import load_profile\nload_profile(sys.argv[1])\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=CASE_SECONDS, check=False
    )
    assert proc.returncode == 1 and "ProfileError" in proc.stderr and "the alias *l0" in proc.stderr
    assert len(proc.stderr) < 5 * MESSAGE_CHARS


def test_errors_never_print_unbounded_values(root, tmp_path):
    huge = ["x" * 1000] * 1_000_000  # what an expanded alias would be
    with pytest.raises(ProfileError, match=r"  - name: Input should be a valid string \(got \['xxx") as err:
        config.load_profile(root / "params" / "tiny.yaml", {"name": huge})
    assert len(str(err.value)) < MESSAGE_CHARS
    nested: Any = "deep"
    for _ in range(5000):
        nested = [nested]
    assert len(config.short(nested)) <= config.MAX_SHOWN_CHARS and len(config.short(huge)) <= config.MAX_SHOWN_CHARS
    assert config.short(10**5000) == "<int too large to show>"
    turns = tmp_path / "chat.jsonl"
    _jsonl(turns, [{"messages": [{"role": ["user"] * 100_000, "content": "hi"}]}])
    with pytest.raises(tasks.TaskFormatError, match=r"line 1, turn 0: unknown role \['user', 'user'") as err:
        _conversations(turns, "messages")
    assert len(str(err.value)) < MESSAGE_CHARS


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("name: a\nseed: 0\nname: b\n", 3, "name"),
        ("name: a\ndata:\n  block_size: 64\ndata:\n  block_size: 32\n", 4, "data"),
        ("name: a\ndapt:\n  train:\n    max_steps: 5\n    max_steps: 6\n", 5, "max_steps"),
    ],
)
def test_a_duplicate_yaml_key_is_refused_naming_key_and_line(tmp_path, text, line, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    first = text.splitlines().index(next(t for t in text.splitlines() if t.strip().startswith(f"{key}:"))) + 1
    with pytest.raises(
        ProfileError,
        match=rf"dup\.yaml, line {line}, column \d+: not valid YAML: duplicate key '{key}' \(first on line {first}\)",
    ):
        config.load_profile(path)


def _linked_corpus(tmp_path: Path, links: int) -> Path:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("first document " * 30)
    (corpus / "sub" / "b.txt").write_text("second document " * 30)
    (corpus / "loop").symlink_to(corpus, target_is_directory=True)  # a link to its own folder
    if links > 1:
        (corpus / "sub" / "up").symlink_to("..", target_is_directory=True)
    (corpus / "same.txt").symlink_to(corpus / "a.txt")  # one file under a second name
    return corpus


@pytest.mark.parametrize("links", [1, 2])
def test_a_double_star_glob_does_not_follow_folder_links_and_reads_each_file_once(root, tmp_path, links):
    corpus = _linked_corpus(tmp_path, links)
    prof = _profile(root, tmp_path, _dapt(root, str(corpus / "**" / "*.txt")))
    files = data.corpus_sources(prof)["train"].files
    assert files == (corpus / "a.txt", corpus / "sub" / "b.txt")
    assert data.validate_inputs(prof)[str(corpus / "**" / "*.txt")] == 2  # two documents, each read once
    # The same folder named as a folder: linked folders are not entered either.
    assert readers.resolve(str(corpus), tmp_path, "data.dapt.train_file").files == files


def test_config_glob_files_keeps_glob_semantics(tmp_path):
    (tmp_path / "d" / ".hidden").mkdir(parents=True)
    for rel in ("d/x.txt", "d/y.md", "d/.h.txt", "d/.hidden/z.txt", "top.txt"):
        (tmp_path / rel).write_text("t")
    assert config.glob_files(tmp_path / "d" / "*.txt") == [tmp_path / "d" / "x.txt"]
    assert config.glob_files(tmp_path / "**" / "*.txt") == [tmp_path / "d" / "x.txt", tmp_path / "top.txt"]
    assert config.glob_files(tmp_path / "d" / ".*.txt") == [tmp_path / "d" / ".h.txt"]
    assert config.glob_files(tmp_path / "nothing" / "*.txt") == []


def test_a_fifo_as_a_data_file_is_refused_naming_key_and_path(root, tmp_path):
    fifo = tmp_path / "train.jsonl"
    os.mkfifo(fifo)
    rows = _jsonl(tmp_path / "v.jsonl", ALPACA)
    with pytest.raises(ProfileError, match=rf"\n  - data\.sft\.train_file: {re.escape(str(fifo))} {FIFO}"):
        _profile(root, tmp_path, _sft(str(fifo), rows))
    with pytest.raises(ProfileError, match=rf"\n  - model\.tiny\.generic_corpus: {re.escape(str(fifo))} {FIFO}"):
        _profile(root, tmp_path, {"model": {"tiny": {"generic_corpus": str(fifo)}}})
    with pytest.raises(ProfileError, match=rf"\n  - data\.dapt\.train_file: .* {FIFO}"):
        _profile(root, tmp_path, _dapt(root, str(fifo)))
    # Each reader refuses it too, for a profile loaded without the path checks (and validate never opens it).
    sft_prof = _profile(root, tmp_path, _sft(str(fifo), rows), check_paths=False)
    with pytest.raises(DataError, match=rf"data\.sft\.train_file: {re.escape(str(fifo))} is a named pipe"):
        data.validate_inputs(sft_prof)
    corpus_prof = _profile(root, tmp_path, {"model": {"tiny": {"generic_corpus": str(fifo)}}}, check_paths=False)
    with pytest.raises(DataError, match=rf"model\.tiny\.generic_corpus: {re.escape(str(fifo))} is a named pipe"):
        data.validate_inputs(corpus_prof)
    with pytest.raises(readers.SourceError, match=rf"data\.dapt\.train_file: {re.escape(str(fifo))} {FIFO}"):
        readers.resolve(str(fifo), tmp_path, "data.dapt.train_file")
    with pytest.raises(squad.SquadFormatError, match=rf"{re.escape(str(fifo))} is a named pipe"):
        squad.read_squad_file(fifo)
    with pytest.raises(DataError, match=rf"data\.sft\.train_file: {re.escape(str(fifo))} is a named pipe"):
        data.validate_inputs(_profile(root, tmp_path, {"data": {"sft": {"train_file": str(fifo)}}}, check_paths=False))
    with pytest.raises(DataError, match=rf"sft\.chat_template: {re.escape(str(fifo))} is a named pipe"):
        prompts.chat_template(_profile(root, tmp_path, {"sft": {"chat_template": str(fifo)}}))
    models = tmp_path / "models"
    models.mkdir()
    os.mkfifo(models / "base.gguf")
    spec = {"model": {"id": str(models), "gguf_file": "base.gguf", "tiny": None}}
    with pytest.raises(gguf.GGUFError, match=r"model\.gguf_file: .*base\.gguf is a named pipe"):
        gguf.locate(_profile(root, tmp_path, spec))
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ProfileError, match=r"profile file .*fifo\.yaml is a named pipe"):
        config.load_profile(tmp_path / "fifo.yaml")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_a_device_as_a_data_file_is_refused(root, tmp_path):
    # /dev/zero never ends: a reader that opened it would read forever.
    with pytest.raises(
        ProfileError, match=r"data\.dapt\.train_file: /dev/zero is a character device, not a regular file"
    ):
        _profile(root, tmp_path, _dapt(root, "/dev/zero"))
    with pytest.raises(tasks.TaskFormatError, match="/dev/zero is a character device"):
        _records(Path("/dev/zero"))


def _chain(tmp_path: Path, root: Path, length: int) -> Path:
    (tmp_path / "p0.yaml").write_text(yaml.safe_dump(_tree(root)))
    for i in range(1, length):
        (tmp_path / f"p{i}.yaml").write_text(f"extends: p{i - 1}.yaml\n")
    return tmp_path / f"p{length - 1}.yaml"


def test_an_extends_chain_is_bounded(root, tmp_path):
    assert config.load_profile(_chain(tmp_path, root, config.MAX_EXTENDS_DEPTH)).name == "tiny"
    with pytest.raises(ProfileError, match=r"p1199\.yaml: 'extends' chains more than 16 profiles"):
        config.load_profile(_chain(tmp_path, root, 1200))


def test_deep_nesting_is_named_not_a_recursion_error(root, tmp_path):
    deep = "[" * 100_000
    (tmp_path / "train.json").write_text(deep)
    with pytest.raises(squad.SquadFormatError, match=r"train\.json: malformed JSON \(nested too deeply\)"):
        squad.read_squad_file(tmp_path / "train.json")
    (tmp_path / "train.jsonl").write_text(deep + "\n")
    with pytest.raises(squad.SquadFormatError, match=r"train\.jsonl: line 1: malformed JSON \(nested too deeply\)"):
        squad.read_squad_file(tmp_path / "train.jsonl")
    with pytest.raises(DataError, match=r"data\.sft\.train_file: .*train\.json: malformed JSON \(nested too deeply\)"):
        data.validate_inputs(_profile(root, tmp_path, {"data": {"sft": {"train_file": str(tmp_path / "train.json")}}}))
    with pytest.raises(tasks.TaskFormatError, match=r"train\.jsonl, line 1: not valid JSON \(nested too deeply\)"):
        _records(tmp_path / "train.jsonl")
    (tmp_path / "list.json").write_text(deep)
    with pytest.raises(tasks.TaskFormatError, match=r"list\.json: not valid JSON \(nested too deeply\)"):
        _records(tmp_path / "list.json")
    with pytest.raises(
        DataError, match=r"data\.dapt\.train_file: .*train\.jsonl, line 1: not valid JSON \(nested too deeply\)"
    ):
        data.validate_inputs(_profile(root, tmp_path, _dapt(root, str(tmp_path / "train.jsonl"))))
    (tmp_path / "deep.yaml").write_text("name: " + deep + "\n")
    with pytest.raises(ProfileError, match=r"deep\.yaml: not valid YAML: nested too deeply"):
        config.load_profile(tmp_path / "deep.yaml")


NESTED_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def test_a_chat_template_that_never_ends_is_stopped_naming_the_key(root, tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(prompts, "RENDER_SECONDS", 0.5)
    chat = {"sft": {"prompt_style": "chat", "chat_template": NESTED_LOOPS}}
    prof = _profile(root, tmp_path, chat)
    stopped = r"sft\.chat_template: rendering one conversation took more than 0\.5 s \(a loop that does not end\?\)"
    with pytest.raises(DataError, match=stopped):
        data.validate_inputs(prof)
    with pytest.raises(DataError, match=stopped):
        prompts.prompt_format(prof, tokenizer)  # notebook 01's check, with the base's tokenizer
    assert sys.gettrace() is None  # the tracer that stopped it is gone
    # A loop that writes as it goes is stopped the same way.
    with pytest.raises(DataError, match=stopped):
        prompts.check_chat_template(
            _profile(
                root, tmp_path, {"sft": {"chat_template": NESTED_LOOPS.replace("{% endfor %}", "x{% endfor %}", 1)}}
            )
        )


# --------------------------------------------------------------------------------------------------
# Tracebacks where a message belongs


def _random_lines(n: int) -> bytes:
    return b"".join(os.urandom(40).hex().encode() + b"\n" for _ in range(n))


def test_a_truncated_or_mislabelled_gz_is_named(root, tmp_path):
    cut = tmp_path / "wiki.train.raw.gz"
    cut.write_bytes(gzip.compress(_random_lines(2000))[:20_000])
    with pytest.raises(
        DataError,
        match=r"data\.dapt\.train_file: .*wiki\.train\.raw\.gz: the gzip data end early, after line \d+ \(a truncated file\)",
    ):
        data.validate_inputs(_profile(root, tmp_path, _dapt(root, str(cut))))
    plain = tmp_path / "wiki.valid.raw.gz"
    plain.write_text("= Not compressed =\nat all\n")
    with pytest.raises(
        DataError,
        match=r"data\.dapt\.train_file: .*wiki\.valid\.raw\.gz: not a readable gzip file, before the end of line 1 \(Not a gzipped file",
    ):
        data.validate_inputs(_profile(root, tmp_path, _dapt(root, str(plain))))
    corpus = tmp_path / "generic.jsonl.gz"
    corpus.write_bytes(gzip.compress(b'{"text": "a"}\n' * 500)[:-12])  # the CRC and size trailer gone
    with pytest.raises(readers.SourceError, match=r"generic\.jsonl\.gz: the gzip data end early"):
        list(readers.decoded_lines(corpus, "model.tiny.generic_corpus"))


def _csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_csv_field_over_the_csv_modules_default_limit_is_read(root, tmp_path):
    long_input = "word " * 60_000  # 300,000 characters; the csv module's default limit is 131,072
    rows = [{**r, "input": long_input if i == 0 else ""} for i, r in enumerate(ALPACA)]
    path = _csv(tmp_path / "train.csv", rows, ["id", "instruction", "input", "output"])
    convs = _conversations(path)
    assert len(convs) == 12 and convs[0].messages[0] == ("user", "Question 0?\n\n" + long_input.strip())
    val = _csv(tmp_path / "val.csv", rows, ["id", "instruction", "input", "output"])
    counts = data.validate_inputs(_profile(root, tmp_path, _sft(str(path), str(val))))
    assert counts[str(path)] == 12


def test_csv_that_is_not_utf8_is_named_by_row_line_and_byte(root, tmp_path):
    head = b"instruction,input,output\n"
    first = b'"Question\nover two lines",,Answer\n'  # row 1 is lines 2-3
    bad = b"Caf\xe9?,,Answer\n"  # Latin-1, row 2 on line 4
    path = tmp_path / "train.csv"
    path.write_bytes(head + first + bad)
    byte = len(head) + len(first) + 3
    where = rf"train\.csv, row 2 \(line 4\): not valid UTF-8 at byte {byte} of the file"
    with pytest.raises(tasks.TaskFormatError, match=rf"data\.sft\.train_file: .*{where}"):
        _records(path)
    (tmp_path / "header.csv").write_bytes(b"instr\xfcction,output\nq,a\n")
    with pytest.raises(tasks.TaskFormatError, match=r"header\.csv, the header \(line 1\): not valid UTF-8 at byte 5"):
        _records(tmp_path / "header.csv")
    dapt = tmp_path / "corpus.csv"
    before = b"text\n" + b'"a document\nof two lines"\n'
    dapt.write_bytes(before + b"caf\xe9\n")
    with pytest.raises(
        DataError,
        match=rf"data\.dapt\.train_file: .*corpus\.csv, row 2 \(line 4\): not valid UTF-8 at byte {len(before) + 3}",
    ):
        data.validate_inputs(_profile(root, tmp_path, _dapt(root, str(dapt))))
    (tmp_path / "quotes.csv").write_bytes(b'instruction,output\n"q"x,a\n')
    with pytest.raises(
        tasks.TaskFormatError, match=r"quotes\.csv, row 1 \(line 2\): not valid CSV \(',' expected after"
    ):
        _records(tmp_path / "quotes.csv")


def test_a_truncated_or_mislabelled_parquet_is_named(root, tmp_path):
    cut = _cut_in_half(_parquet(tmp_path / "train.parquet", ALPACA * 50))
    with pytest.raises(
        tasks.TaskFormatError, match=r"data\.sft\.train_file: .*train\.parquet: not readable as parquet \(ArrowInvalid"
    ):
        _records(cut)
    (tmp_path / "text.parquet").write_text("instruction,output\nq,a\n")
    with pytest.raises(tasks.TaskFormatError, match=r"text\.parquet: not readable as parquet"):
        _records(tmp_path / "text.parquet")
    docs = _cut_in_half(_parquet(tmp_path / "docs.parquet", [{"text": "a document " * 40}] * 200))
    source = readers.resolve(str(docs), tmp_path, "data.dapt.train_file")
    with pytest.raises(
        readers.SourceError, match=r"data\.dapt\.train_file: parquet reader .*docs\.parquet: not readable as parquet"
    ):
        readers.read(source)


@pytest.mark.parametrize(
    ("role", "shown"), [(["user"], r"\['user'\]"), ({"name": "user"}, r"\{'name': 'user'\}"), (7, "7"), (None, "None")]
)
def test_a_chat_turn_whose_role_is_not_a_name_is_refused(tmp_path, role, shown):
    path = tmp_path / "chat.jsonl"
    _jsonl(path, [{"messages": [{"role": role, "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    with pytest.raises(
        tasks.TaskFormatError, match=rf"chat\.jsonl, line 1, turn 0: unknown role {shown} \(expected one of"
    ):
        _conversations(path, "messages")


@pytest.mark.parametrize(
    ("article", "message"),
    [
        ({"title": "T", "paragraphs": 5}, r"data\[0\]\.paragraphs: must be a list of paragraphs, not int"),
        ({"title": "T", "paragraphs": "text"}, r"data\[0\]\.paragraphs: must be a list of paragraphs, not str"),
        (
            {"title": "T", "paragraphs": [{"context": "c", "qas": None}]},
            r"data\[0\]\.paragraphs\[0\]\.qas: must be a list of questions, not NoneType",
        ),
        (
            {"title": "T", "paragraphs": [{"context": "c", "qas": {"id": 1}}]},
            r"data\[0\]\.paragraphs\[0\]\.qas: must be a list of questions, not dict",
        ),
    ],
)
def test_squad_sections_of_the_wrong_type_are_named(root, tmp_path, article, message):
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps({"version": "1.1", "data": [article]}))
    with pytest.raises(squad.SquadFormatError, match=rf"dev-v1\.1\.json: {message}"):
        squad.read_squad_file(path)
    with pytest.raises(DataError, match=rf"data\.sft\.train_file: .*dev-v1\.1\.json: {message}"):
        data.validate_inputs(_profile(root, tmp_path, {"data": {"sft": {"train_file": str(path)}}}))


def test_a_set_value_that_is_not_yaml_is_named(root, capsys):
    with pytest.raises(ProfileError, match=r"override 'sft\.system_prompt', line 1, column \d+: not valid YAML: "):
        config.parse_override("sft.system_prompt=[oops")
    with pytest.raises(ProfileError, match=r"override 'seed': not valid YAML: Exceeds the limit \(4300 digits\)"):
        config.parse_override("seed=" + "1" * 5000)
    with pytest.raises(ProfileError, match=r"override 'x', line 1, column 1: not valid YAML: the alias \*a"):
        config.parse_override("x=*a")
    with pytest.raises(ProfileError, match=r"override '=3': no key before '='"):
        config.parse_override("=3")
    assert main(["validate", "--profile", str(root / "params" / "tiny.yaml"), "--set", "sft.system_prompt={a: [}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modft: override 'sft.system_prompt', line 1") and err.count("\n") == 1


def _fake_conversion(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A GGUF file (any bytes: only its sha256 counts here) and a finished-looking conversion of it."""
    src = tmp_path / "models" / "base.gguf"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(b"GGUF" + os.urandom(64))
    sha = cache.sha256_file(src)
    root = tmp_path / "cache"
    folder = root / f"gguf-llama-{sha[:16]}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / gguf.MARKER).write_text(json.dumps({"kind": "gguf", "sha256": sha}))
    return src, root, folder


@pytest.mark.parametrize("damage", ["marker cut short", "config.json gone", "weights gone", "marker not an object"])
def test_a_damaged_gguf_conversion_is_discarded_and_converted_again(root, tmp_path, damage):
    src, cache_root, folder = _fake_conversion(tmp_path)
    assert gguf.already_converted(src, cache_root) == folder  # intact: reused
    if damage == "marker cut short":
        marker = folder / gguf.MARKER
        marker.write_bytes(marker.read_bytes()[:10])
    elif damage == "config.json gone":
        (folder / "config.json").unlink()
    elif damage == "weights gone":
        (folder / "model.safetensors").unlink()
    else:
        (folder / gguf.MARKER).write_text("[1, 2]")
    assert gguf.already_converted(src, cache_root) is None and not folder.exists()  # set aside, not a traceback
    _, _, folder = _fake_conversion(tmp_path / "again")
    (folder / "config.json").unlink()

    def build(staging: Path) -> None:
        (staging / "config.json").write_text("{}")
        (staging / "model.safetensors").write_bytes(b"")
        (staging / gguf.MARKER).write_text(json.dumps({"rebuilt": True}))

    assert cache.build_once(folder, gguf.MARKER, build) == {"rebuilt": True}  # rebuilt in place
    # Through the profile: the damaged conversion goes, and the file itself is checked (and named) again.
    src, cache_root, damaged = _fake_conversion(tmp_path / "third")
    (damaged / "config.json").unlink()
    spec = {"model": {"id": str(src.parent), "gguf_file": src.name, "tiny": None}, "cache_dir": str(cache_root)}
    with pytest.raises(gguf.GGUFError, match=r"base\.gguf: unreadable GGUF header or tensor index"):
        gguf.converted_folder(_profile(root, tmp_path, spec), progress=False)
    assert not damaged.exists()


def test_a_conversion_whose_config_is_no_config_is_named(tmp_path):
    src, cache_root, folder = _fake_conversion(tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(
        gguf.GGUFError, match=r"gguf-llama-\w+: the converted config cannot be read .*delete the folder"
    ):
        gguf.read_config(src, cache_root)
    with pytest.raises(cache.CacheError, match=r"built, but modft_gguf\.json or config\.json is missing or unreadable"):
        cache.build_once(
            tmp_path / "cache" / "other", gguf.MARKER, lambda staging: (staging / gguf.MARKER).write_text("{}")
        )


@pytest.mark.parametrize(
    ("key", "value"), [("seed", 2**32), ("seed", -1), ("dapt.train.seed", 2**32), ("sft.train.seed", 2**64)]
)
def test_a_seed_numpy_cannot_take_is_refused_naming_the_key(root, key, value):
    bound = "less than or equal to 4294967295" if value > 0 else "greater than or equal to 0"
    with pytest.raises(ProfileError, match=rf"\n  - {re.escape(key)}: Input should be {bound} \(got {value}\)"):
        config.load_profile(root / "params" / "tiny.yaml", {key: value})
    largest = config.load_profile(root / "params" / "tiny.yaml", {key: 2**32 - 1})
    section: Any = largest
    for part in key.split("."):
        section = getattr(section, part)
    assert section == 2**32 - 1


# --------------------------------------------------------------------------------------------------
# What validate passed and a later step failed on, or was misled by


def test_the_same_file_as_both_splits_is_refused(root, tmp_path):
    train = root / "data/sample/squad/train.jsonl"
    with pytest.raises(
        ProfileError, match=rf"\n  - data\.sft\.validation_file: {re.escape(str(train))} is also data\.sft\.train_file"
    ):
        _profile(root, tmp_path, {"data": {"sft": {"validation_file": str(train)}}})
    (tmp_path / "link.jsonl").symlink_to(train)  # the same file under another name
    with pytest.raises(ProfileError, match=r"data\.sft\.validation_file: .*link\.jsonl is also data\.sft\.train_file"):
        _profile(root, tmp_path, {"data": {"sft": {"validation_file": str(tmp_path / "link.jsonl")}}})
    wiki = str(root / WIKI / "train.jsonl")
    with pytest.raises(
        ProfileError, match=r"data\.dapt\.validation_file: .*train\.jsonl is also data\.dapt\.train_file"
    ):
        _profile(root, tmp_path, {"data": {"dapt": {"validation_file": wiki}}})
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(f"document {name} " * 30)
    prof = _profile(
        root,
        tmp_path,
        {"data": {"dapt": {"train_file": str(folder / "*.txt"), "validation_file": str(folder / "b.txt")}}},
    )
    with pytest.raises(
        DataError, match=r"data\.dapt\.validation_file: .*docs/b\.txt is also read by data\.dapt\.train_file"
    ):
        data.validate_inputs(prof)


def test_a_registry_that_other_processes_cannot_see_or_that_is_a_file_is_refused(root, tmp_path):
    with pytest.raises(
        ProfileError, match=r"\n  - registry: memory:// is the memory of one process.*notebook 03 would not find"
    ):
        config.load_profile(root / "params" / "tiny.yaml", {"registry": "memory://x"})
    with pytest.raises(ProfileError, match="registry: memory:// is the memory of one process"):
        config.load_profile(root / "params" / "tiny.yaml", {"registry": "simplecache::memory://x"})
    (tmp_path / "store").write_text("not a folder")
    for value in (str(tmp_path / "store"), f"file://{tmp_path / 'store'}"):
        with pytest.raises(
            ProfileError, match=rf"\n  - registry: {re.escape(str(tmp_path / 'store'))} is a file; it must be a folder"
        ):
            config.load_profile(root / "params" / "tiny.yaml", {"registry": value})
    with pytest.raises(ProfileError, match=r"  - cache_dir: .*store is a file"):
        config.load_profile(root / "params" / "tiny.yaml", {"cache_dir": str(tmp_path / "store")})
    assert config.load_profile(root / "params" / "tiny.yaml", {"registry": str(tmp_path / "new")}).registry.endswith(
        "new"
    )


def test_warmup_longer_than_the_run_is_refused(root):
    with pytest.raises(
        ProfileError, match=r"\n  - dapt\.train\.warmup_steps: warmup_steps 10 is more than max_steps 4"
    ):
        config.load_profile(root / "params" / "tiny.yaml", {"dapt.train.max_steps": 4})
    fine = config.load_profile(root / "params" / "tiny.yaml", {"sft.train.max_steps": 10, "dapt.train.warmup_steps": 0})
    assert fine.sft.train.max_steps == fine.sft.train.warmup_steps == 10


def test_a_block_size_longer_than_the_base_accepts_is_refused(root, tmp_path):
    with pytest.raises(
        ProfileError, match=r"data\.block_size 2048 is more than model\.tiny\.max_position_embeddings 1024"
    ):
        config.load_profile(root / "params" / "tiny.yaml", {"data.block_size": 2048})
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 256}))
    prof = _profile(root, tmp_path, {"model": {"id": str(base), "tiny": None}, "data": {"block_size": 512}})
    with pytest.raises(
        DataError, match=r"data\.block_size: 512 is more than the 256 positions the base .*base accepts"
    ):
        data.validate_inputs(prof)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("dapt.train.max_steps", True, r"Input should be a valid integer \(got True\)"),
        ("data.sft_subset_size", 10.0, r"Input should be a valid integer \(got 10\.0\)"),
        ("sft.lora.r", "8", r"Input should be a valid integer \(got '8'\)"),
        ("model.load_in_4bit", 1, r"Input should be a valid boolean \(got 1\)"),
        ("rollback.regression_tolerance", float("inf"), r"Input should be a finite number \(got inf\)"),
        ("dapt.train.learning_rate", float("nan"), r"Input should be a finite number \(got nan\)"),
    ],
)
def test_numbers_are_strict_and_finite(root, key, value, message):
    with pytest.raises(ProfileError, match=rf"\n  - {re.escape(key)}: {message}"):
        config.load_profile(root / "params" / "tiny.yaml", {key: value})


def test_an_infinite_tolerance_written_as_yaml_is_refused(root):
    key, value = config.parse_override("rollback.regression_tolerance=.inf")
    with pytest.raises(ProfileError, match=r"rollback\.regression_tolerance: Input should be a finite number"):
        config.load_profile(root / "params" / "tiny.yaml", {key: value})
    assert config.load_profile(root / "params" / "tiny.yaml", {key: 2}).rollback.regression_tolerance == 2.0


def test_a_byte_order_mark_is_accepted_by_every_text_reader(root, tmp_path):
    wiki = (root / WIKI / "train.jsonl").read_bytes()
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + wiki)
    prof = _profile(root, tmp_path, _dapt(root, str(tmp_path / "bom.jsonl")))
    assert data.validate_inputs(prof)[str(tmp_path / "bom.jsonl")] == wiki.count(b"\n")
    assert data.load_rows(prof.data.dapt, prof)["train"][0]["text"] == json.loads(wiki.splitlines()[0])["text"]
    (tmp_path / "doc.txt").write_bytes(b"\xef\xbb\xbfA document.")
    assert readers.read(readers.resolve(str(tmp_path / "doc.txt"), tmp_path, "k"))[0]["text"] == "A document."
    (tmp_path / "sft.csv").write_bytes(b"\xef\xbb\xbfinstruction,output\nQ?,A.\n")
    assert _conversations(tmp_path / "sft.csv")[0].messages == (("user", "Q?"), ("assistant", "A."))
    (tmp_path / "generic.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "prose"}\n')
    corpus_prof = _profile(root, tmp_path, {"model": {"tiny": {"generic_corpus": str(tmp_path / "generic.jsonl")}}})
    assert data.validate_inputs(corpus_prof)[str(tmp_path / "generic.jsonl")] == 1


SECURITY = "{% for m in messages %}{{ m['content'].__class__.__mro__ }}{% endfor %}"


def test_a_template_the_sandbox_refuses_names_sft_chat_template(root, tmp_path, tokenizer):
    prof = _profile(root, tmp_path, {"sft": {"prompt_style": "chat", "chat_template": SECURITY}})
    refused = (
        r"sft\.chat_template: the chat template cannot be rendered \(SecurityError: access to attribute '__class__'"
    )
    with pytest.raises(DataError, match=refused):
        data.validate_inputs(prof)  # before any model loads
    with pytest.raises(DataError, match=refused):
        prompts.prompt_format(prof, tokenizer)  # notebook 01
    # A template that fails only on some conversations fails where notebook 01 renders them.
    only_system = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'].__class__.__mro__ }}{% endif %}"
        "{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    )
    fmt = prompts.PromptFormat("chat", "Be brief.", only_system)
    conv = tasks.Conversation("c1", (("user", "Q?"), ("assistant", "A.")))
    with pytest.raises(DataError, match=refused):
        tasks.tokenize_conversation(conv, tokenizer, fmt, 256)
    syntax = _profile(root, tmp_path, {"sft": {"prompt_style": "chat", "chat_template": "{% for %}"}})
    with pytest.raises(
        DataError, match=r"sft\.chat_template: the chat template cannot be rendered \(TemplateSyntaxError"
    ):
        data.validate_inputs(syntax)


# --------------------------------------------------------------------------------------------------
# Each reader with a truncated, mislabelled, oversized and wrongly-typed file


PARQUET_MAGIC = b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x12\x00\x00\x08\x1c\xff\xfe"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "cut.jsonl",
            b'{"text": "a line"}\n{"text": "cut he',
            r"cut\.jsonl, line 2: not valid JSON \(Unterminated string",
        ),
        ("binary.jsonl", PARQUET_MAGIC, r"binary\.jsonl, line 1: not valid UTF-8 at byte \d+ of the file"),
        ("typed.jsonl", b'{"text": 5}\n', r"typed\.jsonl, line 1: expected an object with a string 'text' field"),
        ("list.jsonl", b'["text"]\n', r"list\.jsonl, line 1: expected an object with a string 'text' field"),
        ("huge.jsonl", b'{"text": ' + b"1" * 5000 + b"}\n", r"huge\.jsonl, line 1: not valid JSON \(Exceeds the limit"),
        ("binary.txt", b"\xff\xfe\x00d\x00o\x00c", r"binary\.txt, line 1: not valid UTF-8 at byte 0 of the file"),
        ("cut.parquet", None, r"parquet reader .*cut\.parquet: not readable as parquet"),
        ("text.parquet", b"text\nnot parquet\n", r"parquet reader .*text\.parquet: not readable as parquet"),
    ],
)
def test_the_dapt_reader_names_every_bad_file(root, tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        _cut_in_half(_parquet(path, [{"text": "a document " * 40}] * 200))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"data\.dapt\.train_file: .*{message}"):
        data.validate_inputs(_profile(root, tmp_path, _dapt(root, str(path))))


def test_the_dapt_reader_takes_oversized_rows(root, tmp_path):
    long_doc = "a very long document " * 20_000  # 400,000 characters in one JSON line and one CSV field
    _jsonl(tmp_path / "long.jsonl", [{"text": long_doc}])
    _csv(tmp_path / "long.csv", [{"text": long_doc}], ["text"])
    for name in ("long.jsonl", "long.csv"):
        prof = _profile(root, tmp_path, _dapt(root, str(tmp_path / name)))
        assert data.validate_inputs(prof)[str(tmp_path / name)] == 1
        assert data.load_rows(prof.data.dapt, prof)["train"][0]["text"] == long_doc


def test_a_damaged_saved_dataset_is_named(root, tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.json").write_text('{"_data_files": [')
    source = readers.resolve(str(saved), tmp_path, "data.dapt.train_file")
    with pytest.raises(
        readers.SourceError, match=r"data\.dapt\.train_file: saved reader .*saved: not readable as saved"
    ):
        readers.read(source)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "cut.json",
            b'{"version": "1.1", "data": [{"title": "T", "parag',
            r"cut\.json: line 1 column \d+: malformed JSON",
        ),
        ("binary.json", PARQUET_MAGIC, r"binary\.json: line 1: invalid UTF-8 at byte \d+"),
        ("number.json", b"5", r"number\.json: neither the original SQuAD layout"),
        ("data.json", b'{"data": {"title": "T"}}', r"data\.json: 'data' must be a list"),
        ("huge.json", b"[" + b"1" * 5000 + b"]", r"huge\.json: malformed JSON \(Exceeds the limit"),
    ],
)
def test_the_squad_reader_names_every_bad_file(root, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"data\.sft\.train_file: .*{message}"):
        data.validate_inputs(_profile(root, tmp_path, {"data": {"sft": {"train_file": str(path)}}}))


def test_the_squad_reader_names_rows_of_the_wrong_type(root, tmp_path):
    rows = _squad_rows(root)
    rows[1]["answers"]["answer_start"] = ["3"]
    _jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(squad.SquadFormatError, match=r"rows\.jsonl: line 2: answer_start '3' is not an integer"):
        squad.read_squad_file(tmp_path / "rows.jsonl")
    rows[1] = {**rows[0], "context": ["x"] * 100_000}
    _jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(
        squad.SquadFormatError, match=r"rows\.jsonl: line 2: 'context' must be a string, not list"
    ) as err:
        squad.read_squad_file(tmp_path / "rows.jsonl")
    assert len(str(err.value)) < MESSAGE_CHARS


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cut.json", r"cut\.json, line 1: not valid JSON \(Unterminated string"),
        ("cut.jsonl", r"cut\.jsonl, line 13: not valid JSON \(Unterminated string"),
        ("cut.csv", r"cut\.csv, row 13 \(line 14\): not valid CSV \(unexpected end of data\)"),
        ("cut.parquet", r"cut\.parquet: not readable as parquet"),
    ],
)
def test_the_sft_readers_name_a_truncated_file(tmp_path, name, message):
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(ALPACA)[:-40])
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA) + '{"instruction": "cut he')
    elif name.endswith(".csv"):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(ALPACA[0]))
        writer.writeheader()
        writer.writerows(ALPACA)
        path.write_text(buffer.getvalue() + 'r12,"a quoted field cut sho')
    else:
        _cut_in_half(_parquet(path, ALPACA * 50))
    with pytest.raises(tasks.TaskFormatError, match=rf"data\.sft\.train_file: .*{message}"):
        _conversations(path)


@pytest.mark.parametrize(
    ("rows", "fmt", "message"),
    [
        (
            [{"instruction": 5, "output": "a"}],
            "prompt_response",
            r"line 1: field 'instruction' \(data\.sft\.fields\.prompt\) must be text, got int",
        ),
        ([["not", "an", "object"]], "prompt_response", r"line 1: expected an object with fields, got list"),
        (
            [{"messages": "hi"}],
            "messages",
            r"line 1: field 'messages' \(data\.sft\.messages_field\) must be a non-empty list",
        ),
        (
            [{"messages": [{"role": "user", "content": {"text": "hi"}}]}],
            "messages",
            r"line 1, turn 0: content must be text, got dict",
        ),
        ([{"messages": ["hi"]}], "messages", r"line 1, turn 0: expected an object with role and content"),
    ],
)
def test_the_sft_readers_name_rows_of_the_wrong_type(tmp_path, rows, fmt, message):
    path = tmp_path / "set.jsonl"
    _jsonl(path, rows)
    with pytest.raises(tasks.TaskFormatError, match=rf"data\.sft\.train_file: .*set\.jsonl, {message}"):
        _conversations(path, fmt)


def test_the_sft_readers_name_a_mislabelled_file(tmp_path):
    lines = tmp_path / "rows.csv"
    lines.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))  # JSON lines named .csv
    with pytest.raises(tasks.TaskFormatError, match=r"rows\.csv, row 1: missing field 'instruction'"):
        _conversations(lines)
    table = _parquet(tmp_path / "table.parquet", ALPACA)
    (tmp_path / "table.jsonl").write_bytes(table.read_bytes())  # parquet named .jsonl
    with pytest.raises(tasks.TaskFormatError, match=r"table\.jsonl, line \d+: not valid UTF-8 at byte \d+ of the file"):
        _conversations(tmp_path / "table.jsonl")
    (tmp_path / "rows.txt").write_text("a")
    with pytest.raises(tasks.TaskFormatError, match=r"rows\.txt: no reader for '\.txt'"):
        _conversations(tmp_path / "rows.txt")
    assert _conversations(_parquet(tmp_path / "good.parquet", ALPACA))[0].reference == "Answer 0."


def test_a_chat_template_file_that_is_not_text_is_named(root, tmp_path):
    (tmp_path / "turns.jinja").write_bytes(b"{{ messages }}\n\xff\xfe")
    prof = _profile(root, tmp_path, {"sft": {"prompt_style": "chat", "chat_template": str(tmp_path / "turns.jinja")}})
    with pytest.raises(DataError, match=r"sft\.chat_template: .*turns\.jinja, line 2: not valid UTF-8 at byte 15"):
        data.validate_inputs(prof)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: caf\xe9\n", r"bad\.yaml, line 1: not valid UTF-8 at byte 9"),
        (b"- a list\n- of keys\n", r"bad\.yaml: the top level must be a mapping of keys"),
        (b"extends: 5\n", r"bad\.yaml: extends 5: expected the file name of a profile"),
        (
            b"name: x\n" + b"# padding\n" * 200_000,
            r"bad\.yaml: 2,000,008 bytes is not a profile \(at most 1,048,576 bytes\)",
        ),
        (b'name: "unterminated\n', r"bad\.yaml, line 2, column 1: not valid YAML: found unexpected end of stream"),
        (b"seed: " + b"9" * 5000 + b"\n", r"bad\.yaml: not valid YAML: Exceeds the limit \(4300 digits\)"),
    ],
)
def test_the_profile_reader_names_every_bad_file(tmp_path, content, message):
    (tmp_path / "bad.yaml").write_bytes(content)
    with pytest.raises(ProfileError, match=message) as err:
        config.load_profile(tmp_path / "bad.yaml")
    assert len(str(err.value)) < MESSAGE_CHARS


def test_every_refusal_above_is_one_of_ours():
    # The CLI turns exactly these into one line and exit code 2; a library's own error would be a traceback.
    for cls in (
        ProfileError,
        DataError,
        readers.SourceError,
        squad.SquadFormatError,
        tasks.TaskFormatError,
        gguf.GGUFError,
        cache.CacheError,
    ):
        assert issubclass(cls, ModftError)
