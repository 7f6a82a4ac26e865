"""The committed sample data: regenerated and compared byte for byte, then checked for the properties the
notebooks and the cleaning stages rely on (formats, sizes, disjoint splits, planted PII and duplicates)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import phonenumbers
import pytest

SAMPLE = Path(__file__).resolve().parents[3] / "data" / "sample"
GENERATOR = "make_sample_data.py"


def _load_generator():
    """data/sample/make_sample_data.py, the build-time generator that sits next to what it generates."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("make_sample_data", SAMPLE / GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


_gen = _load_generator()
luhn_valid, main, wikitextify, write_sample_data = _gen.luhn_valid, _gen.main, _gen.wikitextify, _gen.write_sample_data
SPLITS = ("train", "validation", "test")
TITLE_ROW = re.compile(r"^ = (?!=)(.+) = \n$")
HEADING_ROW = re.compile(r"^ (= ){1,3}.+ (= ?){1,3}\n$")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name != GENERATOR and "__pycache__" not in p.parts
    )


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    write_sample_data(out, seed=0)
    return out


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((SAMPLE / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def wiki() -> dict[str, list[str]]:
    return {s: [r["text"] for r in _jsonl(SAMPLE / "wikitext" / f"{s}.jsonl")] for s in SPLITS}


@pytest.fixture(scope="module")
def squad() -> dict[str, list[dict]]:
    return {s: _jsonl(SAMPLE / "squad" / f"{s}.jsonl") for s in ("train", "validation")}


# --- determinism ----------------------------------------------------------------------------------


def test_committed_files_are_exactly_what_the_generator_writes(regenerated):
    """Nobody hand-edits data/sample: regenerate with `python data/sample/make_sample_data.py`."""
    assert _files(regenerated) == _files(SAMPLE)
    for rel in _files(regenerated):
        assert (regenerated / rel).read_bytes() == (SAMPLE / rel).read_bytes(), f"{rel} differs from the generator"


def test_same_seed_same_bytes_other_seed_other_world(regenerated, tmp_path):
    paths = write_sample_data(tmp_path / "again", seed=0)
    for path in paths.values():
        assert path.read_bytes() == (regenerated / path.relative_to(tmp_path / "again")).read_bytes()
    other = write_sample_data(tmp_path / "other", seed=1)
    assert other["wikitext_train"].read_bytes() != paths["wikitext_train"].read_bytes()


def test_cli_writes_the_same_files(tmp_path, regenerated, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    assert "wikitext_train" in capsys.readouterr().out
    assert (tmp_path / "squad" / "train.jsonl").read_bytes() == (regenerated / "squad" / "train.jsonl").read_bytes()


# --- sizes ----------------------------------------------------------------------------------------


def test_sizes(wiki, squad):
    chars = {s: sum(len(t) for t in rows) for s, rows in wiki.items()}
    assert 1_200_000 <= chars["train"] <= 1_600_000
    assert 100_000 <= chars["validation"] <= 160_000
    assert 100_000 <= chars["test"] <= 160_000
    generic = sum(len(r["text"]) for r in _jsonl(SAMPLE / "generic" / "train.jsonl"))
    assert 1_000_000 <= generic <= 1_500_000
    assert len(squad["train"]) >= 1_200
    assert 200 <= len(squad["validation"]) <= 300
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 8_000_000


# --- wikitext -------------------------------------------------------------------------------------


def test_wikitext_row_layout(wiki):
    for split, rows in wiki.items():
        assert rows[0] == "" and TITLE_ROW.match(rows[1]) and rows[2] == "", split
        for i, row in enumerate(rows):
            if not row:
                continue
            # One line of the original file per row: a single trailing newline, a leading space.
            assert row.endswith("\n") and "\n" not in row[:-1] and row.startswith(" "), (split, i, row)
            if HEADING_ROW.match(row):
                assert rows[i - 1] == "" and rows[i + 1] == "", (split, i)


def test_wikitext_tokenisation_features(wiki):
    text = "".join(wiki["train"])
    for feature in (" @-@ ", " @,@ ", " @.@ ", " 's ", " , ", " . \n", " ( ", " ) ", ' " ', " = = = "):
        assert feature in text, feature
    headings = [r for r in wiki["train"] if r.startswith(" = = ") and not r.startswith(" = = = ")]
    assert len(headings) > 1000


def test_wikitextify_matches_wikitext_conventions():
    assert wikitextify('The guild\'s 12,400 sea-faring members (about 3.5 per cent) sang "Home".') == (
        'The guild \'s 12 @,@ 400 sea @-@ faring members ( about 3 @.@ 5 per cent ) sang " Home " .'
    )
    assert wikitextify("version 2.1.4, in 1743") == "version 2 @.@ 1 @.@ 4 , in 1743"


def _titles(rows: list[str]) -> list[str]:
    return [m.group(1) for r in rows if (m := TITLE_ROW.match(r))]


def test_wikitext_splits_share_no_title(wiki):
    titles = {s: set(_titles(rows)) for s, rows in wiki.items()}
    assert len(titles["validation"]) >= 30 and len(titles["test"]) >= 30
    assert not titles["train"] & titles["validation"]
    assert not titles["train"] & titles["test"]
    assert not titles["validation"] & titles["test"]


def test_held_out_text_shares_the_domain_vocabulary(wiki):
    train_words = set("".join(wiki["train"]).split())
    held = "".join(wiki["validation"]).split()
    assert sum(w not in train_words for w in held) / len(held) < 0.03


def test_facts_are_stated_consistently(wiki, squad, manifest):
    """A town has one founding year and one founder, in every article and QA context that mentions it."""
    near = {wikitextify(t) for t in manifest["duplicates"]["near_articles"]}  # edited on purpose
    texts, title = [], ""
    for split in SPLITS:
        for row in wiki[split]:
            if m := TITLE_ROW.match(row):
                title = m.group(1)
            if title not in near:
                texts.append(row)
    texts += [r["context"] for rows in squad.values() for r in rows]
    years: dict[str, set[str]] = {}
    founders: dict[str, set[str]] = {}
    for text in texts:
        for town, year, founder in re.findall(
            r"(?!It )([A-Z][a-z]+) was founded in (\d{4}) by ([A-Z][a-z]+ [A-Z][a-z]+)", text
        ):
            years.setdefault(town, set()).add(year)
            founders.setdefault(town, set()).add(founder)
        for town, year in re.findall(r"founded ([A-Z][a-z]+) in (\d{4})", text):
            years.setdefault(town, set()).add(year)
    assert len(years) > 50 and len(founders) > 25
    assert all(len(v) == 1 for v in years.values()), {k: v for k, v in years.items() if len(v) > 1}
    assert all(len(v) == 1 for v in founders.values()), {k: v for k, v in founders.items() if len(v) > 1}


def test_pii_is_planted_in_a_small_share_of_paragraphs(wiki, manifest):
    kinds = Counter(item["kind"] for item in manifest["pii"])
    assert set(kinds) == {"email", "phone", "card", "ip"}
    for split, rows in wiki.items():
        paragraphs = [r for r in rows if r and not HEADING_ROW.match(r)]
        values = [item["value"] for item in manifest["pii"] if item["split"] == split]
        assert values, split
        text = "".join(rows)
        assert all(v in text for v in values)
        share = sum(any(v in p for v in values) for p in paragraphs) / len(paragraphs)
        assert 0.01 <= share <= 0.035, (split, share)
    for item in manifest["pii"]:
        if item["kind"] == "phone":
            region = "US" if item["value"].startswith("(") else "GB"
            assert phonenumbers.is_valid_number(phonenumbers.parse(item["value"], region)), item
        if item["kind"] == "card":
            assert luhn_valid(item["value"]), item


def test_hard_negatives_are_planted(wiki, manifest):
    text = "".join(wiki["train"])
    kinds = {n["kind"] for n in manifest["hard_negatives"]}
    assert {"version", "date", "sum", "year"} <= kinds
    assert all(n["value"] in text for n in manifest["hard_negatives"] if n["split"] == "train")
    assert re.search(r"version \d @\.@ \d+ @\.@ \d+", text)


def test_duplicates_and_near_duplicates(wiki, manifest):
    titles = Counter(_titles(wiki["train"]))
    dups = manifest["duplicates"]
    for title in dups["exact_articles"] + dups["near_articles"]:
        assert titles[wikitextify(title)] == 2, title
    paragraph_counts = Counter(r for r in wiki["train"] if r and not HEADING_ROW.match(r))
    for para in dups["exact_paragraphs"]:
        assert paragraph_counts[f" {para} \n"] >= 2
    articles: dict[str, list[str]] = {}
    title = ""
    for row in wiki["train"]:
        if m := TITLE_ROW.match(row):
            title = m.group(1)
            articles.setdefault(title, []).append("")
        elif title:
            articles[title][-1] += row
    for title in dups["exact_articles"]:
        first, second = articles[wikitextify(title)]
        assert first == second
    for title in dups["near_articles"]:
        # Near, as a dedup stage measures it: word 5-gram Jaccard well above the profile's 0.8 default.
        first, second = (
            {tuple(t.split()[i : i + 5]) for i in range(len(t.split()) - 4)} for t in articles[wikitextify(title)]
        )
        assert first != second and len(first & second) / len(first | second) > 0.85, title


def test_odd_unicode_rows(wiki):
    text = "".join(wiki["train"])
    assert "\u200b" in text and "\u00a0" in text
    assert re.search("[\uff10-\uff19]", text)
    assert re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", text)


# --- generic --------------------------------------------------------------------------------------


def test_generic_corpus_is_free_of_the_domain(manifest):
    rows = _jsonl(SAMPLE / "generic" / "train.jsonl")
    text = " ".join(r["text"] for r in rows)
    words = set(re.findall(r"[a-z]+", text.lower()))
    invented = {w.lower() for w in manifest["invented_words"]}
    assert len(invented) > 500
    assert not words & invented
    assert "@-@" not in text and "@,@" not in text
    assert sum("Question:" in r["text"] for r in rows) > 100  # reading-comprehension shaped rows


# --- SQuAD ----------------------------------------------------------------------------------------


def test_squad_rows_have_the_hub_layout_and_valid_spans(squad):
    ids = [r["id"] for rows in squad.values() for r in rows]
    assert len(ids) == len(set(ids))
    for split, rows in squad.items():
        for r in rows:
            assert set(r) == {"id", "title", "context", "question", "answers"}
            assert re.fullmatch(r"[0-9a-f]{24}", r["id"])
            texts, starts = r["answers"]["text"], r["answers"]["answer_start"]
            assert texts and len(texts) == len(starts)
            if split == "train":
                assert len(texts) == 1
            else:
                assert 1 <= len(texts) <= 3
            for t, s in zip(texts, starts):
                assert r["context"][s : s + len(t)] == t, r
                assert 1 <= len(t.split()) <= 4, t
            assert "@-@" not in r["context"] and 2 <= r["context"].count(". ") + 1


def test_squad_titles_disjoint_and_several_questions_per_context(squad):
    titles = {s: {r["title"] for r in rows} for s, rows in squad.items()}
    assert not titles["train"] & titles["validation"]
    per_context = Counter(r["context"] for r in squad["train"])
    assert sum(per_context.values()) / len(per_context) >= 2
    assert sum(len(r["answers"]["text"]) > 1 for r in squad["validation"]) > 50


def test_squad_pii(squad, manifest):
    for split, rows in squad.items():
        answers = [a for a in manifest["squad_pii_answers"] if a["split"] == split]
        assert answers, split
        contexts = {r["context"] for r in rows}
        with_pii = {c for c in contexts if re.search(r"@[\w.-]+\.\w+|\+\d[\d -]{8,}|\(\d{3}\) \d{3}-\d{4}", c)}
        assert 0.003 <= len(with_pii) / len(contexts) <= 0.03, (split, len(with_pii), len(contexts))
        by_id = {r["id"]: r for r in rows}
        for a in answers:
            assert by_id[a["id"]]["answers"]["text"][0] == a["value"]


def test_original_layout_samples():
    v1 = json.loads((SAMPLE / "squad_v1_original" / "dev-sample.json").read_text(encoding="utf-8"))
    v2 = json.loads((SAMPLE / "squad_v2_original" / "dev-sample.json").read_text(encoding="utf-8"))
    assert v1["version"] == "1.1" and v2["version"] == "v2.0"
    qas1 = [qa for a in v1["data"] for p in a["paragraphs"] for qa in p["qas"]]
    qas2 = [qa for a in v2["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert 25 <= len(qas1) <= 40
    impossible = [qa for qa in qas2 if qa["is_impossible"]]
    assert impossible and all(qa["answers"] == [] and qa["plausible_answers"] for qa in impossible)
    assert all("plausible_answers" not in qa for qa in qas2 if not qa["is_impossible"])
