"""Deterministic generator of the offline sample data that stands in for wikitext-2 and SQuAD.

The default profile runs without a network, so the repository ships small data sets in exactly the row
formats the Hugging Face hub gives for ``wikitext-2-raw-v1`` and ``squad``; the same loaders then read
either. Every word of it is authored here about a FICTIONAL archipelago (islands, towns, founders, guilds,
ships, rivers, festivals, scholars) whose invented proper nouns are built from syllables. Nothing is copied
from the real corpora.

What makes the sample useful for the workbook rather than merely well-formed:

* Domain adaptation is measurable: every entity has one fact record (founder, year, population...) that
  all articles mentioning it restate, and the sentence templates are shared, so held-out articles (other
  titles) reuse the vocabulary and facts of the training articles.
* The generic corpus the tiny base model is pretrained on contains none of the invented names, so the
  domain really is new to the base.
* The cleaning stages have real work: PII (e-mail, phone numbers valid for real numbering plans but
  reserved for fiction, documentation-range IPv4, Luhn-valid card numbers) in ~2.5 % of paragraphs, hard
  negatives that must survive the scrubber (years, dates, sums, version strings), exact and near
  duplicates, and a few rows of odd Unicode. ``manifest.json`` lists what was planted where, so scrubber
  and dedup tests can measure recall instead of guessing.

PII is written verbatim (``(212) 555-0147``) even inside wikitext-tokenised paragraphs: that is the form a
scraped page would carry and the form a phone-number parser recognises; the surrounding prose is tokenised.

Only ``random.Random`` instances seeded from strings are used (string seeds are hashed with SHA-512, not
with the per-process ``hash``), sets are never iterated, and nothing reads the clock, so the same seed
gives byte-identical files on every machine. Regenerate with
``python data/sample/make_sample_data.py``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import re
import string
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["write_sample_data", "main", "invented_words", "luhn_valid", "wikitextify"]

# Size targets in characters of row text; the article loop stops once a split reaches its target.
VALIDATION_CHARS = 120_000
TEST_CHARS = 120_000
GENERIC_CHARS = 1_200_000
SQUAD_TRAIN_ROWS = 1_300
SQUAD_VALIDATION_ROWS = 250
PII_PARAGRAPH_SHARE = 0.025
# Entity counts: one article each, so together they set the size of the wikitext sample.
N_TOWNS, N_RIVERS, N_SHIPS, N_FESTIVALS, N_EVENTS_PER_KIND = 130, 30, 100, 50, 7
N_SCHOLARS, N_POETS, N_CARTOGRAPHERS = 30, 15, 18
HARD_NEGATIVE_SHARE = 0.04

_FORMATTER = string.Formatter()
# Private-use characters: they never occur in the prose, so they can mark spans through the tokeniser.
_PII_OPEN, _PII_CLOSE = "\ue010", "\ue011"
_NUM_COMMA, _NUM_DOT, _WORD_HYPHEN = "\ue000", "\ue001", "\ue002"


# --------------------------------------------------------------------------------------------------
# Text utilities
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    """One rendered sentence and where each template field landed in it (for extractive QA)."""

    text: str
    spans: Mapping[str, tuple[int, int]]


@functools.cache
def _fields(template: str) -> frozenset[str]:
    return frozenset(name for _, name, _, _ in _FORMATTER.parse(template) if name)


def _render(template: str, slots: Mapping[str, str]) -> Sentence:
    """Fill ``template`` from ``slots`` and record each field's first character span."""
    parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    pos = 0
    for literal, name, _, _ in _FORMATTER.parse(template):
        parts.append(literal)
        pos += len(literal)
        if name:
            value = slots[name]
            spans.setdefault(name, (pos, pos + len(value)))
            parts.append(value)
            pos += len(value)
    text = "".join(parts)
    # Templates may open with a lower-case value ("sea-silk was..."); only the first character changes.
    return Sentence(text[:1].upper() + text[1:], spans)


def _tokenize_plain(text: str) -> str:
    # Placeholders first: the punctuation pass below would otherwise split "12,400" and "3.5".
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", _NUM_COMMA, text)
    text = re.sub(r"(?<=\d)\.(?=\d)", _NUM_DOT, text)
    text = re.sub(r"(?<=[^\W_])-(?=[^\W_])", _WORD_HYPHEN, text)
    text = re.sub(r"(?<=[^\W_])'s\b", " 's", text)
    text = re.sub(r"(?<=s)'(?=\s)", " '", text)
    text = re.sub(r'([,;:()"!?\u2013])', r" \1 ", text)
    text = re.sub(r"\.(?=\s|$)", " .", text)
    text = text.replace(_NUM_COMMA, " @,@ ").replace(_NUM_DOT, " @.@ ").replace(_WORD_HYPHEN, " @-@ ")
    return text


def wikitextify(text: str) -> str:
    """Tokenise plain prose the way wikitext-2 raw is tokenised; spans marked as PII stay verbatim.

    >>> wikitextify('The guild\\'s 12,400 sea-faring members (about 3.5 per cent) sang "Home".')
    'The guild \\'s 12 @,@ 400 sea @-@ faring members ( about 3 @.@ 5 per cent ) sang " Home " .'
    """
    pieces = re.split(f"({_PII_OPEN}[^{_PII_CLOSE}]*{_PII_CLOSE})", text)
    out = []
    for piece in pieces:
        if piece.startswith(_PII_OPEN):
            out.append(" " + piece[1:-1] + " ")
        else:
            out.append(_tokenize_plain(piece))
    return " ".join("".join(out).split())


def luhn_valid(number: str) -> bool:
    """True when the digits of ``number`` pass the Luhn check used by payment cards."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 12:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _with_luhn(prefix_and_body: str) -> str:
    for check in "0123456789":
        if luhn_valid(prefix_and_body + check):
            return prefix_and_body + check
    raise AssertionError("unreachable: one check digit always satisfies Luhn")


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _squad_id(*parts: object) -> str:
    """24 hex characters, the shape of real SQuAD ids (they are MongoDB ObjectIds)."""
    return hashlib.sha1("|".join(map(str, parts)).encode("utf-8")).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------
# Generic English prose (what the tiny base is pretrained on)
# --------------------------------------------------------------------------------------------------

_G_PEOPLE = (
    ("Anna", True),
    ("Tom", False),
    ("Sarah", True),
    ("David", False),
    ("Maria", True),
    ("James", False),
    ("Lucy", True),
    ("Peter", False),
    ("Emma", True),
    ("Sam", False),
    ("Grace", True),
    ("Daniel", False),
    ("Nora", True),
    ("Ben", False),
    ("Olivia", True),
    ("Jack", False),
    ("Ruth", True),
    ("Leo", False),
    ("Hannah", True),
    ("Mark", False),
    ("Alice", True),
    ("Oliver", False),
    ("Kate", True),
    ("Henry", False),
    ("Julia", True),
    ("Paul", False),
    ("Rosa", True),
    ("Adam", False),
    ("Clara", True),
    ("Simon", False),
    ("Ella", True),
    ("Max", False),
    ("Laura", True),
    ("Nick", False),
    ("Sophie", True),
    ("Carl", False),
    ("Helen", True),
    ("Ian", False),
    ("Amy", True),
    ("Joe", False),
)
# Each place with something one does there, so stories stay sensible ("went to the pool. She swam").
_G_PLACES = {
    "the market": "bought a bag of apples",
    "the library": "borrowed two books",
    "the bakery": "bought a loaf of bread",
    "the post office": "posted a letter",
    "the park": "fed the ducks",
    "the station": "asked about the timetable",
    "the museum": "looked at the paintings",
    "the swimming pool": "swam twenty lengths",
    "the cinema": "watched a film",
    "the beach": "collected shells",
    "the supermarket": "bought milk and eggs",
    "the bank": "paid a bill",
    "the hardware shop": "bought a new lamp",
    "the town hall": "renewed a permit",
    "the garden centre": "bought some seeds",
    "the sports hall": "played badminton",
    "the dentist": "had a check-up",
    "the bookshop": "bought a cookbook",
    "the flower shop": "bought some tulips",
    "the hospital": "visited a friend",
}
_G_SLOTS: dict[str, tuple[str, ...]] = {
    "place": tuple(_G_PLACES),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "month": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
    "season": ("spring", "summer", "autumn", "winter"),
    "item": (
        "a winter coat",
        "a pair of boots",
        "a new kettle",
        "a birthday present",
        "some paint",
        "a bicycle lamp",
        "a school bag",
        "a warm blanket",
        "a set of plates",
        "a garden hose",
        "a pair of gloves",
        "a wooden chair",
        "a desk lamp",
        "a rain jacket",
        "a frying pan",
    ),
    "price": (
        "twelve pounds",
        "five euros",
        "nine dollars",
        "twenty pounds",
        "three euros",
        "fifteen dollars",
        "forty pounds",
        "eight euros",
        "thirty dollars",
        "six pounds",
    ),
    "dish": (
        "vegetable soup",
        "a chicken stew",
        "pasta with tomato sauce",
        "a potato pie",
        "fried rice",
        "a lentil curry",
        "a mushroom risotto",
        "fish with lemon",
        "a bean salad",
        "pancakes",
        "a roast chicken",
        "an apple crumble",
        "a cheese omelette",
        "a pumpkin soup",
    ),
    "ingredient": (
        "carrots",
        "potatoes",
        "onions",
        "tomatoes",
        "mushrooms",
        "lentils",
        "rice",
        "beans",
        "peppers",
        "spinach",
        "apples",
        "lemons",
        "garlic",
        "cheese",
        "eggs",
        "flour",
    ),
    "breakfast": (
        "porridge with honey",
        "toast and jam",
        "yoghurt and fruit",
        "two boiled eggs",
        "a bowl of cereal",
        "bread with cheese",
    ),
    "sky": (
        "grey and heavy",
        "clear and blue",
        "full of low clouds",
        "pale and misty",
        "dark with rain clouds",
        "bright but cold",
    ),
    "forecast": (
        "sunshine and light winds",
        "showers and strong winds",
        "a cold night with frost",
        "warm weather and clear skies",
        "heavy rain on Sunday",
        "fog in the early morning",
    ),
    "season_weather": (
        "mild and wet",
        "hot and dry",
        "cool and windy",
        "cold and bright",
        "changeable, with sun and showers",
    ),
    "season_reason": (
        "the days are long",
        "the trees change colour",
        "the gardens are full of flowers",
        "it is quiet and cosy at home",
        "the beach is warm",
        "the air smells fresh",
    ),
    "destination": (
        "the coast",
        "the mountains",
        "the capital",
        "the old town",
        "the lakes",
        "the north",
        "the south",
        "the islands",
        "the border",
        "the forest",
    ),
    "transport": ("train", "bus", "coach", "ferry", "plane", "car"),
    "hours": ("two", "three", "four", "five", "six", "seven", "eight"),
    "clock": (
        "seven o'clock",
        "half past eight",
        "nine o'clock",
        "a quarter past ten",
        "noon",
        "half past two",
        "six in the evening",
    ),
    "walk_place": ("river bank", "old city wall", "beach", "main square", "harbour", "park"),
    "subject": (
        "mathematics",
        "history",
        "geography",
        "biology",
        "music",
        "art",
        "French",
        "chemistry",
        "physics",
        "English",
        "Spanish",
    ),
    "subject_reason": (
        "the teacher tells good stories",
        "it feels like solving puzzles",
        "the experiments are exciting",
        "the class goes outside",
        "it is easy to practise",
    ),
    "school_trip": ("science museum", "zoo", "castle", "farm", "theatre", "botanical garden"),
    "teacher": ("Mrs Brown", "Mr Green", "Ms White", "Mr Black", "Mrs Gray", "Ms Young", "Mr Hill"),
    "job": (
        "a nurse",
        "a teacher",
        "a cook",
        "a driver",
        "a clerk",
        "a builder",
        "a librarian",
        "a mechanic",
        "a gardener",
        "a baker",
        "a designer",
        "a cashier",
        "a programmer",
    ),
    "workplace": (
        "hospital",
        "bank",
        "shop",
        "library",
        "small office",
        "factory",
        "restaurant",
        "garage",
        "school",
        "bakery",
        "hotel",
    ),
    "bakery": (
        "a loaf of brown bread",
        "two croissants",
        "a cherry tart",
        "six bread rolls",
        "a chocolate cake",
        "a bag of biscuits",
    ),
    "minutes": ("five", "ten", "fifteen", "twenty", "thirty", "forty"),
    "oven": ("one hundred and eighty", "two hundred", "one hundred and sixty", "two hundred and twenty"),
    "temp": ("three", "seven", "twelve", "eighteen", "twenty-one", "twenty-six", "minus two"),
}

_G_OPENERS: dict[str, tuple[str, ...]] = {
    "weather": (
        "On {day} morning the sky over the town was {sky}.",
        "{name} looked out of the window on {day} and saw that the sky was {sky}.",
        "{name} says the weather in {season} is usually {season_weather}, and this year was no different.",
        "{name} likes {season} best, because {season_reason}.",
    ),
    "cooking": (
        "On {day} evening {name} decided to cook {dish} for dinner.",
        "{name} had invited {friend} for dinner on {day} and planned to make {dish}.",
        "For breakfast {name} usually has {breakfast}, but on {day} there was time to cook.",
    ),
    "travel": (
        "Last {season} {name} travelled by {transport} to visit a cousin in {destination}.",
        "In {month} {name} took the {transport} to {destination} for a short holiday.",
        "{name} had wanted to see {destination} for years and finally went there in {month}.",
    ),
    "school": (
        "On {day} {name} had a test in {subject}.",
        "{name}'s favourite subject is {subject}, because {subject_reason}.",
        "In {month} the class went on a trip to the {school_trip} with {teacher}.",
    ),
    "work": (
        "{name} works as {job} in a {workplace} near the centre of town.",
        "On {day} {name} arrived at the {workplace} a little earlier than usual.",
        "{name} has worked as {job} for almost ten years.",
    ),
    "shopping": (
        "On {day} {name} went shopping for {item}.",
        "{name} needed {item} before the weekend and went into town on {day}.",
        "Every {day} {name} walks to {place} with a shopping list.",
    ),
}

_G_BODY: dict[str, tuple[str, ...]] = {
    "weather": (
        "By lunchtime the wind had picked up, and {he} decided to take an umbrella.",
        "The forecast for the weekend promised {forecast}.",
        "In {month} the days grow shorter, and the evenings are cool.",
        "{name} checked the thermometer outside the kitchen window: it showed {temp} degrees.",
        "Heavy rain fell for most of the afternoon, and the streets filled with puddles.",
        "When the sun finally came out, children ran outside to play in the park.",
        "A thick fog covered the valley until nearly ten o'clock.",
        "{He} wore {his} warm coat and a scarf because the air was cold.",
        "The farmers were glad of the rain after three dry weeks.",
        "Snow is rare here, but last winter it snowed for two days in a row.",
        "By evening the clouds had cleared and the stars were bright.",
        "Thunder rumbled in the distance, and the dog hid under the table.",
        "The radio warned drivers about ice on the roads.",
        "{He} hung the washing outside, then had to bring it in again when the rain started.",
        "On warm days {he} likes to sit in the garden with a cold drink.",
        "The wind blew leaves across the road and rattled the windows.",
    ),
    "cooking": (
        "{He} bought {ingredient}, {ingredient2} and a bunch of fresh herbs.",
        "First {he} chopped the onions and fried them slowly in a little oil.",
        "Then {he} added the {ingredient} and stirred the pot for {minutes} minutes.",
        "The recipe came from an old notebook that belonged to {his} grandmother.",
        "While the sauce simmered, {he} set the table and filled a jug with water.",
        "The kitchen smelled of garlic and warm bread.",
        "{friend} arrived at seven and brought a cake for dessert.",
        "They agreed that the meal was even better than last time.",
        "Cooking rice well takes patience: rinse it, measure the water and do not lift the lid.",
        "A good soup needs time, so it is best to start early in the afternoon.",
        "{name} always tastes the food before adding more salt.",
        "After dinner they washed the dishes together and talked about the week.",
        "Fresh bread is best eaten on the day it is baked.",
        "The oven should be heated to {oven} degrees before the tray goes in.",
        "Leftovers can be kept in the fridge for two days.",
        "{He} wrote the recipe on a card so that {he} would remember it.",
    ),
    "travel": (
        "The journey took about {hours} hours, and {he} read a book most of the way.",
        "At the station {he} bought a ticket and a cup of coffee.",
        "The {transport} left at {clock} and arrived a little late.",
        "The town was busy with tourists, but the small streets behind the square were quiet.",
        "{He} stayed in a small hotel near the river.",
        "In the morning {he} walked along the {walk_place} and took many photographs.",
        "{His} suitcase was heavy because {he} had packed too many clothes.",
        "A friendly stranger showed {him} the way to the museum.",
        "The best part of the trip was a boat ride on the lake.",
        "{name} always keeps a paper map in {his} bag, even though {his} phone has one.",
        "When travelling, it is wise to carry a little cash and a bottle of water.",
        "On the last day {he} bought small presents for {his} family.",
        "The journey home was calm, and {he} slept for most of it.",
        "Outside the window {he} saw fields, forests and small villages.",
        "{He} sent a postcard to {friend} with a picture of the mountains.",
        "Many people prefer to travel in spring, when the weather is mild and prices are lower.",
    ),
    "school": (
        "{He} studied at the kitchen table every evening that week.",
        "The teacher, {teacher}, explained the lesson slowly and drew diagrams on the board.",
        "At break the children played football in the yard.",
        "The school library is open until five o'clock.",
        "{friend} helped {him} with the homework after class.",
        "Reading every day makes it easier to learn new words.",
        "The exam results were posted on the notice board on Friday.",
        "{He} got a good mark and felt proud of {his} work.",
        "Lessons start at half past eight and finish at three.",
        "In the art class they painted pictures of trees and birds.",
        "The new term begins in September.",
        "Some students take the bus to school, and others walk or ride bicycles.",
        "The head teacher gave a short speech at the end of the year.",
        "{He} packed {his} bag the night before so that {he} would not be late.",
        "The class kept a diary of the weather for a whole month.",
    ),
    "work": (
        "{He} starts work at {clock} and usually finishes at five.",
        "On {day} there was a long meeting about the new project.",
        "{His} colleague {friend} asked for help with a difficult report.",
        "The office was quiet in the morning, so {he} answered letters and made phone calls.",
        "At lunch {he} ate a sandwich in the park across the road.",
        "The manager thanked the team for finishing the work on time.",
        "{He} keeps a list of tasks and crosses them off one by one.",
        "Working from home saves time, but {name} misses talking to colleagues.",
        "The company opened a new branch in the city last year.",
        "Before the holiday {he} made sure that every task was finished.",
        "A good team shares information and helps each other.",
        "{name} took the bus home and cooked a simple dinner.",
        "The printer broke down again, and someone had to call the technician.",
        "At the end of the month {he} received {his} pay and paid the rent.",
        "Next year {he} hopes to learn new skills and take on more responsibility.",
    ),
    "shopping": (
        "The shop on the corner sells fruit, vegetables and fresh bread.",
        "{He} paid {price} for {item2} and put the change in {his} pocket.",
        "The market is busiest on Saturday mornings.",
        "{He} made a list before leaving the house, so {he} would not forget anything.",
        "The shop assistant helped {him} find the right size.",
        "Prices have gone up this year, so {name} compares them carefully.",
        "{He} carried the shopping home in two cloth bags.",
        "At the bakery {he} bought {bakery}.",
        "The supermarket was crowded, and the queue was long.",
        "{friend} recommended a small shop that sells good cheese.",
        "The sale started on Monday, and many things were half price.",
        "It is cheaper to buy fruit in season.",
        "{He} forgot to buy milk and had to go back.",
        "In the evening {he} put the food away and made a cup of tea.",
        "On the way home {he} stopped at {place} for a few minutes.",
    ),
}

# Reading-comprehension shaped paragraphs: the answer is copied from earlier in the paragraph, which
# teaches the base the copying behaviour extractive QA later relies on.
_G_STORY = (
    "{name} went to {place} on {day}. {He} {activity}. Then {he} went to {place2}.",
    "On {day} {name} went to {place}. There {he} {activity}. Later {friend} met {him} at {place2}.",
    "{name} and {friend} went to {place} on {day}. They stayed for an hour. In the evening {name} went to {place2}.",
)
_G_QUESTIONS = (
    ("Where did {name} go on {day}?", "{place}"),
    ("Who went to {place} on {day}?", "{name}"),
    ("When did {name} go to {place}?", "on {day}"),
    ("Where did {name} go after {place}?", "{place2}"),
)


def _generic_person(rng: random.Random) -> dict[str, str]:
    name, female = rng.choice(_G_PEOPLE)
    friend = rng.choice([p for p, _ in _G_PEOPLE if p != name])
    he, his, him = ("she", "her", "her") if female else ("he", "his", "him")
    return {
        "name": name,
        "friend": friend,
        "he": he,
        "his": his,
        "him": him,
        "He": he.capitalize(),
        "His": his.capitalize(),
    }


def _generic_slots(rng: random.Random) -> dict[str, str]:
    slots = {k: rng.choice(v) for k, v in _G_SLOTS.items()}
    slots["ingredient2"] = rng.choice([i for i in _G_SLOTS["ingredient"] if i != slots["ingredient"]])
    slots["item2"] = rng.choice([i for i in _G_SLOTS["item"] if i != slots["item"]])
    slots["place2"] = rng.choice([p for p in _G_SLOTS["place"] if p != slots["place"]])
    slots["activity"] = _G_PLACES[slots["place"]]
    slots.update(_generic_person(rng))
    return slots


def _generic_paragraph(rng: random.Random) -> str:
    slots = _generic_slots(rng)
    if rng.random() < 0.18:
        story = _render(rng.choice(_G_STORY), slots).text
        qa = rng.sample(_G_QUESTIONS, k=rng.randint(1, 2))
        if rng.random() < 0.5:
            tail = " ".join(f"Question: {q.format(**slots)} Answer: {a.format(**slots)}." for q, a in qa)
        else:
            tail = " ".join(f"{q.format(**slots)} {_render(a + '.', slots).text}" for q, a in qa)
        return f"{story} {tail}"
    topic = rng.choice(sorted(_G_OPENERS))
    body = rng.sample(_G_BODY[topic], k=rng.randint(4, 7))
    sentences = [_render(rng.choice(_G_OPENERS[topic]), slots).text]
    sentences += [_render(t, slots).text for t in body]
    return " ".join(sentences)


def _generic_rows(seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"{seed}:generic")
    rows, total = [], 0
    while total < GENERIC_CHARS:
        text = _generic_paragraph(rng)
        rows.append({"text": text})
        total += len(text)
    return rows


@functools.lru_cache(maxsize=1)
def _generic_vocabulary() -> frozenset[str]:
    """Every lower-case word the generic corpus can contain; invented names must avoid all of them."""
    texts: list[str] = [p for p, _ in _G_PEOPLE] + list(_G_PLACES.values())
    for values in _G_SLOTS.values():
        texts.extend(values)
    for group in (_G_OPENERS, _G_BODY):
        for templates in group.values():
            texts.extend(templates)
    texts.extend(_G_STORY)
    texts.extend(q + " " + a for q, a in _G_QUESTIONS)
    texts.extend(["she her he his him question answer"])
    return frozenset(w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t))


# --------------------------------------------------------------------------------------------------
# The fictional world
# --------------------------------------------------------------------------------------------------

# A small, regular phonology keeps invented names pronounceable and gives them a shared "island" sound.
_CONS = (
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "th",
    "sh",
    "l",
    "r",
    "n",
    "m",
    "t",
    "k",
    "s",
    "v",
)
_CLUSTERS = ("br", "dr", "gr", "kr", "tr", "st", "sk", "fr", "vr", "th")
_VOWELS = ("a", "e", "i", "o", "u") * 3 + ("a", "e", "o", "ae", "ei")
_MID_CODAS = ("n", "r", "l", "s", "m")
_END_CODAS = ("n", "r", "l", "s", "th", "nd", "rn", "ll", "rd", "m", "sk", "n", "r", "l")


class _Namer:
    """Invents unique syllable names that collide neither with each other nor with the generic corpus."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self.invented: list[str] = []  # in creation order, so the export is deterministic

    def _syllable(self, first: bool, last: bool) -> str:
        r = self.rng
        if first:
            onset = r.choice(_CLUSTERS) if r.random() < 0.15 else ("" if r.random() < 0.1 else r.choice(_CONS))
        else:
            onset = r.choice(_CONS)
        if last:
            coda = r.choice(_END_CODAS) if r.random() < 0.55 else ""
        else:
            coda = r.choice(_MID_CODAS) if r.random() < 0.3 else ""
        return onset + r.choice(_VOWELS) + coda

    def root(self, syllables: int, open_end: bool = False) -> str:
        parts = [self._syllable(i == 0, i == syllables - 1 and not open_end) for i in range(syllables)]
        return "".join(parts)

    def _accept(self, word: str, min_len: int) -> bool:
        key = word.lower()
        return (
            min_len <= len(word) <= 11
            and key not in self.used
            and key not in _generic_vocabulary()
            and key not in _template_vocabulary()
            and key not in _DENY
            and not re.search(r"(.)\1\1|[aeiou]{3}|[^aeiou]{4}|([^aeiou])\2[^aeiou]", key)
        )

    def _keep(self, word: str) -> str:
        self.used.add(word.lower())
        self.invented.append(word)
        return word

    def name(
        self, syllables: tuple[int, int] = (2, 3), suffix: Sequence[str] = ("",), lower: bool = False, min_len: int = 5
    ) -> str:
        """A root of ``syllables`` syllables; a suffix is joined only where it reads naturally."""
        while True:
            sfx = self.rng.choice(suffix)
            # A vowel-initial suffix needs a consonant before it, and a consonant-initial one a vowel or
            # a single consonant, or names like "Gundrushs" appear.
            root = self.root(self.rng.randint(*syllables), open_end=bool(sfx) and sfx[0] not in "aeiou")
            if sfx and len(root) < 3:
                continue  # "A" + "port" reads as a word, not a name
            if sfx and sfx[0] in "aeiou" and root[-1] in "aeiou":
                root += self.rng.choice(("l", "r", "n", "v", "s"))
            word = root + sfx
            word = word if lower else word.capitalize()
            if self._accept(word, min_len):
                return self._keep(word)


# Real words the phonology can produce that would read as words, not names (or read badly).
_DENY = frozenset(
    """
mask task bask husk dusk musk tusk desk disk risk bisk kern tern fern term form norm farm harm warm worm film
hill mill bill fill kill pill till will tell sell bell well fell hell dell toll roll doll poll bull full pull
dull mall hall ball call fall tall wall gall sand land band hand wind mind kind bind find rind bird lord word
sort torn born corn horn worn morn barn darn yarn turn burn rose nose hose pose dose lose sore more bore core
fore lore pore tore wore zone bone cone done gone hone lone none tone sane lane mane pane vane kale male pale
sale tale vale dale bale gale hale mole hole pole role sole vole dole mule rule tune dune rune sure lure pure
cure dire fire hire mire sire tire wire lime mime time dime pine dine fine line mine nine vine wine tine site
mite rite bite kite late mate gate date fate hate rate note vote mute lute made fade wade side tide wide ride
hide hero zero solo polo memo demo sofa soda coma data lava nova diva tuba visa mesa toga saga kilo silo halo
taro vase base less mess boss moss loss toss mass pass kiss miss this thus bath math path moth both myth with
herd nerd card hard lard bard yard cord turd surd nazi rape slut damn piss shit dumb numb tomb limb lamb bomb
them then than thin sham shin shun shod shed shot shut thud mash rash dash lash bash cash sash gash fish dish
wish lush mush rush bush push hush gush posh gosh tosh nosh moss moth doth thou none lama llama rama mama papa
dada baba nana tata vino vita lima roma para sera tela mora tuna sofa
iran thorn eros endor karen sere luna vera polen pura sala tera kone dino dona bora kora fina mana tana
nara sava lana grope rusk
""".split()
)


@dataclass
class Person:
    key: str
    given: str
    family: str
    female: bool
    born: int
    died: int
    home: str  # a town, or a mainland city phrase for people born before the islands were settled
    home_island: str
    role: str
    title: str = ""  # how articles describe them: "fisherman" for a founder who was one
    father: str = ""
    parent_job: str = ""
    death_place: str = ""
    deeds: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.given} {self.family}"


@dataclass
class Island:
    name: str
    desc: str
    area: float
    peak: str
    peak_m: int
    settled: int
    climate: str
    coast: str
    towns: list[Town] = field(default_factory=list)
    rivers: list[River] = field(default_factory=list)


@dataclass
class Town:
    name: str
    island: Island
    founded: int
    pop: int
    kind: str
    shore: str
    harbour_kind: str
    nickname: str
    nickname_reason: str
    good: str
    good2: str
    landmark: str
    landmark_year: int
    charter_year: int
    quay_year: int
    market_day: str
    settlers: int
    fleet: int
    fleet_year: int
    newspaper: str
    paper_year: int
    school: str
    school_year: int
    founder: Person | None = None
    founder_role: str = ""
    river: River | None = None
    guild: Guild | None = None
    festival: Festival | None = None
    events: list[Event] = field(default_factory=list)
    notables: list[Person] = field(default_factory=list)
    twin: Town | None = None


@dataclass
class River:
    name: str
    island: Island
    length: float
    source: str
    source_m: int
    mouth: Town
    tributaries: tuple[str, str]
    direction: str
    bridge_year: int
    mill_year: int
    navigable: int


@dataclass
class Guild:
    name: str
    craft: str
    good: str
    seat: Town
    founded: int
    founder: Person
    members: int
    member_year: int
    hall_year: int
    motto: str
    motto_meaning: str
    master: str
    founder_trade: str
    term: int
    apprentice_years: int
    email: str
    phone: str


@dataclass
class Ship:
    name: str
    kind: str
    launched: int
    yard: Town
    builder: Person
    captain: Person
    tons: int
    length: float
    masts: str
    crew: int
    timber: str
    home: Town
    partner: Town
    fate: str
    fate_year: int
    fate_place: str
    event: Event | None = None


@dataclass
class Festival:
    name: str
    town: Town
    month: str
    first_year: int
    honour: str
    custom: str
    custom2: str
    visitors: int


@dataclass
class Event:
    name: str
    kind: str
    year: int
    month: str
    town: Town
    leader: Person | None
    opponent: Person | None
    count: int
    days: int
    good: str
    ship: Ship | None = None


@dataclass
class World:
    seed: int
    arch: str
    adj: str
    sea: str
    mainland: list[str]
    islands: list[Island]
    towns: list[Town]
    people: list[Person]
    rivers: list[River]
    guilds: list[Guild]
    ships: list[Ship]
    festivals: list[Festival]
    events: list[Event]
    goods: dict[str, str]
    invented: list[str]


_GOODS = (
    ("saltfish", "dried and salted cod packed in barrels"),
    ("amberwood", "a hard, reddish timber prized for masts and keels"),
    ("sea-silk", "a fine golden cloth woven from the threads of pen shells"),
    ("blue glass", "glassware coloured with cobalt from the inland hills"),
    ("pepperkelp", "a dried seaweed used to season stews"),
    ("lamp oil", "oil pressed from the seeds of the shore poppy"),
    ("sailcloth", "heavy canvas woven from hemp"),
    ("slate", "grey roofing stone split by hand"),
    ("heather honey", "a dark honey gathered on the upland moors"),
    ("smoked eel", "eels smoked slowly over beech chips"),
    ("copper nails", "nails hammered from island copper"),
    ("pearl buttons", "buttons cut from the shells of river mussels"),
    ("rope", "cordage laid from hemp and bark fibre"),
    ("sea salt", "salt raked from shallow evaporation pans"),
    ("cider", "a dry cider pressed from small red apples"),
    ("dyed wool", "wool dyed with madder and woad"),
    ("glazed tiles", "tiles finished with a green salt glaze"),
    ("ironwood", "a dense timber that sinks in water"),
    ("pine tar", "tar boiled down from pine roots for caulking hulls"),
    ("dried figs", "small sweet figs dried on the terraces"),
    ("sea charts", "charts of the channels and reefs drawn on vellum"),
    ("bronze bells", "bells cast for ships, chapels and harbour towers"),
    ("fishing nets", "nets knotted from tarred twine"),
)
# Crafts in the same order as _GOODS; the last entry's good is an invented tea added at build time.
_CRAFTS = (
    "Coopers",
    "Shipwrights",
    "Silk-Weavers",
    "Glassblowers",
    "Kelp-Gatherers",
    "Lamp-Pressers",
    "Sailmakers",
    "Slaters",
    "Beekeepers",
    "Eel-Smokers",
    "Nail-Smiths",
    "Pearl-Cutters",
    "Ropemakers",
    "Saltwrights",
    "Cider-Pressers",
    "Dyers",
    "Tile-Glazers",
    "Timber-Fellers",
    "Tar-Boilers",
    "Fig-Growers",
    "Chartmakers",
    "Bellfounders",
    "Net-Menders",
    "Tea-Blenders",
)
_SHORES = (
    "northern",
    "southern",
    "eastern",
    "western",
    "north-eastern",
    "south-western",
    "north-western",
    "south-eastern",
)
_HARBOURS = (
    "deep natural harbour",
    "sheltered bay",
    "tidal estuary",
    "narrow sea inlet",
    "shingle cove",
    "broad sandy bay",
    "rocky headland",
)
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_ISLAND_DESCS = (
    "the largest island",
    "the second-largest island",
    "the most northerly island",
    "the most southerly island",
    "the most westerly island",
    "the most easterly island",
    "the highest island",
    "the smallest inhabited island",
    "the most populous island",
    "the wettest island",
    "the oldest settled island",
    "the flattest island",
)
_NICKNAMES = (
    ("the Lantern Town", "the lanterns hung along its quay on winter evenings"),
    ("the Grey Harbour", "the grey slate of its roofs and sea walls"),
    ("the Town of Nine Bridges", "the bridges that cross its canals"),
    ("the Salt Gate", "the salt pans at the entrance to its harbour"),
    ("the Bell Town", "the bells of its harbour tower"),
    ("the Green Quay", "the green glazed tiles of its warehouses"),
    ("the Windward Town", "its exposed position facing the prevailing wind"),
    ("the Little Capital", "the council that met there before the island had a capital"),
    ("the Herring Door", "the shoals that pass its harbour each spring"),
    ("the Painted Town", "the brightly painted fronts of its houses"),
    ("the Old Anchorage", "the anchorage used by the first settlers"),
    ("the Rope Walk", "the long rope walks along its shore"),
)
_LANDMARKS = (
    "Old Customs House",
    "Harbour Tower",
    "Guildhall",
    "Market Hall",
    "Lighthouse",
    "Bell Chapel",
    "Stone Bridge",
    "Sea Gate",
    "Weigh House",
    "Founders' Hall",
    "Salt Warehouse",
    "Watch House",
)
_FOUNDER_ROLES = (
    "merchant",
    "sea captain",
    "shipwright",
    "salt trader",
    "fisherman",
    "exiled noble",
    "surveyor",
    "farmer",
)
_PARENT_JOBS = (
    "fisherman",
    "net-mender",
    "cooper",
    "sailmaker",
    "farmer",
    "schoolteacher",
    "harbour pilot",
    "rope-maker",
    "merchant",
    "weaver",
)
_SHIP_ADJ = (
    "Sorrel",
    "Grey",
    "Swift",
    "Silver",
    "Bright",
    "Northern",
    "Faithful",
    "Patient",
    "Crimson",
    "Quiet",
    "Wandering",
    "Steadfast",
    "Golden",
    "Little",
    "Evening",
    "Morning",
    "Western",
    "Humble",
)
_SHIP_NOUN = (
    "Maid",
    "Heron",
    "Lantern",
    "Gull",
    "Promise",
    "Star",
    "Rose",
    "Otter",
    "Dawn",
    "Hope",
    "Swan",
    "Tern",
    "Harvest",
    "Wren",
    "Pilgrim",
    "Dolphin",
    "Anchor",
    "Sparrow",
)
_SHIP_KINDS = ("schooner", "brigantine", "carrack", "pinnace", "ketch", "barque", "galleon", "cog", "sloop", "lugger")
_MASTS = ("two-masted", "three-masted", "single-masted")
_TIMBERS = ("amberwood", "ironwood", "island oak", "pine")
_BOOK_PATTERNS = (
    "A Description of {island}",
    "The Chronicle of {town}",
    "On the Tides of the {sea}",
    "The Founders of {town}",
    "A Grammar of the {root} Tongue",
    "Charts of the {sea}",
    "Notes on the Islands",
    "The Harbours of {island}",
    "A Journey Round {island}",
    "Songs of the {town} Quay",
)
_POEM_PATTERNS = (
    "Evening on {island}",
    "The Lantern Keeper",
    "Salt and Silver",
    "The Drowned Bells of {town}",
    "Song for the {river}",
    "The Net-Mender's Daughter",
    "Winter at {town}",
)
_MOTTO_MEANINGS = (
    "By hand and by tide",
    "Together we hold the rope",
    "Light for every harbour",
    "The sea keeps faith",
    "Work well, trade fair",
    "From the shore, for the shore",
)
_FESTIVAL_CUSTOMS = (
    "lanterns are floated on the harbour at dusk",
    "the boats of the fishing fleet are decorated with ribbons",
    "a procession carries a model ship from the quay to the market square",
    "children run a race along the sea wall",
    "the oldest fisher in the town rings the harbour bell",
    "bread baked with honey and caraway is shared out in the square",
    "the guilds parade their banners through the old streets",
    "bonfires are lit on the headland",
)
_FESTIVAL_CUSTOMS2 = (
    "Musicians play on the quay until midnight.",
    "Stalls along the harbour sell {good} and hot cider.",
    "A boat race across the bay closes the festival.",
    "The town council hosts a supper for visiting crews.",
    "Local choirs sing the old sea songs of the {archipelago}.",
)


def _years_between(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, max(lo, hi))


def build_world(seed: int = 0) -> World:
    """Invent the archipelago: every entity and every fact the sample data states about it."""
    rng = random.Random(f"{seed}:world")
    namer = _Namer(rng)
    arch_root = namer.name((2, 2))
    adj = arch_root + "ine" if arch_root[-1] not in "aeiouy" else arch_root + "n"
    arch = f"{adj} Isles"
    sea = f"{namer.name((2, 2))} Sea"
    mainland = [namer.name((2, 3)) for _ in range(6)]
    tea = namer.name((2, 2), lower=True)
    goods = dict(_GOODS)
    goods[f"{tea} tea"] = f"a bitter tea brewed from the leaves of the {tea} shrub"
    good_names = list(goods)

    islands = []
    for desc in rng.sample(_ISLAND_DESCS, k=len(_ISLAND_DESCS)):
        name = namer.name((1, 2), suffix=("a", "ey", "is", "ora", "ant", "ar", "", ""))
        islands.append(
            Island(
                name=name,
                desc=f"{desc} of the {arch}",
                area=round(rng.uniform(18, 640), 1),
                peak=f"{namer.name((2, 2))} {rng.choice(['Fell', 'Peak', 'Height', 'Tor', 'Crag'])}",
                peak_m=rng.randint(180, 1460),
                settled=0,
                climate=rng.choice(["mild and wet", "windy and cool", "sunny and dry in summer", "damp and mild"]),
                coast=rng.choice(
                    ["steep cliffs", "long sandy beaches", "low dunes and salt marsh", "rocky coves", "wooded shores"]
                ),
            )
        )

    towns: list[Town] = []
    for i in range(N_TOWNS):
        island = islands[i % len(islands)] if i < 3 * len(islands) else rng.choice(islands)
        founded = rng.randint(1120, 1790)
        pop = int(rng.choice([rng.randint(600, 3000), rng.randint(3000, 14000), rng.randint(14000, 64000)]))
        harbour = rng.random() < 0.8
        kind = (
            "fishing village"
            if pop < 2000
            else "small port"
            if pop < 6000
            else ("port town" if harbour else "market town")
            if pop < 30000
            else "harbour city"
        )
        nick, reason = rng.choice(_NICKNAMES)
        name = namer.name(
            (1, 2), suffix=("port", "wick", "haven", "by", "mouth", "holm", "stead", "ford", "", "", "", "")
        )
        good, good2 = rng.sample(good_names, k=2)
        towns.append(
            Town(
                name=name,
                island=island,
                founded=founded,
                pop=pop,
                kind=kind,
                shore=rng.choice(_SHORES),
                harbour_kind=rng.choice(_HARBOURS),
                nickname=nick,
                nickname_reason=reason,
                good=good,
                good2=good2,
                landmark=f"{rng.choice(_LANDMARKS)}",
                landmark_year=_years_between(rng, founded + 20, 1890),
                charter_year=founded + rng.randint(8, 90),
                quay_year=founded + rng.randint(30, 200),
                market_day=rng.choice(_DAYS),
                settlers=rng.randint(12, 140),
                fleet=rng.randint(8, 160),
                fleet_year=rng.randint(1850, 1960),
                newspaper=f"{name} {rng.choice(['Courier', 'Gazette', 'Herald', 'Tide'])}",
                paper_year=rng.randint(1790, 1905),
                school=f"{name} {rng.choice(['Academy of Navigation', 'Grammar School', 'Pilot School', 'Free School'])}",
                school_year=_years_between(rng, max(founded + 40, 1600), 1900),
            )
        )
        island.towns.append(towns[-1])
    towns.sort(key=lambda t: (t.founded, t.name))
    for island in islands:
        island.towns.sort(key=lambda t: (t.founded, t.name))
        island.settled = island.towns[0].founded

    people: list[Person] = []

    def new_person(role: str, born: int, died: int, home: Town | None) -> Person:
        female = rng.random() < 0.45
        given = namer.name(
            (1, 1),
            suffix=("a", "ia", "e", "ra", "na", "is") if female else ("an", "en", "or", "os", "ir", "o", "as", "ek"),
            min_len=4,
        )
        family = namer.name((1, 2), suffix=("", "", "en", "ard", "ow", "ick", "ell", "ane"))
        if home is not None and home.founded <= born:
            place, isl = home.name, home.island.name
        else:
            # Nobody can be born in a town founded after their birth; the earliest settlers came from the mainland.
            place, isl = f"the mainland port of {rng.choice(mainland)}", "the mainland"
        p = Person(
            key=f"person:{len(people)}",
            given=given,
            family=family,
            female=female,
            born=born,
            died=died,
            home=place,
            home_island=isl,
            role=role,
            title=role,
            father=f"{namer.name((1, 1), suffix=('an', 'en', 'or', 'os', 'ir', 'o', 'as', 'ek'), min_len=4)} {family}",
            parent_job=rng.choice(_PARENT_JOBS),
        )
        later = [t for t in towns if t.founded <= died]
        p.death_place = place if rng.random() < 0.5 or not later else rng.choice(later).name
        people.append(p)
        return p

    def older_town(year: int) -> Town | None:
        candidates = [t for t in towns if t.founded <= year]
        return rng.choice(candidates) if candidates else None

    for town in towns:
        born = town.founded - rng.randint(24, 48)
        founder = new_person("founder", born, town.founded + rng.randint(6, 38), older_town(born))
        founder.deeds["town"] = town.name
        town.founder = founder
        town.founder_role = founder.title = rng.choice(_FOUNDER_ROLES)

    rivers: list[River] = []
    for i in range(N_RIVERS):
        island = islands[i % len(islands)]
        mouth = rng.choice(island.towns)
        river = River(
            name=f"{namer.name((2, 2))} River",
            island=island,
            length=round(rng.uniform(6, 96), 1),
            source=island.peak,
            source_m=max(60, island.peak_m - rng.randint(20, 160)),
            mouth=mouth,
            tributaries=(
                f"{namer.name((2, 2))} {rng.choice(['Brook', 'Water', 'Beck'])}",
                f"{namer.name((2, 2))} {rng.choice(['Brook', 'Water', 'Beck'])}",
            ),
            direction=rng.choice(["north", "south", "east", "west", "south-west", "north-east"]),
            bridge_year=_years_between(rng, mouth.founded + 10, 1880),
            mill_year=rng.choice([14, 15, 16, 17]) * 100,
            navigable=rng.randint(2, 30),
        )
        rivers.append(river)
        island.rivers.append(river)
        if mouth.river is None:
            mouth.river = river

    guilds: list[Guild] = []
    seats = rng.sample(towns, k=len(_CRAFTS))
    for craft, good, seat in zip(_CRAFTS, good_names, seats):
        founded = min(1880, seat.founded + rng.randint(50, 250))
        founder = new_person("guild founder", founded - rng.randint(28, 45), founded + rng.randint(10, 40), seat)
        slug = craft.lower()
        user = rng.choice(["secretary", "clerk", "office", "enquiries", "archive"])
        guild = Guild(
            name=f"Guild of {craft}",
            craft=craft,
            good=good,
            seat=seat,
            founded=founded,
            founder=founder,
            members=rng.randint(40, 2400),
            member_year=rng.randint(1890, 2015),
            hall_year=_years_between(rng, founded, 1910),
            motto=" ".join(
                namer.name((1, 2), suffix=("a", "i", "o", "en", "ar"), lower=True, min_len=4) for _ in range(3)
            ),
            motto_meaning=rng.choice(_MOTTO_MEANINGS),
            master=f"{namer.name((1, 1), suffix=('a', 'ia', 'an', 'en', 'or'), min_len=4)} {namer.name((1, 2), suffix=('', 'en', 'ard', 'ow'))}",
            founder_trade=rng.choice(["master craftsman", "merchant", "journeyman"]),
            term=rng.choice([2, 3, 4, 5, 7]),
            apprentice_years=rng.randint(3, 7),
            email=f"{user}@{slug}-guild.example.org",
            phone=_phone(rng),
        )
        founder.deeds["guild"] = guild.name
        founder.title = guild.founder_trade
        guilds.append(guild)
        if seat.guild is None:
            seat.guild = guild

    ships: list[Ship] = []
    ship_names = [f"{a} {n}" for a in _SHIP_ADJ for n in _SHIP_NOUN]
    rng.shuffle(ship_names)
    for i in range(N_SHIPS):
        name = ship_names[i] if i % 4 else namer.name((2, 3), suffix=("a", "e", ""))
        launched = rng.randint(1380, 1890)
        yard = older_town(launched - 5) or towns[0]
        builder = new_person("shipwright", launched - rng.randint(30, 55), launched + rng.randint(5, 30), yard)
        captain = new_person(
            "captain", launched - rng.randint(25, 40), launched + rng.randint(15, 40), older_town(launched - 40)
        )
        home = older_town(launched) or yard
        partner = rng.choice([t for t in towns if t is not home])
        fate = rng.choice(["wrecked", "broken up", "preserved", "lost", "sold"])
        ship = Ship(
            name=name,
            kind=rng.choice(_SHIP_KINDS),
            launched=launched,
            yard=yard,
            builder=builder,
            captain=captain,
            tons=rng.randint(40, 900),
            length=round(rng.uniform(14, 52), 1),
            masts=rng.choice(_MASTS),
            crew=rng.randint(6, 90),
            timber=rng.choice(_TIMBERS),
            home=home,
            partner=partner,
            fate=fate,
            fate_year=launched + rng.randint(12, 70),
            fate_place=rng.choice([t for t in towns if t.founded <= launched + 12]).name,
        )
        builder.deeds["built"] = name
        captain.deeds["ship"] = name
        ships.append(ship)

    for role, count in (("scholar", N_SCHOLARS), ("poet", N_POETS), ("cartographer", N_CARTOGRAPHERS)):
        for _ in range(count):
            born = rng.randint(1480, 1870)
            p = new_person(role, born, born + rng.randint(38, 88), older_town(born))
            pattern = rng.choice(_POEM_PATTERNS if role == "poet" else _BOOK_PATTERNS)
            island = rng.choice(islands)
            river = rng.choice(rivers)
            p.deeds["work"] = pattern.format(
                island=island.name, town=rng.choice(towns).name, sea=sea, root=arch_root, river=river.name
            )
            p.deeds["work_year"] = str(born + rng.randint(24, 36))
            p.deeds["subject_island"] = island.name

    events: list[Event] = []
    kinds = ["siege", "storm", "treaty", "battle", "fire", "riots"] * N_EVENTS_PER_KIND
    rng.shuffle(kinds)
    used_names: set[str] = set()
    for kind in kinds:
        year = rng.randint(1300, 1900)
        town = older_town(year - 10) or towns[0]
        name = {
            "siege": f"Siege of {town.name}",
            "storm": f"{namer.name((2, 2))} Storm",
            "treaty": f"Treaty of {town.name}",
            "battle": f"Battle of {town.island.name} Sound",
            "fire": f"Great Fire of {town.name}",
            "riots": f"{town.name} Riots",
        }[kind]
        if name in used_names:
            continue
        used_names.add(name)
        leader = rng.choice([p for p in people if p.born + 20 <= year <= p.died] or [None])
        opponent = rng.choice([p for p in people if p.born + 20 <= year <= p.died and p is not leader] or [None])
        ev = Event(
            name=name,
            kind=kind,
            year=year,
            month=rng.choice(_MONTHS),
            town=town,
            leader=leader,
            opponent=opponent,
            count=rng.randint(3, 900),
            days=rng.randint(4, 160),
            good=rng.choice(good_names),
        )
        events.append(ev)
        town.events.append(ev)
    for ship in ships:
        if ship.fate == "lost":
            storms = [
                e
                for e in events
                if e.kind in ("storm", "battle") and ship.launched < e.year < ship.launched + 80 and e.ship is None
            ]
            if storms:
                ship.event = storms[0]
                storms[0].ship = ship
                ship.fate_year = storms[0].year
            else:
                ship.fate = "wrecked"

    festivals: list[Festival] = []
    for town in rng.sample(towns, k=N_FESTIVALS):
        pattern = rng.choice(
            [
                "{root} Festival",
                "Feast of {root}",
                "{town} Lantern Fair",
                "{root} Tide Festival",
                "Festival of {root}",
                "{town} Harbour Days",
            ]
        )
        name = pattern.format(root=namer.name((2, 2)), town=town.name)
        if town.events and rng.random() < 0.5:
            honour = f"the memory of the {town.events[0].name} in {town.events[0].year}"
        elif rng.random() < 0.6 and town.founder is not None:
            honour = f"the founding of the town by {town.founder.name}"
        else:
            honour = f"the first catch of the season and the trade in {town.good}"
        fest = Festival(
            name=name,
            town=town,
            month=rng.choice(_MONTHS),
            first_year=_years_between(rng, town.founded + 5, 1900),
            honour=honour,
            custom=rng.choice(_FESTIVAL_CUSTOMS).format(good=town.good),
            custom2=rng.choice(_FESTIVAL_CUSTOMS2).format(good=town.good, archipelago=arch),
            visitors=rng.randint(800, 60000),
        )
        festivals.append(fest)
        town.festival = fest

    for person in people:
        if person.home_island != "the mainland":
            home = next(t for t in towns if t.name == person.home)
            if len(home.notables) < 3:
                home.notables.append(person)
    for i, town in enumerate(towns):
        town.twin = (
            towns[(i * 37 + 11) % len(towns)]
            if towns[(i * 37 + 11) % len(towns)] is not town
            else towns[(i + 1) % len(towns)]
        )

    return World(
        seed=seed,
        arch=arch,
        adj=adj,
        sea=sea,
        mainland=mainland,
        islands=islands,
        towns=towns,
        people=people,
        rivers=rivers,
        guilds=guilds,
        ships=ships,
        festivals=festivals,
        events=events,
        goods=goods,
        invented=list(namer.invented),
    )


def invented_words(seed: int = 0) -> list[str]:
    """Every invented word of the world for ``seed``: the generic corpus must contain none of them."""
    return build_world(seed).invented


# --------------------------------------------------------------------------------------------------
# PII and hard negatives
# --------------------------------------------------------------------------------------------------


def _phone(rng: random.Random) -> str:
    """A number valid in its real numbering plan but inside a range reserved for fiction."""
    n = rng.randint(0, 999)
    return rng.choice(
        [
            f"+44 20 7946 0{n:03d}",
            f"020 7946 0{n:03d}",
            f"+1 212-555-01{n % 100:02d}",
            f"(212) 555-01{n % 100:02d}",
            f"(415) 555-01{n % 100:02d}",
            f"+1 617-555-01{n % 100:02d}",
            f"+61 2 5550 {rng.randint(0, 9999):04d}",
            f"+61 491 570 {rng.choice([6, 7, 8, 9, 10, 156, 157, 158, 159, 110]):03d}",
            f"+33 1 99 00 {rng.randint(0, 99):02d} {rng.randint(0, 99):02d}",
        ]
    )


def _email(rng: random.Random, person: str | None = None) -> str:
    domain = rng.choice(["example.org", "example.com", "example.net", "mail.example"])
    if person:
        given, family = person.lower().split(" ", 1)
        local = rng.choice([f"{given}.{family}", f"{given[0]}.{family}", f"{given}{rng.randint(1, 99)}"])
    else:
        local = rng.choice(["archive", "harbourmaster", "museum", "bookings", "info"])
    return f"{local}@{domain}"


def _card(rng: random.Random) -> str:
    body = rng.choice(["4", "51", "52", "53", "54", "55"])
    body += "".join(rng.choice(string.digits) for _ in range(15 - len(body)))
    digits = _with_luhn(body)
    sep = rng.choice([" ", "-"])
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


def _ipv4(rng: random.Random) -> str:
    # Documentation ranges (RFC 5737): realistic shape, never anyone's real host.
    return f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(1, 254)}"


_PII_TEMPLATES = (
    "Enquiries about the {subject} collection can be sent to the archivist at {email}.",
    "The harbour office currently answers on {phone}, and visiting crews are asked to call ahead.",
    "A descendant of the family, {person}, gave {email} as a contact address in the museum register.",
    "Bookings for the annual dinner are taken by telephone on {phone} or by e-mail at {email}.",
    "A scanned receipt in the town archive shows a payment made with the card number {card}, which was later blanked from the public copy.",
    "The digitised register of {subject} was hosted on a server at {ip} until it was moved in 2021.",
    "The museum's night watchman, {person}, can be reached on {phone} outside opening hours.",
    "Corrections to this account may be sent to {person} at {email}.",
    "Guided walks through the old harbour are booked on {phone}.",
    "In 2016 the society's treasurer accidentally printed the card number {card} in its newsletter.",
)
# Things a careless scrubber mistakes for phone or card numbers; they must survive scrubbing.
_HARD_NEGATIVE_TEMPLATES = (
    "The digital edition of the harbour register reached version {version} in {modern_year}.",
    "On {date}, the council approved a budget of {sum} crowns for repairs to the {subject} records.",
    "The survey of {modern_year} counted {sum} households on the island, up from {sum2} in 1901.",
    "The catalogue software, version {version}, lists {sum} items from the {subject} collection.",
    "Restoration began on {date} and cost {sum} crowns, of which the guilds paid {sum2}.",
    "The records were moved to the new archive building on {date}.",
)
_NEGATIVE_KINDS = {"version": "version", "date": "date", "sum": "sum", "sum2": "sum", "modern_year": "year"}


def _hard_negative_slots(rng: random.Random) -> dict[str, str]:
    return {
        "version": f"{rng.randint(1, 4)}.{rng.randint(0, 9)}.{rng.randint(0, 12)}",
        "modern_year": str(rng.randint(1995, 2022)),
        "date": f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1950, 2021)}",
        "sum": _fmt_int(rng.randint(1100, 98000)),
        "sum2": _fmt_int(rng.randint(1000, 9000)),
    }


# --------------------------------------------------------------------------------------------------
# Article templates
# --------------------------------------------------------------------------------------------------
# A section is a list of groups (probability, templates); for each group at most one template that the
# entity has every field for is rendered. Groups keep the order of an encyclopedia section while the
# choice inside a group varies the wording from article to article.

Group = tuple[float, tuple[str, ...]]

TOWN_SECTIONS: dict[str, list[Group]] = {
    "lead": [
        (
            1.0,
            (
                "{town} is a {kind} on the {shore} coast of {island}, {island_desc}.",
                "{town} is a {kind} in the {archipelago}, lying on the {shore} shore of {island}.",
                "{town} is a {kind} on {island} in the {archipelago}, facing the {sea}.",
            ),
        ),
        (
            0.9,
            (
                "It was founded in {year} by {founder} and had a population of {pop} at the {census} census.",
                "Founded by {founder} in {year}, it had {pop} inhabitants at the {census} census.",
                "The town was established in {year} by the {founder_role} {founder}.",
            ),
        ),
        (
            0.7,
            (
                'The town is known locally as "{nickname}" because of {nickname_reason}.',
                'Islanders call it "{nickname}", after {nickname_reason}.',
            ),
        ),
        (
            0.7,
            (
                "Its economy has long depended on {good}, and it is the seat of the {guild}.",
                "It is the seat of the {guild}, which has controlled the trade in {guild_good} since {guild_year}.",
                "For most of its history the town has lived from {good} and from the trade in {good2}.",
            ),
        ),
        (
            0.6,
            (
                "It is the chief town of {island} and the seat of the island council.",
                "{town} lies on the {river}, about {dist_km} kilometres ({dist_mi} mi) from {capital}.",
                "Each {festival_month} the town holds the {festival}, which draws visitors from across the {archipelago}.",
            ),
        ),
    ],
    "History": [
        (
            1.0,
            (
                "{town} was founded in {year} by {founder}, a {founder_role} from {founder_home}.",
                "According to the town charter, {founder} established the first settlement at {town} in {year}.",
                "The first houses at {town} were built in {year}, when {founder} brought {settlers} families from {founder_home} to the {harbour_kind}.",
                "{founder} chose the site in {year} because the {harbour_kind} offered shelter from the {wind} winds.",
            ),
        ),
        (
            0.8,
            (
                "{founder_family} brought {settlers} families with {founder_pron_obj}, most of them fishers and farmers.",
                "The settlers cleared the land above the {harbour_kind} and built a wooden quay.",
                "During its first century the settlement lived mainly from fishing and from the trade in {good}.",
            ),
        ),
        (
            0.8,
            (
                "The town received a charter from the island council in {charter_year}, which granted it the right to hold a weekly market.",
                "In {charter_year} the island council granted {town} a charter and the right to elect its own reeve.",
                "A charter of {charter_year} confirmed the town's fishing rights in the waters of the {sea}.",
            ),
        ),
        (
            0.8,
            (
                "A stone quay was built in {quay_year}, allowing larger ships to load {good} directly from the warehouses.",
                "The stone quay, completed in {quay_year}, made {town} one of the busiest harbours on {island}.",
                "By {early_year} the town had grown to {pop_early} inhabitants, many of them employed in the {good} trade.",
            ),
        ),
        (
            0.8,
            (
                "The town suffered badly during the {event} of {event_year}.",
                "In {event_year} the {event} left its mark on the town, and several streets had to be rebuilt.",
                "The {event} of {event_year} is still commemorated in {town}.",
            ),
        ),
        (
            0.7,
            (
                "The {landmark}, completed in {landmark_year}, is the oldest surviving building in the town.",
                "In {landmark_year} the townspeople built the {landmark}, which still stands near the harbour.",
                "The {landmark} was finished in {landmark_year} and paid for by a tax on {good}.",
            ),
        ),
        (
            0.6,
            (
                "In the nineteenth century {town} became a centre of the {good2} trade.",
                "The decline of the {good} trade after 1880 led many families to emigrate to the mainland.",
                "In the twentieth century the harbour was deepened and the old warehouses were turned into homes.",
            ),
        ),
    ],
    "Geography": [
        (
            1.0,
            (
                "{town} stands on a {harbour_kind} facing the {sea}.",
                "The town is built around a {harbour_kind} on the {shore} side of {island}.",
                "{town} occupies a {harbour_kind}, with its older streets climbing steeply from the harbour.",
            ),
        ),
        (
            0.7,
            (
                "The {river} reaches the sea at {town}, and its lower course forms the eastern edge of the town.",
                "The {river}, which rises on {peak}, flows through the middle of the town.",
                "{town} lies about {dist_km} kilometres ({dist_mi} mi) by road from {capital}, the chief town of {island}.",
            ),
        ),
        (
            0.7,
            (
                "{peak}, the highest point on {island} at {peak_m} metres ({peak_ft} ft), can be seen from the harbour on clear days.",
                "Behind the town the land rises towards {peak}, which reaches {peak_m} metres ({peak_ft} ft).",
            ),
        ),
        (
            0.7,
            (
                "The climate is {climate}, with about {rain} millimetres of rain in an average year.",
                "Winters are mild, and the {wind} wind often closes the harbour for several days in {storm_month}.",
                "The coast near the town is one of {coast}, and seals can often be seen in the bay.",
            ),
        ),
    ],
    "Economy": [
        (
            1.0,
            (
                "The economy of {town} has always depended on {good}, {good_desc}.",
                "{good} has been the chief product of {town} since the seventeenth century.",
                "The town's prosperity rested on {good}, {good_desc}.",
            ),
        ),
        (
            0.8,
            (
                "Ships from {town} carried {good} to {partner} and returned with {partner_good}.",
                "A regular trade linked {town} with {partner}, which sent {partner_good} in exchange for {good}.",
                "Merchants of {town} traded {good} for {partner_good} from {partner}.",
            ),
        ),
        (
            0.7,
            (
                "The {guild} has its hall in the town and controls the trade in {guild_good}.",
                "Since {guild_year} the {guild} has had its seat in {town}.",
            ),
        ),
        (
            0.8,
            (
                "At the {census} census the town had {pop} inhabitants, of whom about {pct} per cent worked in the harbour or in the {good} trade.",
                "The population was {pop} at the {census} census, compared with {pop_early} in {early_year}.",
            ),
        ),
        (
            0.7,
            (
                "A weekly market is held on {market_day} in the square in front of the {landmark}.",
                "The fishing fleet of {town} numbered {fleet} boats in {fleet_year}.",
                "Tourism has grown since the 1990s, and the old warehouses along the quay now house shops and cafes.",
            ),
        ),
    ],
    "Culture": [
        (
            0.8,
            (
                "The {festival} is held every {festival_month} in honour of {festival_honour}.",
                "Every {festival_month} the town celebrates the {festival}, during which {festival_custom}.",
            ),
        ),
        (
            0.8,
            (
                "Notable people from {town} include the {notable_role} {notable}, who was born there in {notable_born}.",
                "The {notable_role} {notable} was born in {town} in {notable_born}.",
            ),
        ),
        (
            0.6,
            (
                "The town museum, housed in the former customs house, holds a collection of ship models and charts.",
                "The {newspaper} has been published weekly since {paper_year}.",
                "The {school}, founded in {school_year}, trained generations of pilots and navigators.",
            ),
        ),
        (
            0.6,
            (
                "{town} is twinned with {twin}, a {twin_kind} on {twin_island}.",
                "Since 1964 {town} has been twinned with {twin} on {twin_island}.",
            ),
        ),
    ],
}

PERSON_SECTIONS: dict[str, list[Group]] = {
    "lead": [
        (
            1.0,
            (
                "{name} ({born}\u2013{died}) was a {adj} {role} from {home}, best known for {known_for}.",
                "{name} ({born}\u2013{died}) was a {role} of the {archipelago}, remembered for {known_for}.",
                "{name} ({born}\u2013{died}) was a {adj} {role} who is best remembered for {known_for}.",
            ),
        ),
        (
            0.7,
            (
                "{Pron} was born in {home} and died in {death_place} at the age of {age}.",
                "Born in {home} in {born}, {pron} spent most of {poss} life on {home_island}.",
            ),
        ),
        (
            0.5,
            (
                "{Poss} name is still given to a street in {deed_town}.",
                "A statue of {family} stands on the quay at {deed_town}.",
            ),
        ),
    ],
    "Early life": [
        (
            1.0,
            (
                "{given} was born in {home} in {born}, the {birth_order} child of a {parent_job}.",
                "{family} was born in {born} in {home}, where {poss} father, {father}, worked as a {parent_job}.",
                "{name} was the {birth_order} child of {father}, a {parent_job} of {home}.",
            ),
        ),
        (
            0.8,
            (
                "{Pron} grew up near the harbour and learned to read at the parish school.",
                "As a child {pron} helped {poss} father mend nets and carry fish to the market.",
                "{Pron} was taught to read and write by a travelling schoolmaster.",
            ),
        ),
        (
            0.7,
            (
                "At the age of {age_sea} {pron} went to sea as a ship's boy on a vessel trading in {good}.",
                "At {age_sea} {pron} was apprenticed to a {parent_job} in {home}.",
                "When {pron} was {age_sea}, the family moved to {move_town}.",
            ),
        ),
    ],
    "Founding of {deed_town}": [
        (
            1.0,
            (
                "In {deed_year} {family} led {settlers} families to {deed_island} and founded {deed_town}.",
                "{family} founded {deed_town} in {deed_year} on a {harbour_kind} on the {shore} coast of {deed_island}.",
                "The settlement of {deed_town} was established by {family} in {deed_year}.",
            ),
        ),
        (
            0.8,
            (
                "{Pron} chose the site because the {harbour_kind} offered shelter from the {wind} winds.",
                "The first winter was hard, and several of the settlers returned to {home}.",
                "{family} laid out the first streets and built a wooden quay.",
            ),
        ),
        (
            0.8,
            (
                "{family} governed the new settlement for {years_governed} years.",
                "Under {poss} leadership the settlement began to trade {good} with the older towns of the {archipelago}.",
            ),
        ),
    ],
    "Guild": [
        (
            1.0,
            (
                "In {deed_year} {family} founded the {deed_guild} at {deed_town}.",
                "{family} was the founder of the {deed_guild}, established at {deed_town} in {deed_year}.",
                "The {deed_guild} was founded by {family} in {deed_year}.",
            ),
        ),
        (
            0.8,
            (
                "{Pron} served as the first master of the guild for {years_governed} years.",
                "{Pron} drew up the guild's rules on apprenticeship and the quality of {guild_good}.",
            ),
        ),
        (
            0.6,
            (
                'The guild\'s motto, "{motto}", is said to have been chosen by {family}.',
                "The guild hall in {deed_town} still keeps {poss} portrait.",
            ),
        ),
    ],
    "Career at sea": [
        (
            1.0,
            (
                "{family} commanded the {deed_ship}, a {ship_kind} launched at {ship_yard} in {ship_launched}.",
                "{family} was the first master of the {deed_ship}, built at {ship_yard} in {ship_launched}.",
                "In {ship_launched} {family} took command of the {deed_ship}, a {ship_kind} of {ship_tons} tons.",
            ),
        ),
        (
            0.8,
            (
                "Under {poss} command the {deed_ship} made {voyages} voyages between {ship_home} and {ship_partner}.",
                "{Pron} sailed regularly to {ship_partner}, carrying {good} and returning with {partner_good}.",
            ),
        ),
        (
            0.6,
            (
                "{family} was known as a careful navigator who never lost a member of {poss} crew.",
                "In {storm_year} {pron} brought the {deed_ship} safely through a severe storm off {deed_island}.",
            ),
        ),
    ],
    "Shipbuilding": [
        (
            1.0,
            (
                "{family} built the {deed_ship} at {ship_yard} in {ship_launched}.",
                "{Poss} best-known ship, the {deed_ship}, was launched at {ship_yard} in {ship_launched}.",
                "The {deed_ship}, a {ship_kind} of {ship_tons} tons, was designed and built by {family}.",
            ),
        ),
        (
            0.7,
            (
                "{Pron} preferred {ship_timber} for keels and claimed that it outlasted every other timber.",
                "{family} trained many apprentices, several of whom opened yards of their own.",
            ),
        ),
    ],
    "Works": [
        (
            1.0,
            (
                "{family} is best known for {work}, written in {work_year}.",
                "In {work_year} {family} published {work}.",
                "{Poss} most important work, {work}, appeared in {work_year}.",
            ),
        ),
        (
            0.8,
            (
                "The work describes the coasts, harbours and customs of {subject_island}.",
                "It was the first account to describe the whole of {subject_island} from direct observation.",
                "Critics praised its plain style and its close attention to the life of the harbours.",
            ),
        ),
        (
            0.6,
            (
                "{Pron} spent {survey_years} years travelling around {subject_island} to gather material.",
                "{family} corresponded with scholars on the mainland and in every town of the {archipelago}.",
            ),
        ),
    ],
    "Later life": [
        (
            1.0,
            (
                "{family} died in {death_place} in {died} at the age of {age}.",
                "{Pron} died in {died} in {death_place}.",
                "{family} spent {poss} last years in {death_place}, where {pron} died in {died}.",
            ),
        ),
        (
            0.7,
            (
                "{Pron} was buried in the churchyard at {home}.",
                "{Poss} grave is marked by a plain stone carved with a ship.",
                "{Poss} papers were given to the town museum in {home}.",
            ),
        ),
    ],
    "Legacy": [
        (
            0.8,
            (
                "The {legacy_festival} is held each year in {poss} honour.",
                "A statue of {family} stands on the quay at {deed_town}.",
                "A street in {deed_town} is named after {family}.",
            ),
        ),
        (
            0.6,
            (
                "Historians regard {family} as one of the most important figures of {poss} time in the {archipelago}.",
                "{Poss} life has been the subject of several local plays and songs.",
            ),
        ),
    ],
}

SHIP_SECTIONS: dict[str, list[Group]] = {
    "lead": [
        (
            1.0,
            (
                "The {ship} was a {ship_kind} built at {ship_yard} in {ship_launched}.",
                "The {ship} was a {masts} {ship_kind} launched at {ship_yard} in {ship_launched}.",
                "The {ship} was a {ship_kind} of the {archipelago}, built at {ship_yard} in {ship_launched}.",
            ),
        ),
        (
            0.8,
            (
                "She was commanded for most of her career by {captain}.",
                "Her best-known master was {captain}, who sailed her between {ship_home} and {ship_partner}.",
            ),
        ),
        (0.7, ("She was {fate_lead}.",)),
    ],
    "Construction": [
        (
            1.0,
            (
                "She was designed and built by the shipwright {builder}.",
                "The shipwright {builder} laid her keel at {ship_yard} in {keel_year}.",
                "{builder} built her at the yard in {ship_yard}.",
            ),
        ),
        (
            0.8,
            (
                "The hull was of {ship_timber}, and she measured {ship_length} metres ({ship_length_ft} ft) from stem to stern.",
                "She measured {ship_tons} tons burthen and was {ship_length} metres ({ship_length_ft} ft) long.",
                "She was a {masts} vessel of {ship_tons} tons with a hull of {ship_timber}.",
            ),
        ),
        (
            0.7,
            (
                "She carried a crew of {crew}.",
                "She needed a crew of {crew} and could carry about {cargo} barrels of {good}.",
            ),
        ),
    ],
    "Service history": [
        (
            1.0,
            (
                "Her first master was {captain}, who commanded her for {years} years.",
                "{captain} took command of her in {ship_launched} and remained her master for {years} years.",
                "Under {captain} she sailed regularly between {ship_home} and {ship_partner}.",
            ),
        ),
        (
            0.8,
            (
                "She carried {good} from {ship_home} to {ship_partner} and returned with {partner_good}.",
                "Her usual cargo was {good}, loaded at {ship_home}.",
                "In a good year she made {voyages} voyages across the {sea}.",
            ),
        ),
        (
            0.6,
            (
                "In {event_year} she took part in the {event}.",
                "During the {event} of {event_year} she was one of the few ships to reach harbour safely.",
            ),
        ),
    ],
    "Fate": [
        (1.0, ("{fate_sentence}",)),
        (
            0.5,
            (
                "Her figurehead is kept in the museum at {ship_home}.",
                "A model of the {ship} can be seen in the {ship_home} museum.",
                "Her bell hangs in the harbour tower at {ship_home}.",
            ),
        ),
    ],
}

GUILD_SECTIONS: dict[str, list[Group]] = {
    "lead": [
        (
            1.0,
            (
                "The {guild} is a trade guild of the {archipelago}, based in {seat} on {island}.",
                "The {guild} is the guild of the {craft_lower} of the {archipelago}, with its hall in {seat}.",
            ),
        ),
        (
            0.9,
            (
                "It was founded in {guild_year} by {guild_founder} and regulates the making and sale of {guild_good}.",
                "Founded by {guild_founder} in {guild_year}, it controls the trade in {guild_good}.",
            ),
        ),
        (0.6, ("It had {members} members in {member_year}.", 'Its motto is "{motto}".')),
    ],
    "History": [
        (
            1.0,
            (
                "The guild was founded in {guild_year} by {guild_founder}, a {founder_trade} of {seat}.",
                "{guild_founder} founded the guild at {seat} in {guild_year}.",
                "The {guild} grew out of a brotherhood of {craft_lower} that met in {seat}, and was formally founded by {guild_founder} in {guild_year}.",
            ),
        ),
        (
            0.8,
            (
                "Its first rules fixed the price of {guild_good} and the length of an apprenticeship.",
                "The guild soon controlled the trade in {guild_good} throughout {island}.",
                "By {member_year} the guild had {members} members.",
            ),
        ),
        (
            0.6,
            (
                "During the {event} of {event_year} the guild paid for the repair of the harbour at {seat}.",
                "The guild lost many of its members in the {event} of {event_year}.",
            ),
        ),
    ],
    "Organisation": [
        (
            1.0,
            (
                "The guild is led by a master elected every {term} years; the present master is {master}.",
                "A master, elected for {term} years, leads the guild; the office is now held by {master}.",
            ),
        ),
        (
            0.8,
            (
                "Apprentices serve {apprentice_years} years before they may sell {guild_good} under their own mark.",
                "An apprenticeship lasts {apprentice_years} years.",
            ),
        ),
        (
            0.7,
            (
                'Its motto, "{motto}", is an old island phrase meaning "{motto_meaning}".',
                'The motto of the guild is "{motto}", which means "{motto_meaning}".',
            ),
        ),
    ],
    "Guild hall": [
        (
            1.0,
            (
                "The guild hall in {seat} was built in {hall_year}.",
                "In {hall_year} the guild built a hall of its own on the quay at {seat}.",
            ),
        ),
        (
            0.6,
            (
                "The hall contains portraits of every master since {guild_founder}.",
                "Above the door of the hall is a carved panel showing {craft_lower} at work.",
            ),
        ),
    ],
}

RIVER_SECTIONS: dict[str, list[Group]] = {
    "lead": [
        (
            1.0,
            (
                "The {river} is a river on {island} in the {archipelago}.",
                "The {river} is the {river_rank} river of {island}.",
            ),
        ),
        (
            1.0,
            (
                "It is {length} kilometres ({length_mi} mi) long and reaches the sea at {mouth}.",
                "It flows for {length} kilometres ({length_mi} mi) from {source} to the sea at {mouth}.",
            ),
        ),
    ],
    "Course": [
        (
            1.0,
            (
                "It rises on the slopes of {source} at a height of about {source_m} metres and flows {direction} to the sea at {mouth}.",
                "The river has its source on {source}, about {source_m} metres above sea level.",
            ),
        ),
        (
            0.8,
            (
                "Its main tributaries are the {trib1} and the {trib2}.",
                "The {trib1} joins it below the moors, and the {trib2} a few kilometres above {mouth}.",
            ),
        ),
        (
            0.7,
            (
                "The lower {navigable} kilometres are navigable by small boats.",
                "Small boats can sail up the river for about {navigable} kilometres from {mouth}.",
            ),
        ),
    ],
    "History": [
        (
            1.0,
            (
                "Water mills on the river were grinding grain by the {mill_year}s.",
                "From the {mill_year}s the river drove mills that pressed seeds for {good}.",
            ),
        ),
        (
            0.8,
            (
                "A stone bridge was built across the river at {mouth} in {bridge_year}.",
                "The first bridge at {mouth}, built in {bridge_year}, still carries the coast road.",
            ),
        ),
        (
            0.6,
            (
                "The river is known for its eels and river mussels, whose shells were once cut into buttons.",
                "Floods in the spring of {flood_year} damaged the lower town of {mouth}.",
            ),
        ),
    ],
}

ISLAND_SECTIONS: dict[str, list[Group]] = {
    "lead": [
        (1.0, ("{island} is {island_desc}.", "{island} is an island in the {sea}, {island_desc}.")),
        (
            1.0,
            (
                "It has an area of {area} square kilometres ({area_mi} sq mi) and a population of {island_pop}.",
                "The island covers {area} square kilometres ({area_mi} sq mi) and had {island_pop} inhabitants at the {census} census.",
            ),
        ),
        (
            0.9,
            (
                "Its chief town is {capital}, founded by {capital_founder} in {capital_year}.",
                "The chief town, {capital}, lies on the {capital_shore} coast.",
            ),
        ),
    ],
    "Geography": [
        (
            1.0,
            (
                "The highest point is {peak} at {peak_m} metres ({peak_ft} ft).",
                "{peak}, at {peak_m} metres ({peak_ft} ft), is the highest point on the island.",
            ),
        ),
        (0.8, ("The coast is one of {coast}.", "Much of the coast consists of {coast}, broken by small harbours.")),
        (
            0.8,
            (
                "The main river is the {river}, which flows from {peak} to the sea at {river_mouth}.",
                "The {river} drains most of the island and reaches the sea at {river_mouth}.",
            ),
        ),
        (0.6, ("The climate is {climate}.",)),
    ],
    "History": [
        (
            1.0,
            (
                "{island} was first settled in {settled}, when {capital_founder} founded {capital}.",
                "The first permanent settlement on the island was {capital}, founded in {settled}.",
            ),
        ),
        (
            0.8,
            (
                "Other early towns included {town2}, founded in {town2_year}, and {town3}, founded in {town3_year}.",
                "{town2} followed in {town2_year}.",
            ),
        ),
        (
            0.6,
            (
                "The island was badly affected by the {event} of {event_year}.",
                "In {event_year} the {event} brought great hardship to the island.",
            ),
        ),
    ],
    "Settlements": [
        (
            1.0,
            (
                "Besides {capital}, the main settlements are {town2} and {town3}.",
                "The island has {n_towns} towns, the largest of which are {capital} and {town2}.",
            ),
        ),
        (
            0.8,
            (
                "{town2} had a population of {town2_pop} at the {census} census.",
                '{town3} is known as "{town3_nickname}".',
            ),
        ),
    ],
    "Economy": [
        (1.0, ("The island's chief products are {good} and {good2}.", "The economy rests on {good}, {good_desc}.")),
        (
            0.7,
            (
                "Ferries link {capital} with {partner} several times a week.",
                "Most goods leave the island through the harbour at {capital}.",
            ),
        ),
    ],
}

FESTIVAL_SECTIONS: dict[str, list[Group]] = {
    "lead": [
        (
            1.0,
            (
                "The {festival} is an annual festival held in {town} on {island} every {festival_month}.",
                "The {festival} is a festival celebrated each {festival_month} in {town}, on {island}.",
            ),
        ),
        (1.0, ("It commemorates {festival_honour}.", "It is held in honour of {festival_honour}.")),
    ],
    "Origins": [
        (
            1.0,
            (
                "The festival was first held in {first_year}.",
                "According to the town records, the first {festival} took place in {first_year}.",
            ),
        ),
        (
            0.8,
            (
                "It was founded by the townspeople of {town} to mark {festival_honour}.",
                "At first it was a single day of prayers and a supper on the quay.",
            ),
        ),
        (
            0.6,
            (
                "The festival was suspended during the war years and revived in 1947.",
                "In the nineteenth century the guilds of {town} took over its organisation.",
            ),
        ),
    ],
    "Customs": [
        (1.0, ("On the first evening {festival_custom}.", "The best-known custom is that {festival_custom}.")),
        (0.9, ("{festival_custom2}",)),
        (
            0.6,
            (
                "Visitors wear a sprig of heather or a blue ribbon.",
                "Traditional dishes include smoked eel and bread baked with heather honey.",
            ),
        ),
    ],
    "Modern festival": [
        (
            1.0,
            (
                "In recent years the festival has attracted about {visitors} visitors.",
                "Today the festival draws about {visitors} visitors to {town}.",
            ),
        ),
        (
            0.6,
            (
                "The programme is published each spring in the {newspaper}.",
                "Ferries to {town} are often fully booked during the festival.",
            ),
        ),
    ],
}

EVENT_SECTIONS: dict[str, dict[str, list[Group]]] = {
    "siege": {
        "lead": [
            (
                1.0,
                (
                    "The {event} was a siege of the town of {town} on {island} that lasted {days} days in {event_year}.",
                    "The {event} took place in {event_year}, when {town} was besieged for {days} days.",
                ),
            )
        ],
        "Background": [
            (
                1.0,
                (
                    "{leader} led a fleet of {count} ships against {town}, which was defended by {opponent}.",
                    "The attack was led by {leader}, while {opponent} commanded the defenders.",
                ),
            ),
            (
                0.7,
                (
                    "The quarrel began over the right to tax {good} landed at {town}.",
                    "At stake was control of the trade in {good}.",
                ),
            ),
        ],
        "Aftermath": [
            (
                1.0,
                (
                    "The siege ended when the attackers ran out of supplies.",
                    "After {days} days the two sides agreed a truce.",
                ),
            ),
            (0.7, ("The town walls were rebuilt in the following years.",)),
        ],
    },
    "storm": {
        "lead": [
            (
                1.0,
                (
                    "The {event} was a severe storm that struck the {archipelago} in {event_month} {event_year}.",
                    "The {event} of {event_month} {event_year} was the worst storm recorded in the {archipelago}.",
                ),
            )
        ],
        "Damage": [
            (
                1.0,
                (
                    "It sank {count} ships and damaged the harbour of {town}.",
                    "About {count} vessels were lost, and the quay at {town} was destroyed.",
                ),
            ),
            (
                0.8,
                (
                    "Among the ships lost was the {lost_ship}, under the command of {lost_captain}.",
                    "The {lost_ship} went down with all hands.",
                ),
            ),
        ],
        "Aftermath": [
            (
                1.0,
                (
                    "The harbour of {town} took {days} days to clear of wreckage.",
                    "The storm led to the building of new sea walls across the islands.",
                ),
            ),
            (0.6, ("A memorial to the drowned stands on the quay at {town}.",)),
        ],
    },
    "treaty": {
        "lead": [
            (
                1.0,
                (
                    "The {event} was an agreement signed at {town} in {event_year} between {leader} and {opponent}.",
                    "The {event} was signed in {event_month} {event_year} at {town}.",
                ),
            )
        ],
        "Terms": [
            (
                1.0,
                (
                    "It fixed the price of {good} for {days} years.",
                    "Its main article divided the fishing grounds of the {sea}.",
                ),
            ),
            (
                0.8,
                (
                    "{leader} and {opponent} signed it in the {landmark} at {town}.",
                    "The treaty was drafted by {opponent} and accepted by {leader}.",
                ),
            ),
        ],
        "Legacy": [
            (
                1.0,
                (
                    "It remained in force until the end of the century.",
                    "The original copy is kept in the museum at {town}.",
                ),
            )
        ],
    },
    "battle": {
        "lead": [
            (
                1.0,
                (
                    "The {event} was a naval battle fought off {island} in {event_year}.",
                    "The {event} was fought in the waters off {town} in {event_month} {event_year}.",
                ),
            )
        ],
        "Battle": [
            (
                1.0,
                (
                    "{leader} commanded a fleet of {count} ships against the ships of {opponent}.",
                    "About {count} ships took part, under {leader} and {opponent}.",
                ),
            ),
            (
                0.8,
                (
                    "The {lost_ship} was sunk during the fighting.",
                    "Among the losses was the {lost_ship}, commanded by {lost_captain}.",
                ),
            ),
        ],
        "Aftermath": [
            (
                1.0,
                (
                    "The battle ended the dispute over the trade in {good}.",
                    "After the battle {leader} was received in triumph at {town}.",
                ),
            )
        ],
    },
    "fire": {
        "lead": [
            (
                1.0,
                (
                    "The {event} broke out on the night of {day_of_month} {event_month} {event_year}.",
                    "The {event} was a fire that destroyed much of {town} in {event_year}.",
                ),
            )
        ],
        "Fire": [
            (
                1.0,
                (
                    "It began in a warehouse full of {good} and spread quickly along the quay.",
                    "Fanned by a strong wind, the fire burned for {days_short} days.",
                ),
            ),
            (
                0.8,
                (
                    "About {count} houses were destroyed.",
                    "The fire destroyed {count} houses and most of the old warehouses.",
                ),
            ),
        ],
        "Rebuilding": [
            (
                1.0,
                (
                    "The town was rebuilt in stone under the direction of {leader}.",
                    "{leader} drew up the plan for the new streets.",
                ),
            ),
            (0.6, ("Thatched roofs were banned after the fire.",)),
        ],
    },
    "riots": {
        "lead": [
            (
                1.0,
                (
                    "The {event} were a series of disturbances in {town} in {event_year} over the price of {good}.",
                    "The {event} broke out in {event_month} {event_year} after the price of {good} doubled.",
                ),
            )
        ],
        "Events": [
            (
                1.0,
                (
                    "For {days} days crowds gathered on the quay and stopped ships from leaving.",
                    "About {count} people took part in the disturbances.",
                ),
            ),
            (
                0.8,
                (
                    "{leader} spoke for the crowds, and {opponent} for the merchants.",
                    "The council called on {leader} to restore order.",
                ),
            ),
        ],
        "Aftermath": [
            (
                1.0,
                (
                    "The council fixed the price of {good} for the following year.",
                    "The price of {good} was lowered and the crowds went home.",
                ),
            )
        ],
    },
}


# Shared colour sentences by theme: they carry the domain's vocabulary between entity types (a ship
# article talks about harbours and trade as a town article does). ``place`` is the entity's home town.
COLOR: dict[str, tuple[str, ...]] = {
    "harbour": (
        "The harbour at {place} is protected by a long breakwater of dressed stone.",
        "Fishing boats still land their catch on the old slipway at {place} early each morning.",
        "Pilots from {place} guided ships through the reefs that guard the approaches to {place_island}.",
        "On calm evenings the lights of {place} can be seen from far out on the {sea}.",
        "Ferries from {place} connect with the other islands of the {archipelago}.",
        "In the age of sail the quay at {place} was crowded with ships waiting for a fair wind.",
        "The tides in the {sea} are strong, and the inner harbour at {place} dries out at low water.",
        "Weathered warehouses line the waterfront at {place}, many of them now converted into homes.",
        "The channel into {place} was marked with stone beacons long before the first lighthouse was built.",
        "Shipwrights at {place} still build small wooden boats in the traditional way.",
    ),
    "history": (
        "Records from this period are scarce, and much of what is known comes from the parish registers of {place}.",
        "Local historians have argued about the exact sequence of events for more than a century.",
        "The archive at {place} preserves letters and accounts from these years.",
        "Like much of the {archipelago}, {place_island} suffered from raids by pirates in the early years.",
        "The island council met in {place} several times during this period.",
        "A surviving map of {year_map} shows only a handful of houses around the harbour at {place}.",
        "The first written account of {place} dates from {year_account}.",
        "Several families who settled on {place_island} in the early years are still there today.",
        "Much of the old town of {place} was rebuilt in stone during the eighteenth century.",
        "Emigration to the mainland reduced the population of {place_island} in the late nineteenth century.",
    ),
    "trade": (
        "Trade in {place_good} brought merchants to {place} from every island of the {archipelago}.",
        "Prices for {place_good} were set each spring at the market in {place}.",
        "Much of the {place_good} sold on the mainland was shipped through {place}.",
        "The guilds kept careful accounts, many of which survive in the archive at {place}.",
        "Every cargo of {place_good} that left {place} was entered in the harbour books.",
        "In poor years the merchants of {place} lent money to the fishers against the next season's catch.",
        "The trade routes of the {archipelago} crossed the {sea} in every direction.",
        "Customs duties on {place_good} paid for much of the public building in {place}.",
        "Merchants from the mainland kept agents at {place} to buy {place_good} before the autumn storms.",
    ),
    "culture": (
        "Sea songs from {place} are still sung at weddings across {place_island}.",
        "The people of {place} speak a dialect with many words for wind and tide.",
        "Traditional houses on {place_island} are built of stone with roofs of slate or turf.",
        "Local bakers make a flat loaf flavoured with honey and caraway for feast days.",
        "The old families of {place} keep model ships in their windows for luck.",
        "Storytellers on {place_island} still tell the tale of the first settlers.",
        "A choir of fishers' wives was founded at {place} in {year_choir} and still performs each summer.",
        "The museum at {place} holds paintings of the harbour by local artists.",
        "Many houses in {place} are painted in bright colours so that fishers can recognise them from the sea.",
    ),
    "nature": (
        "Seabirds nest in large numbers on the cliffs near {place}.",
        "The moorland above {place} is covered in heather, which flowers in {month_c}.",
        "Seals and porpoises are common in the waters around {place_island}.",
        "Strong winds from the {sea} shape the low, twisted trees of the coast.",
        "Fog is frequent in early summer, when warm air meets the cold waters of the {sea}.",
        "The soil on {place_island} is thin, and farming is possible only in the sheltered valleys.",
        "Rainfall is highest in autumn, when storms come in from the {sea}.",
        "Otters live along the streams that run down to the sea near {place}.",
    ),
    "life": (
        "Like many families of {place}, the household lived from the sea.",
        "Letters written by {family} to friends in {place} survive in the island archive.",
        "Contemporaries described {family} as quiet, stubborn and generous.",
        "{Pron} kept a diary for most of {poss} life, and parts of it were published in {year_diary}.",
        "{family} spoke the island dialect at home but wrote in the formal language of the council.",
        "Little is known about {poss} private life.",
        "{Pron} married in {place} and had several children, one of whom also went to sea.",
        "A portrait of {family} hangs in the museum at {place}.",
    ),
}
_THEMES = {
    "lead": (),
    "History": ("history", "harbour"),
    "Geography": ("nature", "harbour"),
    "Economy": ("trade", "harbour"),
    "Culture": ("culture",),
    "Founding": ("history", "harbour"),
    "Early life": ("life", "culture"),
    "Later life": ("life",),
    "Legacy": ("culture", "life"),
    "Career at sea": ("harbour", "trade"),
    "Shipbuilding": ("harbour", "trade"),
    "Works": ("culture", "history"),
    "Guild": ("trade",),
    "Construction": ("harbour",),
    "Service history": ("harbour", "trade"),
    "Fate": ("history",),
    "Organisation": ("trade",),
    "Guild hall": ("history", "culture"),
    "Course": ("nature",),
    "Settlements": ("harbour", "culture"),
    "Origins": ("history",),
    "Customs": ("culture",),
    "Modern festival": ("culture", "harbour"),
    "Background": ("history", "trade"),
    "Aftermath": ("history",),
    "Damage": ("harbour",),
    "Terms": ("trade",),
    "Battle": ("harbour",),
    "Fire": ("history",),
    "Rebuilding": ("history",),
    "Events": ("trade", "history"),
}


def _place_slots(w: World, town: Town) -> dict[str, str]:
    rng = random.Random(f"{w.seed}:place:{town.name}")
    return {
        "place": town.name,
        "place_island": town.island.name,
        "place_good": town.good,
        "year_account": str(town.founded + rng.randint(0, 30)),
        "year_map": str(rng.randint(max(town.founded + 20, 1550), 1850)),
        "year_choir": str(rng.randint(1850, 1990)),
        "month_c": rng.choice(_MONTHS[5:9]),
        "sea": w.sea,
        "archipelago": w.arch,
    }


def _town_named(w: World, name: str) -> Town | None:
    return next((t for t in w.towns if t.name == name), None)


def _pron(female: bool) -> dict[str, str]:
    pron, poss, obj = ("she", "her", "her") if female else ("he", "his", "him")
    return {"pron": pron, "Pron": pron.capitalize(), "poss": poss, "Poss": poss.capitalize(), "pron_obj": obj}


def _ft(m: float) -> str:
    return _fmt_int(round(m * 3.28084))


def _mi(km: float) -> str:
    return f"{km * 0.621371:.1f}"


def _town_slots(w: World, t: Town, rng: random.Random) -> dict[str, str]:
    isl = t.island
    capital = isl.towns[0]
    f = t.founder
    assert f is not None
    partner = rng.choice([x for x in w.towns if x is not t])
    s = {
        "town": t.name,
        "island": isl.name,
        "island_desc": isl.desc,
        "archipelago": w.arch,
        "sea": w.sea,
        "kind": t.kind,
        "shore": t.shore,
        "harbour_kind": t.harbour_kind,
        "year": str(t.founded),
        "founder": f.name,
        "founder_family": f.family,
        "founder_role": t.founder_role,
        "founder_home": f.home,
        "founder_pron_obj": _pron(f.female)["pron_obj"],
        "pop": _fmt_int(t.pop),
        "census": "2011",
        "nickname": t.nickname,
        "nickname_reason": t.nickname_reason,
        "good": t.good,
        "good2": t.good2,
        "good_desc": w.goods[t.good],
        "settlers": str(t.settlers),
        "charter_year": str(t.charter_year),
        "quay_year": str(t.quay_year),
        "early_year": "1801",
        "pop_early": _fmt_int(max(120, t.pop // rng.randint(3, 9))),
        "landmark": t.landmark,
        "landmark_year": str(t.landmark_year),
        "wind": rng.choice(["northerly", "westerly", "easterly", "south-westerly"]),
        "peak": isl.peak,
        "peak_m": _fmt_int(isl.peak_m),
        "peak_ft": _ft(isl.peak_m),
        "climate": isl.climate,
        "coast": isl.coast,
        "rain": _fmt_int(rng.randint(700, 2400)),
        "storm_month": rng.choice(_MONTHS[9:] + _MONTHS[:3]),
        "partner": partner.name,
        "partner_good": partner.good if partner.good != t.good else partner.good2,
        "pct": str(rng.randint(12, 60)),
        "market_day": t.market_day,
        "fleet": str(t.fleet),
        "fleet_year": str(t.fleet_year),
        "newspaper": t.newspaper,
        "paper_year": str(t.paper_year),
        "school": t.school,
        "school_year": str(t.school_year),
    }
    if t is capital:
        s["capital_self"] = "yes"
    else:
        km = rng.randint(4, 60)
        s.update(capital=capital.name, dist_km=str(km), dist_mi=_mi(km))
    if t.river is not None:
        s["river"] = t.river.name
    if t.guild is not None:
        s.update(guild=t.guild.name, guild_good=t.guild.good, guild_year=str(t.guild.founded))
    if t.festival is not None:
        s.update(
            festival=t.festival.name,
            festival_month=t.festival.month,
            festival_honour=t.festival.honour,
            festival_custom=t.festival.custom,
        )
    if t.events:
        ev = rng.choice(t.events)
        s.update(event=ev.name, event_year=str(ev.year))
    if t.notables:
        n = rng.choice(t.notables)
        s.update(notable=n.name, notable_role=n.title, notable_born=str(n.born))
    if t.twin is not None:
        s.update(twin=t.twin.name, twin_kind=t.twin.kind, twin_island=t.twin.island.name)
    return s


def _town_sections(s: Mapping[str, str]) -> dict[str, list[Group]]:
    sections = dict(TOWN_SECTIONS)
    if "capital_self" not in s:
        # Only a capital may say it is the chief town; drop that template for the others.
        sections["lead"] = [
            (p, tuple(t for t in ts if "chief town of {island} and the seat" not in t))
            for p, ts in TOWN_SECTIONS["lead"]
        ]
    return sections


def _person_slots(w: World, p: Person, rng: random.Random) -> tuple[dict[str, str], list[str]]:
    s = {
        "name": p.name,
        "given": p.given,
        "family": p.family,
        "born": str(p.born),
        "died": str(p.died),
        "home": p.home,
        "home_island": p.home_island,
        "role": p.title,
        "adj": w.adj,
        "archipelago": w.arch,
        "sea": w.sea,
        "age": str(p.died - p.born),
        "death_place": p.death_place,
        "father": p.father,
        "parent_job": p.parent_job,
        "birth_order": rng.choice(["eldest", "second", "third", "youngest", "only"]),
        "age_sea": str(rng.randint(11, 17)),
        "move_town": rng.choice(w.towns).name,
        "good": rng.choice(list(w.goods)),
        "years_governed": str(rng.randint(4, 30)),
        "wind": rng.choice(["northerly", "westerly", "easterly"]),
        "year_diary": str(p.died + rng.randint(5, 150)),
    }
    s.update(_pron(p.female))
    body: list[str] = ["Early life"]
    if "town" in p.deeds:
        town = next(t for t in w.towns if t.name == p.deeds["town"])
        s.update(
            deed_town=town.name,
            deed_year=str(town.founded),
            deed_island=town.island.name,
            settlers=str(town.settlers),
            harbour_kind=town.harbour_kind,
            shore=town.shore,
            known_for=f"founding {town.name} in {town.founded}",
        )
        if town.festival is not None and "founding" in town.festival.honour:
            s["legacy_festival"] = town.festival.name
        body.append("Founding of {deed_town}")
    if "guild" in p.deeds:
        g = next(g for g in w.guilds if g.name == p.deeds["guild"])
        s.update(
            deed_guild=g.name,
            deed_town=g.seat.name,
            deed_year=str(g.founded),
            guild_good=g.good,
            motto=g.motto,
            known_for=f"founding the {g.name}",
        )
        body.append("Guild")
    if "ship" in p.deeds or "built" in p.deeds:
        ship = next(x for x in w.ships if x.name == p.deeds.get("ship", p.deeds.get("built")))
        s.update(
            deed_ship=ship.name,
            ship_kind=ship.kind,
            ship_yard=ship.yard.name,
            ship_launched=str(ship.launched),
            ship_tons=str(ship.tons),
            ship_home=ship.home.name,
            ship_partner=ship.partner.name,
            voyages=str(rng.randint(12, 140)),
            partner_good=ship.partner.good,
            ship_timber=ship.timber,
            deed_town=ship.yard.name if "built" in p.deeds else ship.home.name,
            deed_island=ship.home.island.name,
            storm_year=str(min(p.died - 1, ship.launched + rng.randint(2, 12))),
        )
        if "ship" in p.deeds:
            s["known_for"] = f"commanding the {ship.name}"
            body.append("Career at sea")
        else:
            s["known_for"] = f"building the {ship.name}"
            body.append("Shipbuilding")
    if "work" in p.deeds:
        s.update(
            work=p.deeds["work"],
            work_year=p.deeds["work_year"],
            subject_island=p.deeds["subject_island"],
            survey_years=str(rng.randint(2, 15)),
            known_for=p.deeds["work"],
        )
        body.append("Works")
    body += ["Later life", "Legacy"]
    return s, body


def _ship_slots(w: World, sh: Ship, rng: random.Random) -> dict[str, str]:
    s = {
        "ship": sh.name,
        "ship_kind": sh.kind,
        "ship_yard": sh.yard.name,
        "ship_launched": str(sh.launched),
        "masts": sh.masts,
        "captain": sh.captain.name,
        "builder": sh.builder.name,
        "ship_home": sh.home.name,
        "ship_partner": sh.partner.name,
        "ship_timber": sh.timber,
        "ship_length": f"{sh.length:.1f}",
        "ship_length_ft": _ft(sh.length),
        "ship_tons": str(sh.tons),
        "crew": str(sh.crew),
        "cargo": _fmt_int(sh.tons * rng.randint(3, 6)),
        "good": sh.home.good,
        "partner_good": sh.partner.good,
        "years": str(rng.randint(3, 25)),
        "voyages": str(rng.randint(2, 9)),
        "sea": w.sea,
        "archipelago": w.arch,
        "keel_year": str(sh.launched - 1),
    }
    fate = {
        "wrecked": (
            f"wrecked off {sh.fate_place} in {sh.fate_year}",
            f"She was wrecked on the rocks off {sh.fate_place} in {sh.fate_year}; her crew reached the shore in the boats.",
        ),
        "broken up": (
            f"broken up at {sh.fate_place} in {sh.fate_year}",
            f"She was broken up at {sh.fate_place} in {sh.fate_year}, and her timbers were used in a barn.",
        ),
        "preserved": (
            f"preserved as a museum ship at {sh.fate_place}",
            f"She was retired in {sh.fate_year} and is preserved as a museum ship at {sh.fate_place}.",
        ),
        "sold": (
            f"sold to mainland owners in {sh.fate_year}",
            f"She was sold to owners on the mainland in {sh.fate_year}, and her later history is unknown.",
        ),
        "lost": (
            f"lost in the {sh.event.name if sh.event else ''} of {sh.fate_year}",
            f"She was lost with all hands in the {sh.event.name if sh.event else ''} of {sh.fate_year}.",
        ),
    }[sh.fate]
    s["fate_lead"], s["fate_sentence"] = fate
    if sh.event is not None:
        s.update(event=sh.event.name, event_year=str(sh.event.year))
    return s


def _guild_slots(w: World, g: Guild, rng: random.Random) -> dict[str, str]:
    s = {
        "guild": g.name,
        "craft_lower": g.craft.lower(),
        "seat": g.seat.name,
        "island": g.seat.island.name,
        "archipelago": w.arch,
        "guild_year": str(g.founded),
        "guild_founder": g.founder.name,
        "guild_good": g.good,
        "members": _fmt_int(g.members),
        "member_year": str(g.member_year),
        "motto": g.motto,
        "motto_meaning": g.motto_meaning,
        "master": g.master,
        "term": str(g.term),
        "apprentice_years": str(g.apprentice_years),
        "hall_year": str(g.hall_year),
        "founder_trade": g.founder_trade,
        "email": g.email,
        "phone": g.phone,
    }
    if g.seat.events:
        ev = g.seat.events[0]
        s.update(event=ev.name, event_year=str(ev.year))
    return s


def _river_slots(w: World, r: River, rng: random.Random) -> dict[str, str]:
    rank = sorted(r.island.rivers, key=lambda x: -x.length).index(r)
    return {
        "river": r.name,
        "island": r.island.name,
        "archipelago": w.arch,
        "length": f"{r.length:.1f}",
        "length_mi": _mi(r.length),
        "source": r.source,
        "source_m": _fmt_int(r.source_m),
        "mouth": r.mouth.name,
        "trib1": r.tributaries[0],
        "trib2": r.tributaries[1],
        "direction": r.direction,
        "navigable": str(min(r.navigable, int(r.length))),
        "mill_year": str(r.mill_year),
        "bridge_year": str(r.bridge_year),
        "good": r.mouth.good,
        "flood_year": str(rng.randint(1700, 1990)),
        "river_rank": ("longest", "second-longest", "third-longest")[min(rank, 2)],
    }


def _island_slots(w: World, isl: Island, rng: random.Random) -> dict[str, str]:
    cap = isl.towns[0]
    assert cap.founder is not None
    s = {
        "island": isl.name,
        "island_desc": isl.desc,
        "sea": w.sea,
        "archipelago": w.arch,
        "area": f"{isl.area:.1f}",
        "area_mi": f"{isl.area * 0.386102:.1f}",
        "island_pop": _fmt_int(sum(t.pop for t in isl.towns)),
        "census": "2011",
        "capital": cap.name,
        "capital_founder": cap.founder.name,
        "capital_year": str(cap.founded),
        "capital_shore": cap.shore,
        "peak": isl.peak,
        "peak_m": _fmt_int(isl.peak_m),
        "peak_ft": _ft(isl.peak_m),
        "coast": isl.coast,
        "climate": isl.climate,
        "settled": str(isl.settled),
        "n_towns": str(len(isl.towns)),
        "good": cap.good,
        "good2": cap.good2,
        "good_desc": w.goods[cap.good],
        "partner": rng.choice([t for t in w.towns if t.island is not isl]).name,
    }
    if len(isl.towns) >= 3:
        t2, t3 = isl.towns[1], isl.towns[2]
        s.update(
            town2=t2.name,
            town2_year=str(t2.founded),
            town2_pop=_fmt_int(t2.pop),
            town3=t3.name,
            town3_year=str(t3.founded),
            town3_nickname=t3.nickname,
        )
    if isl.rivers:
        s.update(river=isl.rivers[0].name, river_mouth=isl.rivers[0].mouth.name)
    events = [e for t in isl.towns for e in t.events]
    if events:
        s.update(event=events[0].name, event_year=str(events[0].year))
    return s


def _festival_slots(w: World, f: Festival, rng: random.Random) -> dict[str, str]:
    return {
        "festival": f.name,
        "town": f.town.name,
        "island": f.town.island.name,
        "festival_month": f.month,
        "festival_honour": f.honour,
        "first_year": str(f.first_year),
        "festival_custom": f.custom,
        "festival_custom2": f.custom2,
        "visitors": _fmt_int(f.visitors),
        "good": f.town.good,
        "newspaper": f.town.newspaper,
        "archipelago": w.arch,
    }


def _event_slots(w: World, e: Event, rng: random.Random) -> dict[str, str]:
    s = {
        "event": e.name,
        "event_year": str(e.year),
        "event_month": e.month,
        "town": e.town.name,
        "island": e.town.island.name,
        "archipelago": w.arch,
        "sea": w.sea,
        "count": _fmt_int(e.count),
        "days": str(e.days),
        "days_short": str(max(2, e.days // 20)),
        "good": e.good,
        "landmark": e.town.landmark,
        "day_of_month": str(rng.randint(1, 28)),
    }
    if e.leader is not None:
        s["leader"] = e.leader.name
    if e.opponent is not None:
        s["opponent"] = e.opponent.name
    if e.ship is not None:
        s.update(lost_ship=e.ship.name, lost_captain=e.ship.captain.name)
    return s


@dataclass
class Article:
    title: str
    etype: str
    slots: dict[str, str]
    sections: list[tuple[int, str, list[list[Sentence]]]]  # (level, heading, paragraphs); level 0 = lead

    def paragraphs(self) -> list[list[Sentence]]:
        return [p for _, _, ps in self.sections for p in ps]


def _compose(rng: random.Random, groups: Sequence[Group], slots: Mapping[str, str]) -> list[Sentence]:
    out = []
    for prob, templates in groups:
        usable = [t for t in templates if _fields(t) <= slots.keys()]
        if usable and rng.random() < prob:
            out.append(_render(rng.choice(usable), slots))
    return out


def _split_paragraphs(rng: random.Random, sentences: list[Sentence]) -> list[list[Sentence]]:
    paras: list[list[Sentence]] = []
    i = 0
    while i < len(sentences):
        k = rng.randint(3, 6)
        paras.append(sentences[i : i + k])
        i += k
    if len(paras) > 1 and len(paras[-1]) < 2:
        paras[-2].extend(paras.pop())
    return paras


def _entity_plan(
    w: World, etype: str, entity: Any, rng: random.Random
) -> tuple[str, dict[str, str], list[tuple[int, str, list[Group]]]]:
    """The title, slots and (level, heading, groups) outline of one entity's article.

    Slot values are facts, so they come from a generator keyed by the entity alone: every article and
    every QA context that mentions the entity states the same wind, distance or birth order. ``rng``
    only picks wordings.
    """
    rng = random.Random(f"{w.seed}:fact:{etype}:{entity.name}")
    if etype == "town":
        s = _town_slots(w, entity, rng)
        secs = _town_sections(s)
        outline = [
            (0, "", secs["lead"]),
            (1, "History", secs["History"]),
            (1, "Geography", secs["Geography"]),
            (1, "Economy", secs["Economy"]),
            (1, "Culture", secs["Culture"]),
        ]
        return entity.name, s, outline
    if etype == "person":
        s, body = _person_slots(w, entity, rng)
        outline = [(0, "", PERSON_SECTIONS["lead"])]
        outline += [(1, h.format(**s), PERSON_SECTIONS[h]) for h in body]
        return entity.name, s, outline
    if etype == "ship":
        s = _ship_slots(w, entity, rng)
        return (
            entity.name,
            s,
            [(0, "", SHIP_SECTIONS["lead"])]
            + [(1, h, SHIP_SECTIONS[h]) for h in ("Construction", "Service history", "Fate")],
        )
    if etype == "guild":
        s = _guild_slots(w, entity, rng)
        return (
            entity.name,
            s,
            [(0, "", GUILD_SECTIONS["lead"])]
            + [(1, h, GUILD_SECTIONS[h]) for h in ("History", "Organisation", "Guild hall")],
        )
    if etype == "river":
        s = _river_slots(w, entity, rng)
        return (
            entity.name,
            s,
            [(0, "", RIVER_SECTIONS["lead"])] + [(1, h, RIVER_SECTIONS[h]) for h in ("Course", "History")],
        )
    if etype == "island":
        s = _island_slots(w, entity, rng)
        return (
            entity.name,
            s,
            [(0, "", ISLAND_SECTIONS["lead"])]
            + [(1, h, ISLAND_SECTIONS[h]) for h in ("Geography", "History", "Settlements", "Economy")],
        )
    if etype == "festival":
        s = _festival_slots(w, entity, rng)
        return (
            entity.name,
            s,
            [(0, "", FESTIVAL_SECTIONS["lead"])]
            + [(1, h, FESTIVAL_SECTIONS[h]) for h in ("Origins", "Customs", "Modern festival")],
        )
    s = _event_slots(w, entity, rng)
    secs = EVENT_SECTIONS[entity.kind]
    return entity.name, s, [(0 if h == "lead" else 1, "" if h == "lead" else h, g) for h, g in secs.items()]


def _home_town(w: World, etype: str, entity: Any) -> Town:
    """The town an article is "about" for the colour sentences."""
    if etype == "town":
        return entity
    if etype == "person":
        for key in ("town", "guild"):
            if key in entity.deeds:
                name = entity.deeds[key]
                return _town_named(w, name) or next(g.seat for g in w.guilds if g.name == name)
        return _town_named(w, entity.home) or _town_named(w, entity.death_place) or w.towns[0]
    if etype == "ship":
        return entity.home
    if etype == "guild":
        return entity.seat
    if etype == "river":
        return entity.mouth
    if etype == "island":
        return entity.towns[0]
    return entity.town  # festival, event


def _build_article(w: World, etype: str, entity: Any, rng: random.Random) -> Article:
    title, slots, outline = _entity_plan(w, etype, entity, rng)
    slots = {**_place_slots(w, _home_town(w, etype, entity)), **slots}
    sections: list[tuple[int, str, list[list[Sentence]]]] = []
    used: set[str] = set()  # membership only; a sentence is said once per article
    for level, heading, groups in outline:
        # Two passes over the groups give sections of encyclopedic length; the second pass rewords facts
        # rather than repeating the first sentence verbatim, as real articles restate key facts.
        sentences = [x for x in _compose(rng, groups, slots) if x.text not in used]
        used.update(x.text for x in sentences)
        extra = [x for x in _compose(rng, groups[1:], slots) if x.text not in used]
        sentences += extra[: rng.randint(0, (len(extra) + 1) // 2)]
        used.update(x.text for x in sentences)
        if not sentences:
            continue
        pool = [
            t
            for theme in _THEMES.get(_section_key(heading), ("history",))
            for t in COLOR[theme]
            if _fields(t) <= slots.keys() and _render(t, slots).text not in used
        ]
        for t in rng.sample(pool, k=min(len(pool), rng.randint(2, 5))) if level else []:
            colour = _render(t, slots)
            used.add(colour.text)
            sentences.insert(rng.randint(1, len(sentences)), colour)
        paras = _split_paragraphs(rng, sentences) if level else [sentences]
        # Long sections get a subsection, as wikitext does (" = = = Subsection = = = ").
        if level == 1 and len(paras) >= 2 and rng.random() < 0.3:
            sections.append((1, heading, paras[:1]))
            sections.append((2, _SUBHEADINGS[_section_key(heading)], paras[1:]))
        else:
            sections.append((level, heading, paras))
    return Article(title=title, etype=etype, slots=slots, sections=sections)


def _section_key(heading: str) -> str:
    return "Founding" if heading.startswith("Founding of") else heading


_SUBHEADINGS = {
    "History": "Later history",
    "Economy": "Trade",
    "Culture": "Town life",
    "Geography": "Climate",
    "Career at sea": "Voyages",
    "Works": "Reception",
    "Service history": "Later service",
    "Organisation": "Apprenticeship",
    "Course": "Tributaries",
    "Customs": "Food and music",
    "Settlements": "Towns",
    "Early life": "Education",
    "Founding": "First years",
    "Later life": "Death",
    "Legacy": "Memorials",
    "Guild": "Rules",
    "Shipbuilding": "Methods",
    "Construction": "Design",
    "Fate": "Remains",
    "Guild hall": "The building",
    "Origins": "Early festivals",
    "Modern festival": "Visitors",
    "Background": "Causes",
    "Aftermath": "Consequences",
    "Damage": "Losses",
    "Terms": "Signatories",
    "Battle": "Ships",
    "Fire": "Spread",
    "Rebuilding": "New town",
    "Events": "The crowds",
}


def _all_entities(w: World) -> list[tuple[str, Any]]:
    return (
        [("town", t) for t in w.towns]
        + [("person", p) for p in w.people]
        + [("ship", s) for s in w.ships]
        + [("guild", g) for g in w.guilds]
        + [("river", r) for r in w.rivers]
        + [("island", i) for i in w.islands]
        + [("festival", f) for f in w.festivals]
        + [("event", e) for e in w.events]
    )


# --------------------------------------------------------------------------------------------------
# Wikitext rows
# --------------------------------------------------------------------------------------------------


def _paragraph_text(sentences: Sequence[Sentence]) -> str:
    return " ".join(s.text for s in sentences)


def _article_rows(title: str, sections: Sequence[tuple[int, str, Sequence[str]]]) -> list[str]:
    """wikitext-2-raw rows: a blank row before and after every heading, paragraphs as ' text \\n'."""
    rows = ["", f" = {wikitextify(title)} = \n", ""]
    for level, heading, paras in sections:
        if level:
            marks = " ".join(["="] * (level + 1))
            rows += ["", f" {marks} {wikitextify(heading)} {marks} \n", ""]
        rows += [f" {wikitextify(p)} \n" for p in paras]
    return rows


def _near_duplicate(rng: random.Random, paras: list[str]) -> list[str]:
    """A lightly edited copy, as when a scraped page was saved before and after a small revision."""
    out = list(paras)
    i = rng.randrange(len(out))
    sentences = re.split(r"(?<=\.) ", out[i])
    if len(sentences) > 1:
        del sentences[rng.randrange(len(sentences))]
    # A corrected date in the same paragraph: the copies differ in content, not only in length.
    out[i] = re.sub(r"\b(\d{4})\b", lambda m: str(int(m.group(1)) + 1), " ".join(sentences), count=1)
    return out


@dataclass
class _Plan:
    """One article as plain paragraphs (with PII markers), ready to be tokenised into rows."""

    title: str
    etype: str
    sections: list[tuple[int, str, list[str]]]

    def chars(self) -> int:
        return sum(len(p) for _, _, ps in self.sections for p in ps) + len(self.title)


def _split_articles(plans: list[_Plan]) -> dict[str, list[_Plan]]:
    """Held-out splits take whole articles until they reach their size; the rest is training text.

    Islands stay in train: each is the hub that many other articles point to.
    """
    split_plans: dict[str, list[_Plan]] = {"validation": [], "test": [], "train": []}
    sizes = {"validation": 0, "test": 0}
    targets = {"validation": VALIDATION_CHARS, "test": TEST_CHARS}
    for plan in plans:
        for split in ("validation", "test"):
            if sizes[split] < targets[split] and plan.etype != "island":
                split_plans[split].append(plan)
                sizes[split] += plan.chars()
                break
        else:
            split_plans["train"].append(plan)
    return split_plans


def _plant(
    w: World, split: str, plans: list[_Plan], seed: int, pii_log: list[dict[str, str]], neg_log: list[dict[str, str]]
) -> None:
    """Append a PII sentence to ~2.5 % of paragraphs and a hard-negative sentence to ~4 %, logging both."""
    rng = random.Random(f"{seed}:plant:{split}")
    for plan in plans:
        for _, _, paras in plan.sections:
            for pi, para in enumerate(paras):
                roll = rng.random()
                if roll < PII_PARAGRAPH_SHARE:
                    tmpl = rng.choice(_PII_TEMPLATES)
                    person = f"{rng.choice(w.people).given} {rng.choice(w.people).family}"
                    values = {
                        "email": _email(rng, person if "{person}" in tmpl or rng.random() < 0.5 else None),
                        "phone": _phone(rng),
                        "card": _card(rng),
                        "ip": _ipv4(rng),
                    }
                    slots = {k: _PII_OPEN + v + _PII_CLOSE for k, v in values.items()}
                    slots.update(subject=plan.title, person=person)
                    paras[pi] = para + " " + _render(tmpl, slots).text
                    pii_log += [
                        {"split": split, "title": plan.title, "kind": k, "value": v}
                        for k, v in values.items()
                        if k in _fields(tmpl)
                    ]
                elif roll < PII_PARAGRAPH_SHARE + HARD_NEGATIVE_SHARE:
                    tmpl = rng.choice(_HARD_NEGATIVE_TEMPLATES)
                    slots = {**_hard_negative_slots(rng), "subject": plan.title}
                    paras[pi] = para + " " + _render(tmpl, slots).text
                    neg_log += [
                        {"split": split, "kind": _NEGATIVE_KINDS[k], "value": wikitextify(slots[k])}
                        for k in _NEGATIVE_KINDS
                        if k in _fields(tmpl)
                    ]


def _add_duplicates(train: list[_Plan], seed: int) -> dict[str, list[str]]:
    """Scraped corpora repeat themselves: exact copies of articles and paragraphs, and lightly edited copies."""
    rng = random.Random(f"{seed}:duplicates")
    log: dict[str, list[str]] = {"exact_articles": [], "near_articles": [], "exact_paragraphs": []}
    for plan in rng.sample(train, k=3):
        copy = _Plan(plan.title, plan.etype, [(lvl, h, list(ps)) for lvl, h, ps in plan.sections])
        train.insert(rng.randrange(len(train)), copy)
        log["exact_articles"].append(plan.title)
    for plan in rng.sample([p for p in train if p.title not in log["exact_articles"] and p.chars() > 2500], k=4):
        # One small edit in one section, as between two saved revisions of a page: a dedup stage that
        # compares shingles should see these as near-duplicates (word 5-gram Jaccard around 0.9).
        sections = [(lvl, h, list(ps)) for lvl, h, ps in plan.sections]
        k = rng.randrange(len(sections))
        lvl, h, ps = sections[k]
        sections[k] = (lvl, h, _near_duplicate(rng, ps))
        train.insert(rng.randrange(len(train)), _Plan(plan.title, plan.etype, sections))
        log["near_articles"].append(plan.title)
    for _ in range(6):
        src, dst = rng.sample(train, k=2)
        para = rng.choice([p for _, _, ps in src.sections for p in ps])
        lvl, h, ps = dst.sections[-1]
        dst.sections[-1] = (lvl, h, ps + [para])
        log["exact_paragraphs"].append(wikitextify(para))
    return log


def _add_odd_unicode(rows: list[str], seed: int) -> list[str]:
    """Odd Unicode of the kind copy-pasted web text carries, in two paragraph rows: full-width digits,
    a no-break space, a zero-width space inside a word and a control character."""
    rng = random.Random(f"{seed}:unicode")
    candidates = [
        i
        for i, r in enumerate(rows)
        if r.startswith(" ")
        and not r.startswith(" =")
        and re.search(r" \d{4} ", r)
        and re.search(r" [A-Z][a-z]{5,} ", r)
    ]
    changed = []
    for n, i in enumerate(rng.sample(candidates, k=2)):
        row = rows[i]
        year = re.search(r" (\d{4}) ", row).group(1)  # type: ignore[union-attr]
        row = row.replace(f" {year} ", " " + "".join(chr(ord(c) - ord("0") + 0xFF10) for c in year) + " ", 1)
        row = row.replace(" , ", " ,\u00a0", 1)
        k = re.search(r" [A-Z][a-z]{5,} ", row).start() + 4  # type: ignore[union-attr]
        row = row[:k] + "\u200b" + row[k:]
        row = row.replace(" . ", " . \x07" if n == 0 else " .\x0c ", 1)
        rows[i] = row
        changed.append(row)
    return changed


def _wikitext_splits(
    w: World, seed: int, manifest: dict[str, Any], registers: Sequence[_Plan] = ()
) -> dict[str, list[str]]:
    rng = random.Random(f"{seed}:wikitext")
    entities = _all_entities(w)
    rng.shuffle(entities)
    plans = []
    for etype, entity in entities:
        art = _build_article(w, etype, entity, rng)
        plans.append(
            _Plan(art.title, etype, [(lvl, h, [_paragraph_text(p) for p in ps]) for lvl, h, ps in art.sections])
        )
    split_plans = _split_articles(plans)
    pii_log: list[dict[str, str]] = []
    neg_log: list[dict[str, str]] = []
    for split, sp in split_plans.items():
        _plant(w, split, sp, seed, pii_log, neg_log)
    dup_log = _add_duplicates(split_plans["train"], seed)
    # The registers go in after PII and duplicates are planted (their entries carry neither), spread evenly
    # over the training articles so that the wordings of one fact land far apart.
    train = split_plans["train"]
    step = len(train) // (len(registers) + 1) if registers else 0
    for k, plan in reversed(list(enumerate(registers, start=1))):
        train.insert(k * step, plan)
    out = {
        split: [row for plan in sp for row in _article_rows(plan.title, plan.sections)]
        for split, sp in split_plans.items()
    }
    manifest["pii"] = pii_log
    manifest["hard_negatives"] = neg_log
    manifest["duplicates"] = dup_log
    manifest["odd_unicode_rows"] = _add_odd_unicode(out["train"], seed)
    manifest["wikitext_titles"] = {s: list(dict.fromkeys(p.title for p in sp)) for s, sp in split_plans.items()}
    return out


# --------------------------------------------------------------------------------------------------
# Knowledge probe: harbour pilots whose facts the corpus restates in six wordings
# --------------------------------------------------------------------------------------------------
# Facts are learned from a corpus when they are restated in several wordings spread over the text
# (Allen-Zhu & Li, "Physics of Language Models: Part 3.1", arXiv:2309.14316: one biography per person
# left ~10 % of facts extractable by question answering on other people, five permuted rewordings ~96 %).
# So each pilot has one paragraph in each of six register articles, every fact in a different wording
# each time, sentence order shuffled, the registers spread over the training corpus. Half of the pilots
# ("train") give closed-book questions a task adapter learns the form from; the other half ("probe") are
# only asked at test time. No SQuAD, summary or chat row mentions a pilot.
N_PILOTS = 60
N_REGISTER_PARTS = 6
_PILOT_FACTS: dict[str, tuple[str, ...]] = {
    "born": (
        "{name} was born in {born}.",
        "{name} was born in the year {born}.",
        "The birth of {name} is recorded in {born}.",
        "{name} came into the world in {born}.",
        "The year {born} saw the birth of {name}.",
        "Parish records give {born} as the year {name} was born.",
    ),
    "birthplace": (
        "{name} was a native of {birthplace}.",
        "The home town of {name} was {birthplace}.",
        "{birthplace} was the birthplace of {name}.",
        "{name} came from {birthplace}.",
        "{name} was raised in {birthplace}, where the family kept a house.",
        "The town of {birthplace} is where {name} grew up.",
    ),
    "harbour": (
        "{name} served as harbour pilot at {harbour}.",
        "{name} guided ships into the harbour of {harbour}.",
        "The harbour of {harbour} employed {name} as its pilot.",
        "As pilot of {harbour}, {name} brought vessels safely past the shoals.",
        "{name} spent a working life piloting ships at {harbour}.",
        "At {harbour}, {name} held the office of harbour pilot.",
    ),
    "ship": (
        "The first ship {name} piloted was the {ship}.",
        "{name} first piloted the {ship}.",
        "The {ship} was the first vessel that {name} brought into harbour.",
        "{name} began as a pilot aboard the {ship}.",
        "Aboard the {ship}, {name} made a first passage as pilot.",
        "The earliest vessel guided by {name} was the {ship}.",
    ),
}
_PILOT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "born": ("In what year was {name} born?", "When was the harbour pilot {name} born?"),
    "birthplace": ("In which town was {name} born?", "What was the home town of {name}?"),
    "harbour": ("At which harbour did {name} serve as pilot?", "Where did {name} work as a harbour pilot?"),
    "ship": ("What was the first ship {name} piloted?", "Which vessel did {name} first pilot?"),
}
_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII")


@dataclass(frozen=True)
class Pilot:
    name: str
    facts: Mapping[str, str]
    split: str  # "train" (closed-book SFT questions) or "probe" (asked only at test time)


def build_pilots(w: World, seed: int) -> list[Pilot]:
    """The pilots, named by a namer that knows every word the world invented, so no name collides."""
    rng = random.Random(f"{seed}:pilots")
    namer = _Namer(rng)
    namer.used.update(x.lower() for x in w.invented)
    pilots = []
    for i in range(N_PILOTS):
        given = namer.name((2, 2), suffix=("", "a", "en", "o", "is"), min_len=4)
        family = namer.name((2, 2), suffix=("", "en", "ard", "ow", "ick", "ane"))
        birthplace, harbour = rng.sample([t.name for t in w.towns], k=2)
        facts = {
            "born": str(rng.randint(1480, 1680)),
            "birthplace": birthplace,
            "harbour": harbour,
            "ship": rng.choice(w.ships).name,
        }
        pilots.append(Pilot(f"{given} {family}", facts, "train" if i % 2 == 0 else "probe"))
    return pilots


def _register_plans(w: World, pilots: Sequence[Pilot], seed: int) -> list[_Plan]:
    """Six register articles, each one paragraph per pilot; pilot i's fact f takes wording (part + offset) mod 6."""
    rng = random.Random(f"{seed}:registers")
    offsets = {(p.name, f): rng.randrange(N_REGISTER_PARTS) for p in pilots for f in _PILOT_FACTS}
    plans = []
    for part in range(N_REGISTER_PARTS):
        order = list(pilots)
        rng.shuffle(order)
        paras = []
        for p in order:
            slots = {"name": p.name, **p.facts}
            sentences = [
                _render(wordings[(part + offsets[p.name, f]) % N_REGISTER_PARTS], slots).text
                for f, wordings in _PILOT_FACTS.items()
            ]
            rng.shuffle(sentences)
            paras.append(" ".join(sentences))
        title = f"Register of harbour pilots of the {w.arch} ({_ROMAN[part]})"
        lead = (
            f"This register lists the harbour pilots of the {w.arch} as the harbour masters recorded them, "
            "one entry to a pilot."
        )
        plans.append(_Plan(title, "register", [(0, "", [lead]), (1, "Entries", paras)]))
    return plans


def _probe_rows(pilots: Sequence[Pilot], seed: int) -> list[dict[str, Any]]:
    """Closed-book questions: every wording for training pilots, one wording per fact for probe pilots."""
    rng = random.Random(f"{seed}:probe-questions")
    rows = []
    for p in pilots:
        for f, wordings in _PILOT_QUESTIONS.items():
            chosen = wordings if p.split == "train" else (rng.choice(wordings),)
            for q in chosen:
                rows.append(
                    {
                        "entity": p.name,
                        "fact": f,
                        "question": q.format(name=p.name),
                        "answers": [p.facts[f]],
                        "split": p.split,
                    }
                )
    return rows


# --------------------------------------------------------------------------------------------------
# SQuAD
# --------------------------------------------------------------------------------------------------

# Questions per (entity type, answer field). A question may name only fields its context sentence
# contains, plus the entity's own name fields, so every question is answerable from its context.
QUESTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("town", "year"): (
        "When was {town} founded?",
        "In what year was {town} founded?",
        "In which year did {founder} found {town}?",
    ),
    ("town", "founder"): (
        "Who founded {town}?",
        "Who established the settlement at {town}?",
        "Which {founder_role} founded {town}?",
    ),
    ("town", "island"): ("On which island is {town}?", "Where is {town} located?", "{town} lies on which island?"),
    ("town", "pop"): (
        "How many people lived in {town} at the {census} census?",
        "What was the population of {town} in {census}?",
    ),
    ("town", "river"): ("Which river flows through {town}?", "On what river does {town} lie?"),
    ("town", "good"): ("What has the economy of {town} depended on?", "What did ships from {town} carry to {partner}?"),
    ("town", "partner_good"): (
        "What did ships from {town} bring back from {partner}?",
        "What did {partner} send to {town}?",
    ),
    ("town", "partner"): ("Which town traded {partner_good} with {town}?",),
    ("town", "guild"): ("Which guild has its seat in {town}?", "What guild is based in {town}?"),
    ("town", "festival_month"): (
        "In which month is the {festival} held?",
        "When does {town} celebrate the {festival}?",
    ),
    ("town", "nickname"): ("What is {town} known as locally?", "What do islanders call {town}?"),
    ("town", "landmark_year"): (
        "When was the {landmark} in {town} completed?",
        "In what year was the {landmark} built?",
    ),
    ("town", "charter_year"): ("When did {town} receive its charter?", "In what year was {town} granted a charter?"),
    ("town", "quay_year"): ("When was the stone quay at {town} built?",),
    ("town", "twin"): ("Which town is {town} twinned with?",),
    ("town", "paper_year"): ("Since when has the {newspaper} been published?",),
    ("town", "school_year"): ("When was the {school} founded?",),
    ("town", "fleet"): ("How many boats were in the fishing fleet of {town} in {fleet_year}?",),
    ("town", "settlers"): (
        "How many families did {founder} bring to {town}?",
        "How many families came with {founder}?",
    ),
    ("town", "notable"): ("Which {notable_role} was born in {town} in {notable_born}?",),
    ("town", "market_day"): ("On which day is the weekly market held in {town}?",),
    ("town", "peak_m"): ("How high is {peak}?", "What is the height of {peak}?"),
    ("town", "dist_km"): ("How many kilometres is {town} from {capital}?",),
    ("person", "born"): ("When was {name} born?", "In what year was {family} born?"),
    ("person", "died"): ("When did {name} die?", "In what year did {family} die?"),
    ("person", "home"): ("Where was {name} born?", "What was {family}'s home town?"),
    ("person", "death_place"): ("Where did {family} die?",),
    ("person", "parent_job"): ("What did {family}'s father do for a living?", "What was the occupation of {father}?"),
    ("person", "father"): ("Who was {name}'s father?",),
    ("person", "deed_town"): ("Which town did {family} found?", "What settlement did {name} establish?"),
    ("person", "deed_year"): ("When did {family} found {deed_town}?", "In what year was the {deed_guild} founded?"),
    ("person", "settlers"): ("How many families did {family} lead to {deed_island}?",),
    ("person", "deed_ship"): ("Which ship did {family} command?", "What ship did {family} build?"),
    ("person", "ship_launched"): ("When was the {deed_ship} launched?", "In what year was the {deed_ship} built?"),
    ("person", "ship_yard"): ("Where was the {deed_ship} built?",),
    ("person", "voyages"): ("How many voyages did the {deed_ship} make under {family}?",),
    ("person", "work_year"): ("When was {work} written?", "In what year did {family} publish {work}?"),
    ("person", "survey_years"): ("How many years did {family} spend travelling around {subject_island}?",),
    ("person", "age_sea"): ("At what age did {family} go to sea?",),
    ("ship", "ship_launched"): ("When was the {ship} launched?", "In what year was the {ship} built?"),
    ("ship", "ship_yard"): ("Where was the {ship} built?", "At which town was the {ship} launched?"),
    ("ship", "captain"): ("Who commanded the {ship}?", "Who was the first master of the {ship}?"),
    ("ship", "builder"): ("Who built the {ship}?", "Which shipwright designed the {ship}?"),
    ("ship", "ship_tons"): ("How many tons was the {ship}?",),
    ("ship", "crew"): ("How large was the crew of the {ship}?", "How many crew did the {ship} carry?"),
    ("ship", "ship_kind"): ("What kind of vessel was the {ship}?",),
    ("ship", "ship_timber"): ("What was the hull of the {ship} made of?",),
    ("ship", "good"): ("What cargo did the {ship} usually carry?",),
    ("ship", "ship_partner"): ("Where did the {ship} sail to from {ship_home}?",),
    ("guild", "guild_year"): ("When was the {guild} founded?", "In what year was the {guild} established?"),
    ("guild", "guild_founder"): ("Who founded the {guild}?",),
    ("guild", "seat"): ("Where is the {guild} based?", "In which town does the {guild} have its hall?"),
    ("guild", "guild_good"): ("What does the {guild} regulate?", "The {guild} controls the trade in what?"),
    ("guild", "members"): ("How many members did the {guild} have in {member_year}?",),
    ("guild", "master"): ("Who is the present master of the {guild}?",),
    ("guild", "term"): ("How many years does a master of the {guild} serve?",),
    ("guild", "apprentice_years"): ("How long does an apprenticeship in the {guild} last?",),
    ("guild", "hall_year"): ("When was the hall of the {guild} built?",),
    ("guild", "motto_meaning"): ("What does the motto of the {guild} mean?",),
    ("guild", "email"): (
        "What is the guild's contact address?",
        "What e-mail address does the {guild} give for enquiries?",
    ),
    ("guild", "phone"): ("What telephone number is listed for the {guild}?",),
    ("river", "length"): ("How long is the {river}?", "How many kilometres long is the {river}?"),
    ("river", "source"): ("Where does the {river} rise?", "Where is the source of the {river}?"),
    ("river", "mouth"): ("Where does the {river} reach the sea?", "At which town does the {river} meet the sea?"),
    ("river", "island"): ("On which island is the {river}?",),
    ("river", "bridge_year"): ("When was the stone bridge at {mouth} built?",),
    ("river", "navigable"): ("How many kilometres of the {river} are navigable?",),
    ("river", "trib1"): ("What is one of the main tributaries of the {river}?",),
    ("island", "area"): ("How large is {island}?", "What is the area of {island} in square kilometres?"),
    ("island", "capital"): ("What is the chief town of {island}?",),
    ("island", "peak"): ("What is the highest point on {island}?",),
    ("island", "peak_m"): ("How high is {peak}?",),
    ("island", "settled"): ("When was {island} first settled?",),
    ("island", "island_pop"): ("What is the population of {island}?",),
    ("festival", "festival_month"): ("In which month is the {festival} held?", "When is the {festival} celebrated?"),
    ("festival", "town"): ("Where is the {festival} held?", "Which town celebrates the {festival}?"),
    ("festival", "first_year"): ("When was the {festival} first held?",),
    ("festival", "visitors"): ("How many visitors does the {festival} attract?",),
    ("event", "event_year"): ("When did the {event} take place?", "In what year was the {event}?"),
    ("event", "town"): ("Where did the {event} take place?",),
    ("event", "leader"): ("Who led the attack in the {event}?", "Who commanded in the {event}?"),
    ("event", "days"): ("How many days did the {event} last?",),
    ("event", "count"): (
        "How many ships took part in the {event}?",
        "How many houses did the {event} destroy?",
        "How many ships did the {event} sink?",
        "How many people took part in the {event}?",
    ),
    ("event", "good"): ("What was the {event} about?", "Which trade was at stake in the {event}?"),
}
# Questions whose wording fits only some entities: the index of the one wording to use, or no question.
_EVENT_COUNT_QUESTION = {"siege": 0, "battle": 0, "fire": 1, "storm": 2, "riots": 3}
_EVENT_LEADER_KINDS = ("siege", "battle")
_EVENT_GOOD_KINDS = ("siege", "treaty", "battle", "riots")
_ENTITY_FIELDS = {
    "town": {"town"},
    "person": {"name", "given", "family"},
    "ship": {"ship"},
    "guild": {"guild"},
    "river": {"river"},
    "island": {"island"},
    "festival": {"festival"},
    "event": {"event"},
}
_PERSON_VALUED = {"founder", "captain", "builder", "guild_founder", "master", "leader", "notable", "father"}
_PREFIXES = ("in ", "on ", "at ", "by ", "from ", "the ")
_SUFFIXES = (
    " people",
    " inhabitants",
    " members",
    " metres",
    " kilometres",
    " tons",
    " ships",
    " houses",
    " days",
    " visitors",
    " families",
    " years",
    " boats",
    " square kilometres",
    " voyages",
)
_CONTACT_TEMPLATE = "Enquiries can be sent to the guild secretary at {email} or by telephone on {phone}."


@dataclass(frozen=True)
class _QA:
    question: str
    field: str
    start: int
    answer: str


def _questions_for(
    etype: str, entity: Any, fname: str, sentence_fields: Iterable[str], slots: Mapping[str, str]
) -> list[str]:
    """Question wordings for one answer field that the context sentence supports."""
    allowed = set(sentence_fields) | _ENTITY_FIELDS[etype]
    qs = [q for q in QUESTIONS[(etype, fname)] if _fields(q) <= allowed and fname not in _fields(q)]
    if etype == "event":
        if fname == "count":
            return (
                [QUESTIONS[(etype, fname)][_EVENT_COUNT_QUESTION[entity.kind]]]
                if entity.kind in _EVENT_COUNT_QUESTION
                else []
            )
        if fname == "leader" and entity.kind not in _EVENT_LEADER_KINDS:
            return []
        if fname == "good" and entity.kind not in _EVENT_GOOD_KINDS:
            return []
    if etype == "person":
        if fname == "deed_ship":
            return [QUESTIONS[(etype, fname)][0 if "ship" in entity.deeds else 1]]
        if fname == "deed_year":
            return [q for q in qs if ("guild" in q) == ("deed_guild" in slots)]
        if fname == "deed_town" and "town" not in entity.deeds:
            return []  # only a founder's deed town is a town they founded
    return qs


def _squad_contexts(w: World, etype: str, entity: Any, rng: random.Random, pii: bool) -> list[tuple[str, list[_QA]]]:
    """Contexts (2-5 sentences of plain prose) about one entity, each with 1-4 extractive questions.

    The article is rendered afresh with this stream's randomness, so contexts restate the entity's facts
    in other words than its wikitext article does.
    """
    art = _build_article(w, etype, entity, rng)
    sentences = [s for p in art.paragraphs() for s in p]
    out: list[tuple[str, list[_QA]]] = []
    i = 0
    while i < len(sentences):
        k = rng.randint(2, 5)
        chunk = sentences[i : i + k]
        i += k
        if len(chunk) < 2:
            break
        if pii and not out:
            chunk = chunk[:4] + [_render(_CONTACT_TEMPLATE, art.slots)]
        offsets, pos = [], 0
        for s in chunk:
            offsets.append(pos)
            pos += len(s.text) + 1
        context = " ".join(s.text for s in chunk)
        by_field: dict[str, _QA] = {}
        for s, off in zip(chunk, offsets):
            for fname, (a, b) in s.spans.items():
                if (etype, fname) not in QUESTIONS or fname in by_field:
                    continue
                answer = context[off + a : off + b]
                if len(answer.split()) > 4:
                    continue
                qs = _questions_for(etype, entity, fname, s.spans, art.slots)
                if qs:
                    by_field[fname] = _QA(_render(rng.choice(qs), art.slots).text, fname, off + a, answer)
        qas = list(by_field.values())
        rng.shuffle(qas)
        if pii:
            # Contact questions first, so the PII answers always make it into the data.
            qas.sort(key=lambda q: q.field not in ("email", "phone"))
        qas = qas[: rng.randint(2, 4)]
        if qas:
            out.append((context, sorted(qas, key=lambda q: q.start)))
    return out


def _reference_answers(rng: random.Random, context: str, qa: _QA) -> tuple[list[str], list[int]]:
    """1-3 references like the real dev set: the span, and wider or narrower spans annotators also marked."""
    start, end = qa.start, qa.start + len(qa.answer)
    variants: list[tuple[str, int]] = []
    for p in _PREFIXES:
        if start >= len(p) and context[start - len(p) : start].lower() == p:
            variants.append((context[start - len(p) : end], start - len(p)))
    for x in _SUFFIXES:
        if context[end : end + len(x)] == x:
            variants.append((context[start : end + len(x)], start))
    if qa.field in _PERSON_VALUED and " " in qa.answer:
        cut = qa.answer.index(" ") + 1
        variants.append((qa.answer[cut:], start + cut))
    variants = [v for v in variants if len(v[0].split()) <= 4]
    rng.shuffle(variants)
    texts, starts = [qa.answer], [start]
    for text, s in variants[: rng.randint(0, 2)]:
        texts.append(text)
        starts.append(s)
    if len(texts) < 3 and rng.random() < 0.3:
        texts.append(qa.answer)  # real dev answers often repeat the same span
        starts.append(start)
    return texts, starts


def _squad_rows(
    w: World, seed: int, manifest: dict[str, Any], contexts: list[tuple[str, str, str, list[_QA]]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """SQuAD rows per split; ``contexts`` (if given) receives every (split, title, context, questions) used."""
    rng = random.Random(f"{seed}:squad")
    entities = [e for e in _all_entities(w) if e[0] != "island"]
    rng.shuffle(entities)
    # A guild first, so the validation split is sure to hold a context (and answers) with contact details.
    first_guild = next(i for i, e in enumerate(entities) if e[0] == "guild")
    entities.insert(0, entities.pop(first_guild))
    rows: dict[str, list[dict[str, Any]]] = {"validation": [], "train": []}
    targets = {"validation": SQUAD_VALIDATION_ROWS, "train": SQUAD_TRAIN_ROWS}
    pii_answers: list[dict[str, str]] = []
    guilds_seen = {"validation": 0, "train": 0}
    for etype, entity in entities:
        split = "validation" if len(rows["validation"]) < targets["validation"] else "train"
        if len(rows[split]) >= targets[split]:
            break
        pii = False
        if etype == "guild":
            guilds_seen[split] += 1
            # Contact details in about 1 % of contexts: the first guilds of each split carry them.
            pii = guilds_seen[split] <= (1 if split == "validation" else 4)
        title = entity.name.replace(" ", "_")  # real SQuAD titles are page names: "University_of_Notre_Dame"
        for ci, (context, qas) in enumerate(_squad_contexts(w, etype, entity, rng, pii)):
            if contexts is not None:
                contexts.append((split, title, context, qas))
            for qi, qa in enumerate(qas):
                if split == "train":
                    texts, starts = [qa.answer], [qa.start]
                else:
                    texts, starts = _reference_answers(rng, context, qa)
                row = {
                    "id": _squad_id(seed, split, title, ci, qi, qa.question),
                    "title": title,
                    "context": context,
                    "question": qa.question,
                    "answers": {"text": texts, "answer_start": starts},
                }
                rows[split].append(row)
                if qa.field in ("email", "phone"):
                    pii_answers.append({"split": split, "id": row["id"], "kind": qa.field, "value": qa.answer})
    manifest["squad_pii_answers"] = pii_answers
    manifest["squad_titles"] = {s: list(dict.fromkeys(r["title"] for r in rs)) for s, rs in rows.items()}
    return rows


def _original_layouts(
    rows: list[dict[str, Any]], same_kind: Mapping[str, list[str]], seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """~30 questions in the original SQuAD v1.1 and v2.0 JSON layouts, taken from the validation rows.

    ``same_kind`` maps an entity name to the names of entities of the same kind: an unanswerable v2
    question asks about one of them, so its plausible answer is the right kind of span in the wrong place.
    """
    rng = random.Random(f"{seed}:original")
    chosen: list[dict[str, Any]] = []
    for r in rows:
        if len(chosen) >= 30 and r["context"] != chosen[-1]["context"]:
            break
        chosen.append(r)
    data_v1: list[dict[str, Any]] = []
    for r in chosen:
        if not data_v1 or data_v1[-1]["title"] != r["title"]:
            data_v1.append({"title": r["title"], "paragraphs": []})
        paras = data_v1[-1]["paragraphs"]
        if not paras or paras[-1]["context"] != r["context"]:
            paras.append({"context": r["context"], "qas": []})
        paras[-1]["qas"].append(
            {
                "answers": [
                    {"answer_start": s, "text": t} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])
                ],
                "question": r["question"],
                "id": r["id"],
            }
        )
    v1 = {"data": data_v1, "version": "1.1"}

    data_v2 = json.loads(json.dumps(data_v1))
    for article in data_v2:
        entity = article["title"].replace("_", " ")
        for para in article["paragraphs"]:
            new_qas = []
            for qa in para["qas"]:
                qa["is_impossible"] = False
                new_qas.append(qa)
                decoys = [d for d in same_kind.get(entity, []) if d not in para["context"]]
                if entity in qa["question"] and decoys and rng.random() < 0.6:
                    new_qas.append(
                        {
                            "plausible_answers": [dict(qa["answers"][0])],
                            "question": qa["question"].replace(entity, rng.choice(decoys)),
                            "id": _squad_id(seed, "v2", qa["id"]),
                            "answers": [],
                            "is_impossible": True,
                        }
                    )
            para["qas"] = new_qas
    v2 = {"version": "v2.0", "data": data_v2}
    return v1, v2


@functools.lru_cache(maxsize=1)
def _template_vocabulary() -> frozenset[str]:
    """Every word of the domain's own templates and word lists: an invented name must not be one of them."""
    # Listed explicitly rather than read from globals(): those differ between `import` and `python -m`.
    sources: list[Any] = [
        _GOODS,
        _CRAFTS,
        _SHORES,
        _HARBOURS,
        _MONTHS,
        _DAYS,
        _ISLAND_DESCS,
        _NICKNAMES,
        _LANDMARKS,
        _FOUNDER_ROLES,
        _PARENT_JOBS,
        _SHIP_ADJ,
        _SHIP_NOUN,
        _SHIP_KINDS,
        _MASTS,
        _TIMBERS,
        _BOOK_PATTERNS,
        _POEM_PATTERNS,
        _MOTTO_MEANINGS,
        _FESTIVAL_CUSTOMS,
        _FESTIVAL_CUSTOMS2,
        TOWN_SECTIONS,
        PERSON_SECTIONS,
        SHIP_SECTIONS,
        GUILD_SECTIONS,
        RIVER_SECTIONS,
        ISLAND_SECTIONS,
        FESTIVAL_SECTIONS,
        EVENT_SECTIONS,
        COLOR,
        _THEMES,
        _SUBHEADINGS,
        QUESTIONS,
        _PII_TEMPLATES,
        _HARD_NEGATIVE_TEMPLATES,
        _CONTACT_TEMPLATE,
    ]
    texts: list[str] = []
    while sources:
        v = sources.pop()
        if isinstance(v, str):
            texts.append(v)
        elif isinstance(v, dict):
            sources.extend(v.items())
        elif isinstance(v, (tuple, list)):
            sources.extend(v)
    return frozenset(w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t))


# --------------------------------------------------------------------------------------------------
# Summarization and chat sets (instruction and messages formats), from the same contexts
# --------------------------------------------------------------------------------------------------

# How a fact summary names each answer field: "Quiet Star: kind carrack; launched 1656; master Aelo Lonlithell."
FACT_LABELS: dict[str, str] = {
    "count": "number",
    "days": "days",
    "event_year": "year",
    "good": "trade",
    "leader": "led by",
    "town": "town",
    "festival_month": "month",
    "first_year": "first held",
    "visitors": "visitors",
    "apprentice_years": "apprenticeship years",
    "email": "e-mail",
    "guild_founder": "founder",
    "guild_good": "trade",
    "guild_year": "founded",
    "hall_year": "hall built",
    "master": "master",
    "members": "members",
    "motto_meaning": "motto means",
    "phone": "telephone",
    "seat": "seat",
    "term": "term",
    "area": "area",
    "capital": "capital",
    "island_pop": "population",
    "peak": "highest peak",
    "peak_m": "peak height",
    "settled": "settled",
    "age_sea": "went to sea at",
    "born": "born",
    "death_place": "died at",
    "deed_ship": "ship",
    "deed_town": "founded",
    "deed_year": "deed year",
    "died": "died",
    "father": "father",
    "home": "home",
    "parent_job": "father's trade",
    "settlers": "settler families",
    "ship_launched": "launched",
    "ship_yard": "yard",
    "survey_years": "survey years",
    "voyages": "voyages",
    "work_year": "work year",
    "bridge_year": "bridged",
    "island": "island",
    "length": "length",
    "mouth": "mouth",
    "navigable": "navigable for",
    "source": "source",
    "trib1": "tributary",
    "builder": "builder",
    "captain": "master",
    "crew": "crew",
    "ship_kind": "kind",
    "ship_partner": "trading partner",
    "ship_timber": "timber",
    "ship_tons": "tonnage",
    "charter_year": "charter",
    "dist_km": "distance from the capital",
    "fleet": "fishing fleet",
    "founder": "founder",
    "guild": "guild",
    "landmark_year": "landmark built",
    "market_day": "market day",
    "nickname": "known as",
    "notable": "notable native",
    "paper_year": "newspaper since",
    "partner": "trading partner",
    "partner_good": "imports",
    "pop": "population",
    "quay_year": "quay built",
    "river": "river",
    "school_year": "school founded",
    "twin": "twinned with",
    "year": "founded",
}
_SUMMARY_INSTRUCTIONS = (
    "Summarize the key facts this passage gives about {subject}.",
    "List the facts the note states about {subject}, in one line.",
    "Write a one-line fact summary of the passage on {subject}.",
)
_CHAT_SYSTEM = "You are the archive assistant of the {arch}. Answer in a few words."
_CHAT_OPENINGS = (
    "Here is an archive note on {subject}:\n{context}\n\n{question}",
    "I am reading this about {subject}.\n\n{context}\n\n{question}",
)


def fact_summary(subject: str, qas: Sequence[_QA]) -> str:
    """The reference summary of a context: its answer spans in reading order, each with its label."""
    return f"{subject}: " + "; ".join(f"{FACT_LABELS[qa.field]} {qa.answer}" for qa in qas) + "."


def _task_sets(
    contexts: Sequence[tuple[str, str, str, Sequence[_QA]]], arch: str, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """A summarization set (alpaca rows) and a chat set (messages rows) over the SQuAD contexts, split as SQuAD is.

    Each set's train split repeats a few rows (same id), and the chat set one conversation under a
    new id, so the de-duplication counts have something to show.
    """
    rng = random.Random(f"{seed}:tasks")
    summaries: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    chats: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    for split, title, context, qas in contexts:
        subject = title.replace("_", " ")
        if len(qas) < 2:
            continue
        ordered = sorted(qas, key=lambda q: q.start)
        summaries[split].append(
            {
                "id": _squad_id(seed, "summary", split, title, context),
                "instruction": rng.choice(_SUMMARY_INSTRUCTIONS).format(subject=subject),
                "input": context,
                "output": fact_summary(subject, ordered),
            }
        )
        turns: list[dict[str, str]] = []
        if rng.random() < 0.5:
            turns.append({"role": "system", "content": _CHAT_SYSTEM.format(arch=arch)})
        asked = rng.sample(list(qas), k=min(len(qas), rng.randint(2, 3)))
        for i, qa in enumerate(asked):
            user = (
                rng.choice(_CHAT_OPENINGS).format(subject=subject, context=context, question=qa.question)
                if i == 0
                else qa.question
            )
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": qa.answer}]
        chats[split].append({"id": _squad_id(seed, "chat", split, title, context), "messages": turns})
    for rows in (summaries["train"], chats["train"]):
        rows.extend(dict(rows[i]) for i in (3, 10, 20))  # repeated rows, same id
    chats["train"].append({"id": _squad_id(seed, "chat", "copy"), "messages": chats["train"][5]["messages"]})
    return summaries, chats


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

_README = """# Sample data (fictional, generated)

Offline stand-ins for the datasets the workbook uses on the hub, in the same row formats, so one set of
loaders reads both:

| path | stands in for | format |
|---|---|---|
| `wikitext/{{train,validation,test}}.jsonl` | `wikitext`, `wikitext-2-raw-v1` | one `{{"text": ...}}` row per line of the original file |
| `generic/train.jsonl` | generic English prose | one paragraph per row; pretrains the tiny base |
| `squad/{{train,validation}}.jsonl` | `squad` (v1.1) | Hugging Face rows (`id`, `title`, `context`, `question`, `answers`) |
| `squad_v1_original/dev-sample.json` | SQuAD v1.1 `dev-v1.1.json` | original nested JSON layout |
| `squad_v2_original/dev-sample.json` | SQuAD 2.0 `dev-v2.0.json` | original layout with `is_impossible` and `plausible_answers` |
| `summaries/{{train,validation}}.jsonl` | an instruction (summarization) set | alpaca rows (`instruction`, `input`, `output`): a passage and its one-line fact summary |
| `chat/{{train,validation}}.jsonl` | a chat set | `messages` rows: an optional system turn, then 2-3 user/assistant exchanges about a passage |
| `knowledge_probe/questions.jsonl` | a closed-book knowledge probe (`data.knowledge_probe`) | `entity`, `fact`, `question`, `answers`, `split` (`train` or `probe`) |
| `knowledge_probe/registers.jsonl` | - | the six register articles alone (wikitext rows), a corpus for calibrating a DAPT budget |
| `manifest.json` | - | what was planted: PII, hard negatives, duplicates, odd Unicode, titles per split, the pilots |

The summarization and chat sets are built from the same passages as the SQuAD rows, split the same way;
each train split repeats a few rows so the de-duplication counts have something to show.

The knowledge probe is about {n_pilots} harbour pilots. Each has one entry in each of six "Register of
harbour pilots" articles in `wikitext/train.jsonl`, with its four facts (birth year, home town, harbour,
first ship) worded differently in every register and the sentences shuffled, because facts are learned
from several spread-out rewordings, not from one statement (Allen-Zhu & Li, *Physics of Language
Models: Part 3.1*, arXiv:2309.14316). Half of the pilots are `train` (their closed-book questions teach
a task adapter to answer from memory), half `probe` (asked only at test time). No SQuAD, summary or
chat row mentions a pilot.

Everything here is **fictional**: an invented archipelago (the {arch}) with invented people, towns,
guilds and ships. No text is copied from wikitext, SQuAD or any other corpus. Telephone numbers are in
ranges reserved for drama, e-mail domains are reserved example domains, IP addresses are in documentation
ranges and card numbers are random (Luhn-valid only so that a scrubber has something to find).

The files are generated, never edited by hand. Regenerate them with

    python data/sample/make_sample_data.py

`tests/unit/data/test_sample_data.py` regenerates them into a temporary folder and fails if they differ from the
committed copy.
"""


def write_sample_data(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write every sample file under out_dir and return {logical name: path}."""
    out_dir = Path(out_dir)
    world = build_world(seed)
    manifest: dict[str, Any] = {"seed": seed, "archipelago": world.arch}
    pilots = build_pilots(world, seed)
    registers = _register_plans(world, pilots, seed)
    wiki = _wikitext_splits(world, seed, manifest, registers)
    contexts: list[tuple[str, str, str, list[_QA]]] = []
    squad = _squad_rows(world, seed, manifest, contexts)
    summaries, chats = _task_sets(contexts, world.arch, seed)
    kinds: dict[str, list[str]] = {}
    for etype, entity in _all_entities(world):
        kinds.setdefault(etype, []).append(entity.name)
    same_kind = {name: [n for n in names if n != name] for names in kinds.values() for name in names}
    v1, v2 = _original_layouts(squad["validation"], same_kind, seed)
    generic = _generic_rows(seed)
    manifest["invented_words"] = world.invented

    files: dict[str, tuple[str, str]] = {
        "wikitext_train": ("wikitext/train.jsonl", _jsonl({"text": t} for t in wiki["train"])),
        "wikitext_validation": ("wikitext/validation.jsonl", _jsonl({"text": t} for t in wiki["validation"])),
        "wikitext_test": ("wikitext/test.jsonl", _jsonl({"text": t} for t in wiki["test"])),
        "generic_train": ("generic/train.jsonl", _jsonl(generic)),
        "squad_train": ("squad/train.jsonl", _jsonl(squad["train"])),
        "squad_validation": ("squad/validation.jsonl", _jsonl(squad["validation"])),
        "squad_v1_original": ("squad_v1_original/dev-sample.json", json.dumps(v1, ensure_ascii=False, indent=1) + "\n"),
        "squad_v2_original": ("squad_v2_original/dev-sample.json", json.dumps(v2, ensure_ascii=False, indent=1) + "\n"),
        **{f"summaries_{split}": (f"summaries/{split}.jsonl", _jsonl(rows)) for split, rows in summaries.items()},
        **{f"chat_{split}": (f"chat/{split}.jsonl", _jsonl(rows)) for split, rows in chats.items()},
        "knowledge_probe": ("knowledge_probe/questions.jsonl", _jsonl(_probe_rows(pilots, seed))),
        "knowledge_registers": (
            "knowledge_probe/registers.jsonl",
            _jsonl({"text": t} for plan in registers for t in _article_rows(plan.title, plan.sections)),
        ),
    }
    manifest["knowledge_probe"] = {
        "register_titles": [plan.title for plan in registers],
        "pilots": [{"name": p.name, "split": p.split, **p.facts} for p in pilots],
    }
    manifest["counts"] = {
        "wikitext_rows": {s: len(r) for s, r in wiki.items()},
        "wikitext_chars": {s: sum(len(t) for t in r) for s, r in wiki.items()},
        "generic_rows": len(generic),
        "generic_chars": sum(len(r["text"]) for r in generic),
        "squad_rows": {s: len(r) for s, r in squad.items()},
        "summary_rows": {s: len(r) for s, r in summaries.items()},
        "chat_rows": {s: len(r) for s, r in chats.items()},
    }
    files["manifest"] = ("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    files["readme"] = ("README.md", _README.format(arch=world.arch, n_pilots=N_PILOTS))

    paths: dict[str, Path] = {}
    for logical, (rel, text) in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        paths[logical] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python data/sample/make_sample_data.py [--out FOLDER]``: regenerate the sample data (beside this file by default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder to write into (default: the repository's data/sample)",
    )
    parser.add_argument("--seed", type=int, default=0, help="world seed; the committed files use 0")
    args = parser.parse_args(argv)
    paths = write_sample_data(args.out, seed=args.seed)
    for logical, path in paths.items():
        print(f"{logical:20s} {path.stat().st_size:>10,d} bytes  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
