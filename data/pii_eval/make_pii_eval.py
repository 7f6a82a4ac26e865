"""Write ``pii_eval.jsonl``: the labeled set the PII scrubber is measured on.

Every value and sentence below is authored by hand; the script only combines them in a fixed order
and computes character offsets, so the output is identical on every run (no randomness, no network,
no use of the scrubber itself). Run from anywhere: ``python data/pii_eval/make_pii_eval.py``.

Positives are personal data of every kind the scrubber knows, in many written formats, inside
ordinary sentences. Hard negatives are sentences holding only look-alikes that must survive:
version numbers, dates, times, ISBNs, years, sums, arithmetic, wikitext number tokens, card
numbers that fail Luhn, IBANs with a wrong checksum, never-issued SSNs and URLs without identity.
Card numbers and IBANs are made valid (or invalid) here by computing their check digits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import cycle
from pathlib import Path

OUT = Path(__file__).with_name("pii_eval.jsonl")

# ---------------------------------------------------------------- checksums (independent of modft_utils)


def luhn_check_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions, counted from the check digit's left neighbour
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def iban_with_check(country: str, bban: str) -> str:
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def grouped(s: str, sizes: list[int], sep: str) -> str:
    out, pos = [], 0
    for n in sizes:
        out.append(s[pos : pos + n])
        pos += n
    return sep.join(p for p in out if p)


def in_fours(s: str) -> str:
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


# ---------------------------------------------------------------- positive values

EMAIL = [
    "jane.doe@example.com",
    "j.smith+newsletter@mail.example.co.uk",
    "first.last@sub.domain.example.org",
    "John.Smith@Example.COM",
    "user123@host-name.io",
    "a_b-c@d-e.example.net",
    "mueller@uni-heidelberg.de",
    "ravi.kumar@iitb.ac.in",
    "marie.dupont@orange.fr",
    "priya.sharma92@gmail.com",
    "t.nguyen@cs.stanford.edu",
    "ops-alerts+pager@infra.acme-corp.com",
    "k.oconnor@tcd.ie",
    "support@shop.example.de",
    "h.tanaka@lab.u-tokyo.ac.jp",
    "lena.schmidt@web.de",
    "p.rossi@libero.it",
    "ahmed.khan1987@yahoo.co.in",
    "zoe@exämple.de",
    "dev.team@sub1.sub2.example.travel",
    "MARK.BROWN@CORP.EXAMPLE.NET",
    "olivia_w@outlook.com",
    "noreply+ticket-4821@helpdesk.example.org",
    "c.martin@sciencespo.fr",
    "sven.o@kth.se",
    "abuse@isp.example",
    "jose.garcia@correo.example.es",
    "anna-lena.k@fu-berlin.de",
    "r2d2@droids.example.space",
    "billing@example.co.uk",
]
PHONE = [
    "+1 (415) 555-2671",
    "415.555.2671",
    "(212) 555-0199",
    "+1-212-555-0199",
    "1-800-555-0199",
    "+1 646 555 3890",
    "(617) 555-0143",
    "202-555-0173",
    "+1.312.555.0182",
    "312 555 0182",
    "+1 (305) 555-0147",
    "+1 718 555 0123",
    "4155552671",
    "+14155552671",
    "+44 20 7946 0958",
    "020 7946 0958",
    "(020) 7946 0958",
    "+44 (0)20 7946 0321",
    "+44 161 496 0123",
    "0161 496 0123",
    "0117 496 0456",
    "07911 123456",
    "+44 7911 123456",
    "+44 121 496 0789",
    "0121 496 0789",
    "+44 131 496 0012",
    "0044 20 7946 0958",
    "+49 30 901820",
    "030 901820",
    "+49 (0)30 12345678",
    "+49 89 1234567",
    "089 1234567",
    "0151 23456789",
    "+49 151 23456789",
    "040 3861 2345",
    "+49 40 3861 2345",
    "+49 69 1234 5678",
    "+49 170 1234567",
    "0170 1234567",
    "+49 211 1234567",
    "+33 1 42 68 53 00",
    "01 42 68 53 00",
    "01.42.68.53.00",
    "06 12 34 56 78",
    "+33 6 12 34 56 78",
    "+33 (0)4 91 23 45 67",
    "04.91.23.45.67",
    "+33 9 72 10 20 30",
    "+33 7 81 23 45 67",
    "+33 5 61 23 45 67",
    "+91 98765 43210",
    "098765 43210",
    "+91 22 2778 1234",
    "+91-80-2852-3456",
    "080 2852 3456",
    "9876543210",
    "+91 11 2345 6789",
    "011 2345 6789",
    "+91 99887 76655",
    "+91 70123 45678",
]
IPV4 = [
    "192.168.1.20",
    "10.0.0.5",
    "172.16.254.1",
    "8.8.8.8",
    "203.0.113.45",
    "198.51.100.7",
    "81.2.69.160",
    "192.0.2.146",
    "100.64.12.9",
    "62.210.18.40",
    "10.12.0.254",
    "185.199.108.153",
    "127.0.0.1",
    "45.33.32.156",
    "91.198.174.192",
]
IPV6 = [
    "2001:db8::8a2e:370:7334",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "fe80::1ff:fe23:4567:890a",
    "2a00:1450:4001:82a::200e",
    "::ffff:192.0.2.128",
    "fe80::1%eth0",
    "2001:db8:0:1234::5",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "FE80::0202:B3FF:FE1E:8329",
]


def _cards() -> list[str]:
    # Published test numbers (they pass Luhn and belong to no one) in the ways people write them.
    known = [
        ("4111111111111111", [4, 4, 4, 4]),
        ("4012888888881881", [4, 4, 4, 4]),
        ("5555555555554444", [4, 4, 4, 4]),
        ("5105105105105100", [4, 4, 4, 4]),
        ("378282246310005", [4, 6, 5]),
        ("371449635398431", [4, 6, 5]),
        ("6011111111111117", [4, 4, 4, 4]),
        ("3530111333300000", [4, 4, 4, 4]),
        ("4242424242424242", [4, 4, 4, 4]),
        ("2223003122003222", [4, 4, 4, 4]),
        ("30569309025904", [4, 6, 4]),
        ("4222222222222", [4, 4, 4, 1]),
    ]
    # More numbers with real issuer prefixes, completed with a Luhn check digit.
    payloads = [
        ("453201511283036", [4, 4, 4, 4]),
        ("542523343010990", [4, 4, 4, 4]),
        ("601100099013942", [4, 4, 4, 4]),
        ("34012345678901", [4, 6, 5]),
        ("491761000000000", [4, 4, 4, 4]),
        ("222100000000000", [4, 4, 4, 4]),
        ("675964982643621234", [4, 4, 4, 4, 3]),
        ("356600202036050", [4, 4, 4, 4]),
    ]
    made = known + [(p + luhn_check_digit(p), g) for p, g in payloads]
    out = []
    for i, (num, groups) in enumerate(made):
        out.append(grouped(num, groups, " "))
        out.append(grouped(num, groups, "-") if i % 2 else num)
    return out


def _ibans() -> list[str]:
    known = [
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "ES9121000418450200051332",
        "IT60X0542811101000000123456",
        "BE68539007547034",
        "CH9300762011623852957",
    ]
    bbans = [
        ("AT", "1904300234573201"),
        ("PL", "109010140000071219812874"),
        ("SE", "50000000058398257466"),
        ("DK", "00400440116243"),
        ("IE", "AIBK93115212345678"),
        ("PT", "000201231234567890154"),
        ("NO", "86011117947"),
        ("FI", "21234560000785"),
        ("LU", "0019400644750000"),
        ("CZ", "08000000192000145399"),
        ("GR", "01101250000000012300695"),
        ("SA", "80000000608010167519"),
        ("AE", "0331234567890123456"),
        ("TR", "0006100519786457841326"),
        ("HU", "117730161111101800000000"),
    ]
    made = known + [iban_with_check(c, b) for c, b in bbans]
    # Alternate print format (groups of four) and electronic format (no spaces).
    return [in_fours(x) if i % 2 == 0 else x for i, x in enumerate(made)] + [
        x if i % 2 == 0 else in_fours(x) for i, x in enumerate(made[:6])
    ]


SSN = [
    "123-45-6789",
    "078-05-1120",
    "219-09-9999",
    "536-22-1234",
    "457-55-5462",
    "001-01-0001",
    "665-12-3456",
    "667-01-2345",
    "899-99-9998",
    "512-44-3087",
    "234-56-7890",
    "321-54-9876",
    "401-23-4567",
    "772-10-0042",
    "555-12-0001",
    "145-90-2231",
    "600-88-1234",
    "309-31-4415",
    "718-02-6690",
    "042-77-1204",
    "250-61-3388",
    "834-40-5501",
]
URL = [
    "https://github.com/jdoe",
    "https://www.linkedin.com/in/jane-doe-42/",
    "https://twitter.com/ravi_k",
    "https://x.com/marie_dupont",
    "https://www.instagram.com/lena.schmidt/",
    "https://medium.com/@tnguyen",
    "https://www.reddit.com/user/throwaway_4821",
    "https://www.youtube.com/@hiro_tanaka",
    "https://www.facebook.com/olivia.w.1987",
    "ftp://bob:s3cret@files.example.org/reports/",
    "https://alice@git.example.com/team/repo.git",
    "https://example.com/account?user_id=48213",
    "https://shop.example.de/orders?customer=99812&lang=de",
    "https://forum.example.net/members/kpatel.1203/",
    "https://www.example.edu/~jsmith/",
    "https://example.org/profile/anna-lena",
    "https://intranet.example.com/people/r.singh",
    "http://blog.example.com/author/mbrown",
    "https://app.example.io/login?username=sven.o",
    "https://mastodon.social/@zoe",
    "https://example.com/unsubscribe?id=7731&mail=jose.garcia%40correo.example.es",
    "github.com/priya-sharma",
    "linkedin.com/in/ahmed-khan-1987",
    "https://gitlab.com/c.martin",
    "https://stackoverflow.com/users/221034/h-tanaka",
]

# ---------------------------------------------------------------- hard-negative values

VERSION = [
    "version 1.2.3.4",
    "v1.2.3.4",
    "release 4.19.0.2",
    "build 10.0.19041.1",
    "firmware 2.4.1.15",
    "Version 6.1.7601.2",
    "v10.0.0.1",
    "release 192.168.0.1",
    "ver. 3.0.2.11",
    "patch 1.12.4.6",
]
DATE = [
    "2023-05-17",
    "17/05/2023",
    "05/17/2023",
    "17.05.2023",
    "May 17, 2023",
    "2023-05-17 12:30",
    "1 January 1999",
    "2019-12-31",
    "31/12/2019",
    "03.04.21",
    "2024-02-29T08:15",
    "12/11/10",
]
TIME = ["12:30", "09:45:10", "23:59", "7:05 pm", "18:00", "00:00:01", "14:22:37.5"]
ISBN = [
    "ISBN 978-3-16-148410-0",
    "ISBN 0-306-40615-2",
    "ISBN-13: 9780306406157",
    "ISBN 0306406152",
    "ISBN-10 0-19-852663-6",
    "ISBN 978-0-262-03384-8",
    "ISBN 978 0 596 52068 7",
    "ISBN: 1-56619-909-3",
]
YEAR = ["1998", "2024", "1914–1918", "the 1990s", "1066", "2011–12", "1870 and 1871"]
SUM = [
    "1,250,000",
    "$3.50",
    "€1.299,00",
    "£12.99",
    "$1,250,000.00",
    "3.5 million",
    "2,500",
    "¥15,000",
    "US$ 4.2 billion",
    "12.5%",
    "-0.75",
    "1.000.000",
    "8,336,817",
    "€ 19,95",
]
MATH = [
    "3 + 4 = 7",
    "12 × 12 = 144",
    "x = 2.5",
    "(2 + 3) * 4 = 20",
    "10 / 2 = 5",
    "2^10 = 1024",
    "7 - 3 = 4",
    "1/3 + 1/6 = 1/2",
    "9 * 9 = 81",
    "sqrt(16) = 4",
    "100 - 37 = 63",
    "0.1 + 0.2 = 0.3",
]
WIKI = [
    "1 @,@ 000",
    "3 @.@ 5",
    "state @-@ of @-@ the @-@ art",
    "2 @,@ 500 @,@ 000",
    "12 @.@ 7 %",
    "role @-@ playing",
    "1 @,@ 250 @,@ 000",
    "0 @.@ 75",
    "well @-@ known",
    "5 @,@ 000 @-@ seat",
]
SECTION = ["section 4.2.1.3", "chapter 3.2.1", "§ 12.4.1.2", "clause 10.1.2.3", "figure 2.3", "table 4"]


def _bad_cards() -> list[str]:
    base = [
        "4111111111111112",
        "5555555555554445",
        "378282246310006",
        "6011111111111118",
        "4012888888881882",
        "1234567890123456",
        "5105105105105101",
        "4242424242424241",
        "3530111333300001",
        "2223003122003223",
    ]
    out = []
    for i, num in enumerate(base):
        sizes = [4, 6, 5] if len(num) == 15 else [4, 4, 4, 4]
        out.append([num, grouped(num, sizes, " "), grouped(num, sizes, "-")][i % 3])
    return out


def _bad_ibans() -> list[str]:
    good = [
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "ES9121000418450200051332",
        "BE68539007547034",
        "CH9300762011623852957",
    ]
    out = []
    for i, x in enumerate(good):
        # Change one check digit: the mod-97 test must catch every single-digit error.
        bad = x[:2] + str((int(x[2]) + 1) % 10) + x[3:]
        out.append(in_fours(bad) if i % 2 == 0 else bad)
    return out + ["DE89 3704 0044 0532 0130", "XX12 3456 7890 1234 5678 90"]  # too short; no such country


BAD_SSN = ["000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "987-65-4321"]
PLAIN_URL = [
    "https://docs.python.org/3/library/re.html",
    "https://en.wikipedia.org/wiki/Alan_Turing",
    "https://github.com/pytorch/pytorch",
    "https://github.com/features",
    "www.example.com/pricing",
    "https://example.org/search?q=iban+checksum&page=2",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
    "https://www.reddit.com/r/MachineLearning/",
    "http://192.0.2.10.example.com/status",
    "https://arxiv.org/abs/2106.09685",
    "http://git.eclipse.org/c/sisu/org.eclipse.sisu.inject.git",
    "http://ftp.debian.org/debian/pool/main/c/ca-certificates/",
]
BAD_IP = ["256.300.1.1", "1.2.3", "999.10.10.10", "10.0.0", "12:30:45"]

# ---------------------------------------------------------------- sentences

POSITIVE_TEMPLATES = {
    "EMAIL": [
        "Please send the signed form to {EMAIL} before Friday.",
        "You can reach the coordinator at {EMAIL} or through the front desk.",
        "Contact: {EMAIL}",
        "On {DATE} she wrote from {EMAIL} asking about the refund.",
        "Replies to <{EMAIL}> are read by a person, not a bot.",
        "For questions about the dataset, email {EMAIL}.",
        "His new address ({EMAIL}) replaced the old one in {YEAR}.",
        "Questions? mailto:{EMAIL}",
        "The reviewer (email: {EMAIL}) asked for the raw data.",
        '"Write to me at {EMAIL}", he said.',
    ],
    "PHONE": [
        "Call me at {PHONE} if the delivery is late.",
        "The clinic's number is {PHONE}, open until {TIME}.",
        "Tel.: {PHONE}",
        "She left a voicemail from {PHONE} on {DATE}.",
        "For bookings ring {PHONE} (weekdays only).",
        "You can text the driver on {PHONE}.",
        "Mobile {PHONE}, office hours from {TIME}.",
        "His landlord's phone, {PHONE}, was written on the lease.",
        "Her number is {PHONE}.",
        "Numbers on file: {PHONE}; none other.",
    ],
    "IP_ADDRESS": [
        "The login came from {IP_ADDRESS} at {TIME}.",
        "Requests from {IP_ADDRESS} were rate-limited after the attack.",
        "Her laptop had the address {IP_ADDRESS} on the office network.",
        "Blocked client: {IP_ADDRESS}",
        "The server log shows {IP_ADDRESS} fetching the page on {DATE}.",
        "ssh admin@{IP_ADDRESS} failed three times.",
        "The camera streams from {IP_ADDRESS}, port 8554.",
        "The printer answered on {IP_ADDRESS}.",
    ],
    "CREDIT_CARD": [
        "The order was paid with card {CREDIT_CARD}, expiry 09/27.",
        "Please charge {CREDIT_CARD} for the deposit of {SUM}.",
        "Card number: {CREDIT_CARD}",
        "He read out {CREDIT_CARD} over the phone, which the agent should never have accepted.",
        "A refund of {SUM} went back to {CREDIT_CARD}.",
    ],
    "IBAN": [
        "Transfer the rent to {IBAN} by the first of the month.",
        "IBAN: {IBAN}",
        "Her salary is paid into {IBAN} (BIC on file).",
        "Please use the account {IBAN} for the refund of {SUM}.",
        "The invoice lists {IBAN} as the payee account.",
    ],
    "US_SSN": [
        "His Social Security number is {US_SSN}.",
        "SSN {US_SSN} appears on the W-2 form from {YEAR}.",
        "The applicant wrote {US_SSN} in the box for the SSN.",
        "Verify identity: last name Smith, SSN: {US_SSN}.",
    ],
    "URL": [
        "Her profile is at {URL} if you want to check her work.",
        "More about the author: {URL}",
        "He shared the link {URL} in the group chat.",
        "See {URL} for his public repositories and talks.",
        "The reset mail pointed to {URL} instead of the real site.",
        "(Her talks are listed on her page, {URL}.)",
    ],
}
MIXED_TEMPLATES = [
    "Name: Jane Doe, email {EMAIL}, phone {PHONE}.",
    "Ship to the office and call {PHONE}; the invoice goes to {EMAIL}.",
    "Customer {EMAIL} paid with {CREDIT_CARD} from {IP_ADDRESS}.",
    "Refund to {IBAN}, confirmation to {EMAIL}.",
    "Employee record: SSN {US_SSN}, direct line {PHONE}.",
    "Profile {URL}; contact {EMAIL}.",
    "Wire {SUM} to {IBAN} and text {PHONE} when done.",
    "Login from {IP_ADDRESS} with card {CREDIT_CARD} flagged on {DATE}.",
]
NEGATIVE_TEMPLATES = [
    "Upgrade to {VERSION} before {DATE}; older builds are unsupported.",
    "The changelog for {VERSION} lists {NUM} fixed bugs.",
    "The meeting moved from {DATE} at {TIME} to the following week.",
    "Doors open at {TIME} and the talk starts at {TIME}.",
    "The second edition ({ISBN}) was printed in {YEAR}.",
    "Cited as Smith ({YEAR}), {ISBN}, p. {NUM}.",
    "Revenue grew to {SUM} in {YEAR}, up from {SUM}.",
    "The ticket costs {SUM} and the parking {SUM}.",
    "In the first lesson the pupils learn that {MATH} and that {MATH}.",
    "Check the arithmetic: {MATH}.",
    "The stadium holds {WIKI} spectators after the {YEAR} renovation .",
    "It was a {WIKI} design , costing {WIKI} dollars .",
    "The test card {BAD_CARD} is rejected because its check digit is wrong.",
    "Typo in the form: {BAD_CARD} does not pass the Luhn test.",
    "The account {BAD_IBAN} failed validation, so the transfer was stopped.",
    "{BAD_IBAN} is not a valid IBAN: the checksum does not match.",
    "Numbers such as {BAD_SSN} are never issued as SSNs.",
    "The sample form uses {BAD_SSN}, an invalid SSN, as an example.",
    "The documentation lives at {PLAIN_URL} and is updated every {NUM} days.",
    "See {PLAIN_URL} for the full list of changes since {VERSION}.",
    "Strings like {BAD_IP} are not addresses, and neither is {VERSION}.",
    "As explained in {SECTION}, the limit is {SUM} per year.",
    "The match on {DATE} ended {NUM}-{NUM} after extra time.",
    "Between {YEAR} and {YEAR} the population rose to {SUM}.",
    "The train leaves at {TIME} on {DATE} from platform {NUM}.",
    "She was born in {YEAR} and moved to Berlin in {YEAR}.",
    "Release notes ({VERSION}, {DATE}): {NUM} issues closed, see {PLAIN_URL}.",
    "Order {NUM} of {SUM} shipped on {DATE}.",
    "Pages {NUM}–{NUM} of the {YEAR} report cover {WIKI} cases .",
    "The formula {MATH} holds, as does {MATH} for all x.",
    "The screen has a {LOOKALIKE} aspect ratio and weighs {SUM} grams.",
    "Measurements: {LOOKALIKE}, taken on {DATE}.",
    "The survey ({LOOKALIKE}) covered {SUM} households in {YEAR}.",
    "Her thesis ({YEAR}) is {ISBN}; the appendix is {SECTION}.",
    "Interest rose {SUM} between {DATE} and {DATE}.",
]
LOOKALIKE = [
    "16:9",
    "51.5074, -0.1278",
    "pp. 211–227",
    "1990–1995",
    "score 3-2",
    "−3.5 °C",
    "room 4.12",
    "pages 1200-1250",
    "1:50,000 scale",
    "n = 1,024",
    "p < 0.001",
    "95% CI 1.2–3.4",
    "lot 20-17-3",
    "Boston, MA 02110-1301",
    "DFARS 252.227-7014",
    "handle 1895.22/1013",
    "commit `8113220690`",
]
NUM = ["12", "7", "250", "1,024", "48", "3", "96", "15", "2", "1999", "640", "33"]


def fill(template: str, pools: dict[str, Iterator[str]]) -> dict:
    """Substitute each {SLOT}; slots named after a PII kind become labeled spans."""
    text, spans = "", []
    for i, part in enumerate(re.split(r"\{(\w+)\}", template)):
        if i % 2 == 0:
            text += part
            continue
        value = next(pools[part])
        if part in POSITIVE_TEMPLATES:
            spans.append({"start": len(text), "end": len(text) + len(value), "kind": part})
        text += value
    return {"text": text, "spans": spans}


def build() -> list[dict]:
    pools = {
        "EMAIL": EMAIL,
        "PHONE": PHONE,
        "IP_ADDRESS": [v for pair in zip(IPV4, IPV6 + IPV4[:5]) for v in pair],
        "CREDIT_CARD": _cards(),
        "IBAN": _ibans(),
        "US_SSN": SSN,
        "URL": URL,
        "VERSION": VERSION,
        "DATE": DATE,
        "TIME": TIME,
        "ISBN": ISBN,
        "YEAR": YEAR,
        "SUM": SUM,
        "MATH": MATH,
        "WIKI": WIKI,
        "SECTION": SECTION,
        "BAD_CARD": _bad_cards(),
        "BAD_IBAN": _bad_ibans(),
        "BAD_SSN": BAD_SSN,
        "PLAIN_URL": PLAIN_URL,
        "BAD_IP": BAD_IP,
        "NUM": NUM,
        "LOOKALIKE": LOOKALIKE,
    }
    sizes = {k: len(v) for k, v in pools.items()}
    cycles = {k: cycle(v) for k, v in pools.items()}
    rows = []
    # Each positive value is used once per pass; the second pass shifts the templates by one, so
    # every value appears in two different sentences.
    for kind, templates in POSITIVE_TEMPLATES.items():
        for shift in (0, 1):
            for j in range(sizes[kind]):
                rows.append(fill(templates[(j + shift) % len(templates)], cycles))
    for i in range(40):
        rows.append(fill(MIXED_TEMPLATES[i % len(MIXED_TEMPLATES)], cycles))
    for i in range(480):
        rows.append(fill(NEGATIVE_TEMPLATES[i % len(NEGATIVE_TEMPLATES)], cycles))
    # A row is written once even when two passes produced the same sentence.
    seen, unique = set(), []
    for r in rows:
        if r["text"] not in seen:
            seen.add(r["text"])
            unique.append(r)
    return unique


def main() -> None:
    rows = build()
    with open(OUT, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    n_pos = sum(len(r["spans"]) for r in rows)
    n_neg = sum(not r["spans"] for r in rows)
    print(f"{OUT}: {len(rows)} rows, {n_pos} labeled spans, {n_neg} hard-negative rows")


if __name__ == "__main__":
    main()
