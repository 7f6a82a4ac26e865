"""Wikitext detokenization, document splitting and the reported cleaning pipeline."""

import random

import pytest

from modft_utils.data import CleanConfig, StepReport, clean_corpus, report_table
from modft_utils.data.clean import clean_wikitext, near_dedup, split_documents

# Rows exactly as the `datasets` wikitext-2-raw-v1 table holds them: one paragraph per row with a
# leading space and a trailing "\n", blank rows as "".
VALKYRIA = [
    "",
    " = Valkyria Chronicles III = \n",
    "",
    " Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 , lit . Valkyria of the "
    "Battlefield 3 ) , commonly referred to as Valkyria Chronicles III outside Japan , is a tactical role @-@ "
    "playing video game developed by Sega and Media.Vision for the PlayStation Portable . Released in January "
    "2011 in Japan , it is the third game in the Valkyria series . Employing the same fusion of tactical and "
    'real @-@ time gameplay as its predecessors , the story runs parallel to the first game and follows the " '
    'Nameless " , a penal military unit serving the nation of Gallia during the Second Europan War who perform '
    'secret black operations and are pitted against the Imperial unit " Calamaty Raven " . \n',
    " The game 's budget was $ 3 @.@ 5 million ; about 1 @,@ 000 @,@ 000 copies were sold ( 45 % in Japan ) "
    ", but it did n't sell abroad ! Why ? \n",
    "",
    " = = Gameplay = = \n",
    "",
    " As with previous Valkyira Chronicles games , Valkyria Chronicles III is a tactical role @-@ playing game "
    "where players take control of a military unit and take part in missions against enemy forces . \n",
    "",
    " = = = Plot = = = \n",
    "",
    ' The unit is state @-@ of @-@ the @-@ art ; its leader said " it \'s fine " and left . \n',
    "",
]
VALKYRIA_CLEAN = (
    "Valkyria Chronicles III\n"
    "\n"
    "Senjō no Valkyria 3: Unrecorded Chronicles (Japanese: 戦場のヴァルキュリア3, lit. Valkyria of the "
    "Battlefield 3), commonly referred to as Valkyria Chronicles III outside Japan, is a tactical "
    "role-playing video game developed by Sega and Media.Vision for the PlayStation Portable. Released in "
    "January 2011 in Japan, it is the third game in the Valkyria series. Employing the same fusion of tactical "
    "and real-time gameplay as its predecessors, the story runs parallel to the first game and follows the "
    '"Nameless", a penal military unit serving the nation of Gallia during the Second Europan War who perform '
    'secret black operations and are pitted against the Imperial unit "Calamaty Raven".\n'
    "The game's budget was $3.5 million; about 1,000,000 copies were sold (45% in Japan), but it didn't sell "
    "abroad! Why?\n"
    "\n"
    "Gameplay\n"
    "\n"
    "As with previous Valkyira Chronicles games, Valkyria Chronicles III is a tactical role-playing game where "
    "players take control of a military unit and take part in missions against enemy forces.\n"
    "\n"
    "Plot\n"
    "\n"
    'The unit is state-of-the-art; its leader said "it\'s fine" and left.'
)
ARSENAL = [
    " = Tower Building of the Little Rock Arsenal = \n",
    "",
    " The Tower Building of the Little Rock Arsenal , also known as U.S. Arsenal Building , is a building "
    "located in MacArthur Park in downtown Little Rock , Arkansas . Built in 1840 , it was part of Little Rock "
    "'s first military installation . \n",
    "",
]


# ---------------------------------------------------------------- clean_wikitext


def test_real_wikitext_document_reads_as_written():
    (doc,) = split_documents(VALKYRIA)
    assert clean_wikitext(doc) == VALKYRIA_CLEAN


@pytest.mark.parametrize(
    "raw, clean",
    [
        (" 1 @,@ 000 people \n", "1,000 people"),
        (" 3 @.@ 5 km \n", "3.5 km"),
        (" state @-@ of @-@ the @-@ art \n", "state-of-the-art"),
        (" a , b . c ; d : e ! f ? \n", "a, b. c; d: e! f?"),
        (" 45 % of ( the votes ) and [ 1 ] \n", "45% of (the votes) and [1]"),
        (" Raven 's wings , did n't , wasn 't \n", "Raven's wings, didn't, wasn't"),
        (' he said " yes " , she said " no " . \n', 'he said "yes", she said "no".'),
        (' an unclosed " quote stays \n', 'an unclosed " quote stays'),
        (' " one " and " two " then " three \n', '"one" and "two" then " three'),
        (" it cost $ 3 and £ 5 \n", "it cost $3 and £5"),
        (" the .NET platform \n", "the .NET platform"),
        (" = = = Deep heading = = = \n", "Deep heading"),
    ],
)
def test_each_detokenization_rule(raw, clean):
    assert clean_wikitext(raw) == clean


def test_paragraph_breaks_and_whitespace():
    text = " first  line \t here \n second line \n\n\n\n third \n \n"
    assert clean_wikitext(text) == "first line here\nsecond line\n\nthird"


def test_control_and_zero_width_characters_removed():
    text = "zero\u200bwidth\ufeff and\x07 bell\u00ad and\u2060 joiner \r\nnext\rline"
    assert clean_wikitext(text) == "zerowidth and bell and joiner\nnext\nline"


def test_zero_width_joiners_are_kept():
    # ZWJ/ZWNJ are part of how some words and emoji are spelled.
    assert clean_wikitext("मित्र\u200d and 👩\u200d💻") == "मित्र\u200d and 👩\u200d💻"


def test_unicode_normalization_modes():
    text = "ﬁne Ｗｉｋｉ café"
    decomposed = "cafe\u0301"
    assert clean_wikitext(text) == "fine Wiki café"
    assert clean_wikitext(text, normalization=None) == text
    assert clean_wikitext(text, normalization="NFC") == text  # NFC keeps compatibility forms
    assert clean_wikitext(decomposed, normalization="NFC") == "café"
    assert clean_wikitext(decomposed, normalization=None) == decomposed
    with pytest.raises(ValueError, match="normalization"):
        clean_wikitext(text, normalization="NFX")


def test_cleaning_is_idempotent():
    for doc in split_documents(VALKYRIA + ARSENAL):
        once = clean_wikitext(doc)
        assert clean_wikitext(once) == once


# ---------------------------------------------------------------- split_documents


def test_titles_start_documents_and_sections_stay_inside():
    docs = split_documents(VALKYRIA + ARSENAL)
    assert len(docs) == 2
    assert docs[0].startswith(" = Valkyria Chronicles III = ")
    assert " = = Gameplay = = " in docs[0] and " = = = Plot = = = " in docs[0]
    assert docs[1].startswith(" = Tower Building of the Little Rock Arsenal = ")
    # Every non-blank row lands in exactly one document, unchanged but for its newline.
    lines = [line for d in docs for line in d.split("\n") if line]
    assert lines == [r.rstrip("\n") for r in VALKYRIA + ARSENAL if r]


def test_section_headings_can_be_dropped():
    (doc,) = split_documents(VALKYRIA, section_headings="drop")
    assert "Gameplay = =" not in doc and "Plot = = =" not in doc
    assert doc.startswith(" = Valkyria Chronicles III = ")  # the title is not a section heading
    cleaned = clean_wikitext(doc)
    assert "\nGameplay\n" not in cleaned and "As with previous" in cleaned
    with pytest.raises(ValueError, match="section_headings"):
        split_documents(VALKYRIA, section_headings="hide")


def test_text_before_the_first_title_is_its_own_document():
    docs = split_documents(["", " Preface text . \n", ""] + ARSENAL)
    assert len(docs) == 2 and docs[0].strip() == "Preface text ."
    assert split_documents(["", "", "  \n"]) == []


# ---------------------------------------------------------------- clean_corpus


def _article(title: str, rng: random.Random, n_words: int = 120) -> list[str]:
    words = [
        "river",
        "castle",
        "army",
        "season",
        "album",
        "station",
        "league",
        "bridge",
        "novel",
        "storm",
        "church",
        "species",
        "election",
        "harbour",
        "railway",
        "festival",
        "tower",
        "valley",
        "treaty",
    ]
    body = " ".join(rng.choice(words) for _ in range(n_words))
    return ["", f" = {title} = \n", "", f" The {body} , with 1 @,@ {rng.randint(100, 999)} seats . \n", ""]


def test_steps_are_reported_in_order_and_chain():
    rng = random.Random(0)
    rows = VALKYRIA + ARSENAL + _article("A", rng) + _article("B", rng)
    calls = []

    def scrub(text):
        calls.append(text)
        return text.replace("Sega", "[ORG]"), text.count("Sega")

    docs, reports = clean_corpus(rows, CleanConfig(min_chars=50), scrub)
    assert [r.step for r in reports] == [
        "split_documents",
        "detokenize+normalize",
        "pii_scrub",
        "exact_dedup",
        "near_dedup",
        "min_length",
    ]
    assert reports[0].rows_in == len(rows) and reports[0].rows_out == 4
    for before, after in zip(reports, reports[1:]):
        assert (after.rows_in, after.chars_in) == (before.rows_out, before.chars_out)
    assert reports[-1].rows_out == len(docs) and reports[-1].chars_out == sum(map(len, docs))
    assert len(calls) == 4 and "[ORG]" in docs[0]
    assert all(isinstance(r, StepReport) and set(r.as_dict()) >= {"step", "rows_in", "chars_out"} for r in reports)


def test_rows_stream_from_a_generator_read_once(capsys):
    """A hub split is read as a generator over batches: same documents and reports as a list, one pass."""
    rng = random.Random(0)
    rows = VALKYRIA + ARSENAL + _article("A", rng) + _article("B", rng)
    reads = []

    def stream():
        for r in rows:
            reads.append(r)
            yield r

    want = clean_corpus(rows, CleanConfig(min_chars=50))
    got = clean_corpus(stream(), CleanConfig(min_chars=50), progress=True, total_rows=len(rows))
    assert got == want and len(reads) == len(rows)
    assert "detokenize+normalize" in capsys.readouterr().err  # the batched map's progress bar


def test_exact_duplicates_ignore_case_and_spacing():
    variant = [r.upper().replace(" , ", "  ,  ") for r in ARSENAL]
    docs, reports = clean_corpus(ARSENAL + variant + VALKYRIA, CleanConfig(min_chars=0))
    step = {r.step: r for r in reports}["exact_dedup"]
    assert (step.rows_in, step.rows_out) == (3, 2)
    assert docs[0].startswith("Tower Building")  # the first occurrence is the one kept


def test_near_duplicates_removed_distinct_kept():
    rng = random.Random(1)
    original = _article("Original", rng, n_words=300)
    near = list(original)
    near[1] = " = Original ( revised ) = \n"
    near[3] = near[3].replace("river", "stream", 2)  # two words changed out of 300
    other = _article("Other", rng, n_words=300)
    docs, reports = clean_corpus(original + near + other, CleanConfig(min_chars=0, near_dup_threshold=0.8))
    step = {r.step: r for r in reports}["near_dedup"]
    assert (step.rows_in, step.rows_out) == (3, 2)
    assert docs[0].startswith("Original\n") and docs[1].startswith("Other\n")
    # A threshold above their similarity keeps both; near_dup="none" skips the step.
    docs_strict, _ = clean_corpus(original + near + other, CleanConfig(min_chars=0, near_dup_threshold=0.999))
    assert len(docs_strict) == 3
    _, reports_none = clean_corpus(original + near + other, CleanConfig(min_chars=0, near_dup="none"))
    assert "near_dedup" not in [r.step for r in reports_none]


def test_near_dedup_is_deterministic():
    rng = random.Random(2)
    base = " ".join(rng.choice("abcdefghij") * 3 for _ in range(400))
    docs = [base] + [base.replace("aaa", "zzz", k) for k in (1, 2, 40, 200)] + [base[::-1]]
    runs = {tuple(near_dedup(docs, 0.8, seed=7)) for _ in range(3)}
    assert len(runs) == 1


def test_min_length_and_empty_corpus_errors():
    short = ["", " = Stub = \n", "", " Too short . \n"]
    docs, reports = clean_corpus(ARSENAL + short, CleanConfig(min_chars=100))
    assert len(docs) == 1 and reports[-1].rows_in == 2
    with pytest.raises(ValueError, match="min_length"):
        clean_corpus(short, CleanConfig(min_chars=100))
    with pytest.raises(ValueError, match="split_documents"):
        clean_corpus(["", "  \n", ""], CleanConfig())
    with pytest.raises(ValueError, match="split_documents.*no rows"):
        clean_corpus([], CleanConfig())


def test_config_is_validated():
    with pytest.raises(ValueError, match="near_dup_threshold"):
        CleanConfig(near_dup_threshold=1.5)
    with pytest.raises(ValueError, match="near_dup"):
        CleanConfig(near_dup="simhash")
    with pytest.raises(ValueError, match="section_headings"):
        CleanConfig(section_headings="maybe")


def test_report_table_lists_every_step():
    _, reports = clean_corpus(VALKYRIA + ARSENAL, CleanConfig(min_chars=0))
    table = report_table(reports)
    lines = table.splitlines()
    assert len(lines) == 2 + len(reports)
    assert len({len(line) for line in lines}) == 1  # fixed width
    for r in reports:
        assert r.step in table
    assert f"{reports[0].rows_in:,}" in lines[2]


def _synthetic_wikitext(n_chars: int, seed: int = 0) -> list[str]:
    """Distinct articles in wikitext-2-raw row format, with its number and punctuation tokens."""
    rng = random.Random(seed)
    vocab = [
        f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po") for b in ("n", "r", "st", "ve", "la", "do")
    ]
    rows, size, n = [], 0, 0
    while size < n_chars:
        rows += ["", f" = Article {n} = \n", ""]
        for s in range(3):
            rows += [f" = = Section {s} = = \n", ""]
            for _ in range(3):
                words = [rng.choice(vocab) for _ in range(120)]
                for i in range(0, 120, 12):
                    words[i] = rng.choice([" , ", " . ", " @-@ ", " ( x ) ", f" {rng.randint(1, 9)} @,@ 000 ", " 's "])
                row = " " + " ".join(words) + " . \n"
                rows.append(row)
                size += len(row)
            rows.append("")
        n += 1
    return rows


def test_pipeline_runs_a_wikitext2_sized_corpus_through_every_step():
    """A wikitext-2-sized corpus goes through every step, each step's output being the next one's input.
    Its speed is the benchmark's "data prep" row (benchmarks/RESULTS.md), not a timed test."""
    from modft_utils.data import scrub_pii_with_spans

    rows = _synthetic_wikitext(1_500_000)

    def scrub(text):
        new, spans = scrub_pii_with_spans(text)
        return new, len(spans)

    docs, reports = clean_corpus(rows, CleanConfig(), scrub)
    assert reports[0].chars_in >= 1_500_000 and len(docs) == reports[0].rows_out  # all distinct, all long
    for step, after in zip(reports, reports[1:]):
        assert step.rows_out == after.rows_in and step.chars_out == after.chars_in, (step.step, after.step)
    assert reports[-1].rows_out == len(docs) and reports[-1].chars_out == sum(len(d) for d in docs)
