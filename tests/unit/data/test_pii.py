"""PII scrubber: the labeled evaluation set, the checksums, the overlap rules, offsets and speed.

The evaluation counts a predicted span as correct only when a gold span of the same kind has
exactly the same start and end (exact match, the stricter of the two modes evaluate_pii offers): a
placeholder that leaves part of a number behind is a miss.
"""

import importlib.util
import json
import random
import re

import pytest

from modft_utils.data import scrub_pii, scrub_pii_with_spans
from modft_utils.data.pii import (
    KINDS,
    PiiConfig,
    evaluate_pii,
    find_pii,
    iban_valid,
    luhn_valid,
    pii_eval_table,
    remap_span,
)


@pytest.fixture(scope="module")
def eval_dir(root):
    return root / "data" / "pii_eval"


@pytest.fixture(scope="module")
def eval_rows(eval_dir):
    with open(eval_dir / "pii_eval.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def eval_result(eval_rows):
    return evaluate_pii(eval_rows, match="exact")


# ---------------------------------------------------------------- the evaluation set


def test_eval_set_matches_its_generator(eval_dir, eval_rows):
    spec = importlib.util.spec_from_file_location("make_pii_eval", eval_dir / "make_pii_eval.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.build() == eval_rows, "pii_eval.jsonl is stale: run python data/pii_eval/make_pii_eval.py"


def test_eval_set_size_and_labels(eval_rows):
    positives = [s for r in eval_rows for s in r["spans"]]
    negatives = [r for r in eval_rows if not r["spans"]]
    assert len(positives) >= 300 and len(negatives) >= 300
    per_kind = {k: sum(s["kind"] == k for s in positives) for k in KINDS}
    assert min(per_kind.values()) >= 20, per_kind
    for row in eval_rows:
        spans = sorted(row["spans"], key=lambda s: s["start"])
        for a, b in zip(spans, spans[1:]):
            assert a["end"] <= b["start"], row
        for s in spans:
            value = row["text"][s["start"] : s["end"]]
            assert 0 <= s["start"] < s["end"] <= len(row["text"]) and value == value.strip(), row
            # Labels checked with checksums written here, not the scrubber's own.
            digits = re.sub(r"[ -]", "", value)
            if s["kind"] == "CREDIT_CARD":
                total = sum(int(d) if i % 2 == 0 else sum(divmod(2 * int(d), 10)) for i, d in enumerate(digits[::-1]))
                assert total % 10 == 0, value
            if s["kind"] == "IBAN":
                n = int("".join(str(int(c, 36)) for c in digits[4:] + digits[:4]))
                assert n % 97 == 1, value


def test_precision_and_recall_on_the_eval_set(eval_result):
    print("\n" + pii_eval_table(eval_result))
    for err in eval_result["errors"]:
        print(err)
    overall = eval_result["overall"]
    assert overall["recall"] >= 0.98, pii_eval_table(eval_result)
    assert overall["precision"] >= 0.95, pii_eval_table(eval_result)
    # No single kind may hide behind the overall figure.
    for kind, r in eval_result["per_kind"].items():
        assert r["gold"] >= 20 and r["recall"] >= 0.9 and r["precision"] >= 0.9, (kind, r)


def test_evaluate_pii_counts_by_hand():
    rows = [
        {
            "text": "mail jane@example.com or call 415-555-2671",
            "spans": [{"start": 5, "end": 21, "kind": "EMAIL"}, {"start": 30, "end": 42, "kind": "PHONE"}],
        },
        {"text": "version 1.2.3.4 on 10.0.0.1", "spans": []},  # the IP is unlabeled: a false positive
        {"text": "card 4111 1111 1111 1111", "spans": [{"start": 5, "end": 20, "kind": "CREDIT_CARD"}]},
    ]
    exact = evaluate_pii(rows, match="exact")
    assert exact["per_kind"]["EMAIL"] == {
        "gold": 1,
        "predicted": 1,
        "tp": 1,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
    }
    assert exact["per_kind"]["IP_ADDRESS"]["predicted"] == 1 and exact["per_kind"]["IP_ADDRESS"]["tp"] == 0
    assert exact["per_kind"]["CREDIT_CARD"]["tp"] == 0  # gold span cut short: not exact
    assert exact["overall"]["tp"] == 2 and exact["overall"]["gold"] == 3 and exact["overall"]["predicted"] == 4
    assert exact["negative_rows"] == 1 and exact["negative_rows_flagged"] == 1
    overlap = evaluate_pii(rows, match="overlap")
    assert overlap["per_kind"]["CREDIT_CARD"]["tp"] == 1 and overlap["overall"]["tp"] == 3


# ---------------------------------------------------------------- checksums and rules


def test_luhn_catches_every_single_digit_error():
    card = "4111111111111111"
    assert luhn_valid(card) and find_pii(f"card {card} ok")[0].kind == "CREDIT_CARD"
    for i in range(len(card)):
        for d in "0123456789":
            if d != card[i]:
                wrong = card[:i] + d + card[i + 1 :]
                assert not luhn_valid(wrong)
                assert all(s.kind != "CREDIT_CARD" for s in find_pii(f"card {wrong} ok"))


def test_iban_checksum_catches_every_single_character_error():
    iban = "GB82WEST12345698765432"
    assert iban_valid(iban) and [s.kind for s in find_pii(f"pay {iban} now")] == ["IBAN"]
    for i in range(2, len(iban)):
        for c in "0123456789" if iban[i].isdigit() else "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            if c != iban[i]:
                wrong = iban[:i] + c + iban[i + 1 :]
                assert not iban_valid(wrong), wrong
                assert all(s.kind != "IBAN" for s in find_pii(f"pay {wrong} now"))


@pytest.mark.parametrize(
    "ssn, valid",
    [
        ("123-45-6789", True),
        ("078-05-1120", True),
        ("899-12-3456", True),
        ("000-12-3456", False),
        ("666-12-3456", False),
        ("900-12-3456", False),
        ("999-12-3456", False),
        ("123-00-4567", False),
        ("123-45-0000", False),
    ],
)
def test_ssn_invalid_ranges(ssn, valid):
    kinds = [s.kind for s in find_pii(f"SSN {ssn}.")]
    assert ("US_SSN" in kinds) is valid


@pytest.mark.parametrize(
    "text",
    [
        "Upgrade to version 1.2.3.4 today.",
        "v1.2.3.4",
        "release 10.0.0.1 is out",
        "See ISBN 0-306-40615-2.",
        "ISBN 978-3-16-148410-0",
        "On 2023-05-17 at 12:30.",
        "Due 17/05/2023.",
        "It cost $3.50 of 1,250,000.",
        "3 + 4 = 7",
        "a 1 @,@ 000 seat 3 @.@ 5 km state @-@ of @-@ the @-@ art arena",
        "In 1998 and 2024.",
        "card 4111 1111 1111 1112",
        "IBAN DE88 3704 0044 0532 0130 00",
        "https://docs.python.org/3/library/re.html",
        "Boston, MA 02110-1301",
        "f32::{min, max}",
        "std::vector<int>",
        "12:30:45",
    ],
)
def test_hard_negatives_survive(text):
    assert scrub_pii(text) == text


def test_placeholders_and_priorities():
    text = "Reach jane.doe@example.com, +44 20 7946 0958 or https://github.com/jdoe from 192.168.1.20."
    assert scrub_pii(text) == "Reach [EMAIL], [PHONE] or [URL] from [IP_ADDRESS]."
    # An e-mail inside an identity URL's query: the e-mail wins, the rest of the URL stays.
    spans = find_pii("see https://example.com/unsub?email=jane@example.com now")
    assert [(s.kind, s.text) for s in spans] == [("EMAIL", "jane@example.com")]
    # A Luhn-valid 16-digit number is a card, never also a phone.
    assert [s.kind for s in find_pii("pay with 5555 5555 5555 4444 today")] == ["CREDIT_CARD"]


def test_url_modes_and_kind_selection():
    text = "Docs at https://docs.python.org/3/ and profile https://www.linkedin.com/in/jane-doe-42/ ."
    assert [s.text for s in find_pii(text)] == ["https://www.linkedin.com/in/jane-doe-42/"]
    assert len(find_pii(text, PiiConfig(urls="all"))) == 2
    assert find_pii(text, PiiConfig(urls="none")) == []
    mixed = "jane@example.com, 415-555-2671"
    assert [s.kind for s in find_pii(mixed, PiiConfig(kinds=("PHONE",)))] == ["PHONE"]
    with pytest.raises(ValueError, match="kinds"):
        PiiConfig(kinds=("EMAIL", "PASSPORT"))
    with pytest.raises(ValueError, match="urls"):
        PiiConfig(urls="some")
    with pytest.raises(ValueError, match="phone_regions"):
        PiiConfig(phone_regions=("XX",))


def test_phone_regions_decide_national_numbers():
    german = "Ruf an: 030 901820"
    assert [s.kind for s in find_pii(german)] == ["PHONE"]
    assert find_pii(german, PiiConfig(phone_regions=("US",))) == []
    # International numbers need no region.
    assert [s.kind for s in find_pii("Ruf an: +49 30 901820", PiiConfig(phone_regions=("US",)))] == ["PHONE"]


# ---------------------------------------------------------------- offsets


def test_spans_are_sorted_disjoint_and_placeholders_stable(eval_rows):
    for row in eval_rows[::5]:
        text = row["text"]
        new, spans = scrub_pii_with_spans(text)
        assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
        assert all(text[s.start : s.end] == s.text for s in spans)
        assert scrub_pii(new) == new  # placeholders are never detected as PII themselves


def test_remap_span_relocates_text_around_pii(eval_rows):
    rng = random.Random(0)
    checked = 0
    for row in eval_rows:
        text = row["text"]
        new, spans = scrub_pii_with_spans(text)
        for _ in range(5):
            a = rng.randrange(len(text))
            b = rng.randrange(a + 1, len(text) + 1)
            moved = remap_span(spans, a, b)
            touches = any(s.start < b and a < s.end for s in spans)
            if touches:
                assert moved is None
            else:
                assert moved is not None and new[moved[0] : moved[1]] == text[a:b]
                checked += 1
    assert checked > 1000
