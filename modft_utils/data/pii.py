"""PII scrubbing: replace personal data with typed placeholders such as ``[EMAIL]``.

Detected kinds and how each is confirmed (a pattern alone is never enough where a checksum exists):

- ``EMAIL``: local part + dotted domain with an alphabetic top-level domain.
- ``URL``: http(s)/ftp/www URLs and bare profile links; by default only those carrying identity
  (``user:pass@``, a profile path or handle, a query with a user id or an e-mail).
- ``IBAN``: country code + check digits, the country's registered length, ISO 13616 mod-97 == 1.
- ``CREDIT_CARD``: 13-19 digits (run together or in the usual groups), issuer digit 2-6, Luhn.
- ``US_SSN``: ddd-dd-dddd except the never-issued areas 000/666/9xx, group 00 and serial 0000.
- ``IP_ADDRESS``: IPv4 (octets 0-255, no leading zeros) and IPv6 (checked by :mod:`ipaddress`).
- ``PHONE``: ``phonenumbers.PhoneNumberMatcher`` (leniency VALID) over the configured regions.

Numbers preceded by a context word such as "ISBN", "version" or "release" are not personal data
(``version 1.2.3.4`` is not an IP address, ``ISBN 0-306-40615-2`` is not a phone number).

Speed: every detector is one precompiled regex pass; Python-level work (checksums, the phone
library) runs only on the few candidates a regex found, so plain prose costs a handful of C-level
scans. Phone numbers in particular are parsed only inside digit runs the prefilter selected. The
patterns start with a character class and check the preceding character with a lookbehind placed
after it: the regex engine can then skip ahead to candidate characters instead of trying the
lookbehind at every position (about four times faster on prose).
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import phonenumbers

# Overlaps are resolved in this order: an e-mail inside a URL query stays an e-mail, a card
# number that also parses as a phone number stays a card, and so on.
KINDS: tuple[str, ...] = ("EMAIL", "URL", "IBAN", "CREDIT_CARD", "US_SSN", "IP_ADDRESS", "PHONE")
_PRIORITY = {kind: rank for rank, kind in enumerate(KINDS)}


@dataclass(frozen=True)
class PiiSpan:
    """One detected item: ``text[start:end]`` of kind ``kind`` (one of :data:`KINDS`)."""

    start: int
    end: int
    kind: str
    text: str

    @property
    def placeholder(self) -> str:
        return placeholder(self.kind)


@dataclass
class PiiConfig:
    """What the scrubber looks for."""

    kinds: tuple[str, ...] = field(default=KINDS, metadata={"help": "kinds to detect, a subset of KINDS"})
    urls: Literal["identity", "all", "none"] = field(
        default="identity",
        metadata={"help": "'identity': only URLs that name a person or account; 'all': every URL; 'none': no URL"},
    )
    phone_regions: tuple[str, ...] = field(
        default=("US", "GB", "DE", "FR", "IN"),
        metadata={"help": "regions tried, in order, for numbers written without a +country code"},
    )

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        self.phone_regions = tuple(self.phone_regions)
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"PiiConfig.kinds: unknown kind(s) {unknown}; choose from {list(KINDS)}")
        if self.urls not in ("identity", "all", "none"):
            raise ValueError(f"PiiConfig.urls must be 'identity', 'all' or 'none', not {self.urls!r}")
        supported = phonenumbers.SUPPORTED_REGIONS
        bad = [r for r in self.phone_regions if r not in supported]
        if bad:
            raise ValueError(f"PiiConfig.phone_regions: {bad} are not ISO 3166 regions phonenumbers knows")


def placeholder(kind: str) -> str:
    """The replacement text for a kind: ``[EMAIL]``, ``[PHONE]``..."""
    return f"[{kind}]"


# ---------------------------------------------------------------- patterns

# Words after which a dotted or dashed number is a catalogue or version number, not personal data.
_NEG_CONTEXT = re.compile(
    r"(?:\b(?:ISBN(?:-1[03])?|ISSN|version|versions|ver|v|release|releases|build|firmware|rev|revision|"
    r"patch|update|section|chapter|clause|doi|arXiv)\b|§)[\s:#.]*$",
    re.IGNORECASE,
)
_NEG_WINDOW = 24
# A dotted quad is also how software versions look ("update V8 to 10.2.154.26"): for IPv4 the
# context word may stand up to two plain words before the number. A dotted word in between ends
# the context: in "version 1.2.3.4 on 10.0.0.1" the version is 1.2.3.4 and 10.0.0.1 is a host.
_NEG_CONTEXT_IPV4 = re.compile(
    r"\b(?:version|versions|ver|v|release|releases|build|firmware|rev|revision|patch|update|upgrade|"
    r"section|chapter|clause)\b(?:[\s:#]+[\w-]{1,16}){0,2}[\s:#.]*$",
    re.IGNORECASE,
)
_NEG_WINDOW_IPV4 = 48

# E-mails are found from their "@": the local part is read backwards from it, the domain forwards.
_EMAIL_LOCAL = re.compile(r"[\w%+-]+(?:\.[\w%+-]+)*\Z")
_EMAIL_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")
_EMAIL_MAX_LOCAL = 64
# Before the local part: "user:pass@host" is URL userinfo (the URL detector owns it) and
# "/path@x.y" a file name; "mailto:" is the one colon allowed.
_EMAIL_BAD_BEFORE = frozenset(".+%:/-")
_EMAIL_IN_QUERY = re.compile(r"^[\w.%+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+$", re.IGNORECASE)

_SOCIAL = (
    r"github\.com|gitlab\.com|twitter\.com|x\.com|facebook\.com|fb\.com|instagram\.com|linkedin\.com|"
    r"medium\.com|reddit\.com|youtube\.com|tiktok\.com|pinterest\.com|threads\.net|bsky\.app|"
    r"keybase\.io|about\.me|gravatar\.com|vk\.com|t\.me"
)
_URL_CHARS = r"[^\s<>\"'`{}|\\^]+"
_URL = re.compile(r"[hfw](?<![\w][hfw])(?:ttps?://|tp://|ww\.)" + _URL_CHARS, re.IGNORECASE)
# Profile links are often written without a scheme ("github.com/jdoe"); that pattern is costly, so
# it only runs on text holding one of these endings.
_BARE_SOCIAL = re.compile(r"(?<![\w.@/-])(?:[a-z0-9-]+\.)*(?:" + _SOCIAL + r")/" + _URL_CHARS, re.IGNORECASE)
_SOCIAL_HINTS = (".com/", ".net/", ".app/", ".io/", ".me/")
_URL_TRAIL = ".,;:!?'\")]}"
_SOCIAL_HOST = re.compile(r"(?:^|\.)(?:" + _SOCIAL + r")$", re.IGNORECASE)
# First path segments of social hosts that are site pages, not accounts.
_SOCIAL_RESERVED = frozenset(
    "about features pricing login logout signup join search explore topics trending settings help "
    "docs blog home hashtag i intent share sharer watch results feed jobs company school groups "
    "events marketplace pages policies privacy terms legal r tag tags hashtag notifications "
    "orgs enterprise sponsors marketplace collections security contact".split()
)
# Path segments that name an account on any site: ~home pages, @handles, /users/<name> and kin.
_PROFILE_PATH = re.compile(
    r"/(?:~[\w.-]+|@[\w.-]+|(?:user|users|profile|profiles|people|member|members|author|authors|"
    r"account|accounts|staff)/[^/?#]+)",
    re.IGNORECASE,
)
# Short prefixes that name an account only on their own site ("/c/" elsewhere is often a category).
_SITE_PROFILE_PATH = {
    "linkedin.com": re.compile(r"/(?:in|pub)/[^/?#]+", re.IGNORECASE),
    "youtube.com": re.compile(r"/(?:c|channel|user)/[^/?#]+", re.IGNORECASE),
    "reddit.com": re.compile(r"/(?:u|user)/[^/?#]+", re.IGNORECASE),
}
_IDENTITY_KEYS = frozenset(
    "user userid user_id uid username uname login email e-mail mail account acct account_id member "
    "memberid member_id profile profile_id customer customer_id cust_id handle".split()
)

# Letters and digits grouped 4 by 4 in print, or run together; the country's length decides the end.
_IBAN = re.compile(r"[A-Z](?<![\w][A-Z])[A-Z][0-9]{2}(?: ?[A-Z0-9]){11,30}")
# ISO 13616 registry lengths (SWIFT IBAN registry).
_IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BI": 27,
    "BR": 29,
    "BY": 28,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DJ": 27,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FK": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HN": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IQ": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LC": 32,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "LY": 25,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MN": 20,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NI": 28,
    "NL": 18,
    "NO": 15,
    "OM": 23,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "RU": 33,
    "SA": 24,
    "SC": 31,
    "SD": 18,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "SO": 23,
    "ST": 25,
    "SV": 28,
    "TL": 23,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VA": 22,
    "VG": 24,
    "XK": 20,
    "YE": 30,
}

_CARD = re.compile(
    # Issuer digit 2-6 (Mastercard 2-series and 5, Amex/Diners/JCB 3, Visa 4, Discover 6); not a
    # slice of a longer grouped number such as an IBAN ("DE89 3704 0044 ...").
    r"[2-6](?<![\w.,+-][2-6])(?<![0-9A-Z][ -][2-6])"
    r"(?:[0-9]{12,18}"
    r"|[0-9]{3}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{1,4}(?:\1[0-9]{1,3})?"  # 4-4-4-4 (-3), Visa/MC/Maestro
    r"|[0-9]{3}([ -])[0-9]{6}\2[0-9]{4,5})"  # 4-6-5 Amex, 4-6-4 Diners
    r"(?![\w]|[ .,-][0-9])"
)

# Areas 9xx are excluded by the first digit; 000/666, group 00 and serial 0000 by _find_ssns.
_SSN = re.compile(r"[0-8](?<![\w-][0-8])[0-9]{2}-[0-9]{2}-[0-9]{4}(?![\w]|-[0-9])")

# Octet values are checked by _find_ips. Not followed by ".digit" (a longer dotted number) nor
# ".word" (a host name such as 192.0.2.1.example.com).
_IPV4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w]|\.[\w-])")
# A loose shape (at least two colons among hex groups); ipaddress decides what is really IPv6.
_IPV6 = re.compile(
    r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*"
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?:%[\w.]+)?(?![\w:]|\.[0-9])"
)

# Digit runs that could hold a phone number: an optional +, digits with the separators people use.
# Digit runs with the separators people use; a leading "(", "+" or "+ " is added by _find_phones.
_PHONE_CANDIDATE = re.compile(r"[0-9](?<![\w@.,/#`-][0-9])[0-9 \u00a0().\-/]{5,24}[0-9]")
# Not after "#" (order and issue numbers) or "`" (commit hashes and code in Markdown).
_PHONE_BAD_BEFORE = re.compile(r"[\w+@.,/#`-]")
_DATE_LIKE = re.compile(
    r"(?:[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}|[0-9]{1,2}[-/.][0-9]{1,2}[-/.](?:[0-9]{4}|[0-9]{2}))"
    r"(?:[ T][0-9]{1,2})?"
)
# A US ZIP+4 code ("MA 02110-1301") is a valid German or Indian number to the parser.
_ZIP_PLUS4 = re.compile(r"[0-9]{5}-[0-9]{4}")
# People separate a phone number's groups with one kind of mark; "252.227-7014" (a regulation)
# or "1895.22/1013" (a handle) mixes dots with dashes or slashes.
_MIXED_SEPARATORS = re.compile(r"[0-9]\.[0-9].*[0-9][-/][0-9]|[0-9][-/][0-9].*[0-9]\.[0-9]")
_LENIENCY = phonenumbers.Leniency.VALID
# National numbers have at most 13 digits with their trunk prefix; longer runs without "+" are
# account or card numbers, and letting the phone parser cut them into pieces only makes noise.
_MAX_NATIONAL_DIGITS = 13
# E.164 allows 15 digits after the country code's "+"; "00"/"011" dialing prefixes add up to three.
_MAX_INTERNATIONAL_DIGITS = 18
_INTERNATIONAL_PREFIXES = ("+", "00", "011")


# ---------------------------------------------------------------- checksums


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check of a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: registered length for the country and mod-97 of the rearranged number equal to 1."""
    iban = iban.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# ---------------------------------------------------------------- detectors


def _negative_context(text: str, start: int) -> bool:
    return _NEG_CONTEXT.search(text, max(0, start - _NEG_WINDOW), start) is not None


def _negative_context_ipv4(text: str, start: int) -> bool:
    return (
        _negative_context(text, start)
        or _NEG_CONTEXT_IPV4.search(text, max(0, start - _NEG_WINDOW_IPV4), start) is not None
    )


def _find_emails(text: str) -> Iterable[tuple[int, int]]:
    at = text.find("@")
    while at != -1:
        nxt = at + 1
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if domain:
            lo = max(0, at - _EMAIL_MAX_LOCAL)
            local = _EMAIL_LOCAL.search(text[lo:at])
            if local:
                start = lo + local.start()
                before = text[start - 1] if start else " "
                ok = not (before.isalnum() or before == "_" or before in _EMAIL_BAD_BEFORE)
                if ok or (before == ":" and text.endswith("mailto", 0, start - 1)):
                    yield start, domain.end()
                    nxt = domain.end()
        at = text.find("@", nxt)


def _url_has_identity(url: str) -> bool:
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a malformed IPv6 host; such a string is not a usable link anyway
        return False
    if "@" in parts.netloc:
        return True
    host = (parts.hostname or "").lower()
    path = parts.path
    if _PROFILE_PATH.search(path):
        return True
    site = ".".join(host.split(".")[-2:])
    if site in _SITE_PROFILE_PATH and _SITE_PROFILE_PATH[site].match(path):
        return True
    segments = [s for s in path.split("/") if s]
    if _SOCIAL_HOST.search(host) and len(segments) == 1 and segments[0].lower() not in _SOCIAL_RESERVED:
        return True
    for key, value in parse_qsl(parts.query, keep_blank_values=False):
        if key.lower() in _IDENTITY_KEYS or _EMAIL_IN_QUERY.match(unquote(value)):
            return True
    return False


def _find_urls(text: str, mode: str) -> Iterable[tuple[int, int]]:
    matches = list(_URL.finditer(text))
    if any(h in text for h in _SOCIAL_HINTS):
        taken = [(m.start(), m.end()) for m in matches]
        matches += [m for m in _BARE_SOCIAL.finditer(text) if not any(s <= m.start() < e for s, e in taken)]
    for m in matches:
        start, end = m.start(), m.end()
        while end > start and text[end - 1] in _URL_TRAIL:
            # Keep a closing bracket that closes one opened inside the URL (Wikipedia links).
            ch = text[end - 1]
            if ch == ")" and text.count("(", start, end) >= text.count(")", start, end):
                break
            end -= 1
        if mode == "all" or _url_has_identity(text[start:end]):
            yield start, end


def _find_ibans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        start = m.start()
        want = _IBAN_LENGTHS.get(text[start : start + 2])
        if want is None:
            continue
        # Walk the match until the country's length is reached, so a following code word
        # ("... 3000 BIC ...") is not swallowed.
        count, end, s = 0, start, m.group()
        for i, ch in enumerate(s):
            if ch != " ":
                count += 1
                if count == want:
                    end = start + i + 1
                    break
        if count != want or (end < len(text) and text[end].isalnum()):
            continue
        if iban_valid(text[start:end]):
            yield start, end


def _find_cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = m.group().replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and not _negative_context(text, m.start()):
            yield m.start(), m.end()


def _find_ssns(text: str) -> Iterable[tuple[int, int]]:
    for m in _SSN.finditer(text):
        ssn = m.group()
        if ssn[:3] in ("000", "666") or ssn[4:6] == "00" or ssn[7:] == "0000":
            continue
        if not _negative_context(text, m.start()):
            yield m.start(), m.end()


def _find_ips(text: str) -> Iterable[tuple[int, int]]:
    if "." in text:
        for m in _IPV4.finditer(text):
            octets = m.group().split(".")
            if any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in octets):
                continue
            if not _negative_context_ipv4(text, m.start()):
                yield m.start(), m.end()
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            candidate = m.group()
            # A sentence may end on the address: "... at fe80::1:" leaves a dangling colon.
            while candidate.endswith(":") and not candidate.endswith("::"):
                candidate = candidate[:-1]
            try:
                ipaddress.IPv6Address(candidate.split("%")[0])
            except ValueError:
                continue
            end = m.start() + len(candidate)
            # "f32::" or "Vec::" in code is a path, not an address: a real one has two or more
            # groups and ends on a group (a trailing "::" only in prefix notation, "2001:db8::/32").
            groups = [g for g in re.split(r"[:.%]", candidate) if g]
            if len(groups) < 2 or (candidate.endswith("::") and not text.startswith("/", end)):
                continue
            if any(c.isdigit() for c in candidate):
                yield m.start(), end


def _find_phones(
    text: str, regions: Sequence[str], covered: Sequence[tuple[int, int]] = ()
) -> Iterable[tuple[int, int]]:
    """Phone numbers; ``covered`` (sorted spans already found by other detectors) saves parsing runs
    that lie wholly inside one of them, since a phone there would lose the overlap anyway."""
    cover_starts = [s for s, _ in covered]
    for m in _PHONE_CANDIDATE.finditer(text):
        start, end = m.start(), m.end()
        if start and text[start - 1] == "(":
            start -= 1
        if start and text[start - 1] == "+":
            start -= 1
        elif start > 1 and text[start - 1] in " \u00a0" and text[start - 2] == "+":
            start -= 2
        if start and _PHONE_BAD_BEFORE.match(text, start - 1):
            continue
        i = bisect_right(cover_starts, start) - 1
        if i >= 0 and covered[i][1] >= end:
            continue
        candidate = text[start:end]
        n_digits = sum(ch.isdigit() for ch in candidate)
        if n_digits < 6:
            continue
        limit = _MAX_INTERNATIONAL_DIGITS if candidate.startswith(_INTERNATIONAL_PREFIXES) else _MAX_NATIONAL_DIGITS
        if n_digits > limit:
            continue
        if _DATE_LIKE.fullmatch(candidate) or _ZIP_PLUS4.fullmatch(candidate) or _MIXED_SEPARATORS.search(candidate):
            continue
        if _negative_context(text, start) or text.startswith("`", end):
            continue
        # The matcher sees a little context on each side: it rejects numbers glued to letters and
        # time stamps such as "2023-05-17 12" followed by ":30".
        lo, hi = max(0, start - 1), min(len(text), end + 3)
        window = text[lo:hi]
        # An international number needs no region; "ZZ" (unknown) parses it once instead of per region.
        for region in ("ZZ",) if candidate.startswith("+") else regions:
            found = [
                (lo + pm.start, lo + pm.end)
                for pm in phonenumbers.PhoneNumberMatcher(window, region, leniency=_LENIENCY)
                if lo + pm.start >= start and lo + pm.end <= end
            ]
            if found:
                yield from found
                break


# ---------------------------------------------------------------- public API


def find_pii(text: str, config: PiiConfig | None = None) -> list[PiiSpan]:
    """Personal data in ``text``: non-overlapping spans sorted by start.

    Where detectors overlap the kind earlier in :data:`KINDS` wins (e-mail > URL > IBAN > card >
    SSN > IP > phone), whatever the span lengths.
    """
    config = config or PiiConfig()
    kinds = set(config.kinds)
    found: list[tuple[int, int, int, str]] = []  # (priority, start, end, kind)

    def add(kind: str, spans: Iterable[tuple[int, int]]) -> None:
        found.extend((_PRIORITY[kind], s, e, kind) for s, e in spans)

    if "EMAIL" in kinds:
        add("EMAIL", _find_emails(text))
    if "URL" in kinds and config.urls != "none":
        add("URL", _find_urls(text, config.urls))
    if "IBAN" in kinds:
        add("IBAN", _find_ibans(text))
    if "CREDIT_CARD" in kinds:
        add("CREDIT_CARD", _find_cards(text))
    if "US_SSN" in kinds:
        add("US_SSN", _find_ssns(text))
    if "IP_ADDRESS" in kinds:
        add("IP_ADDRESS", _find_ips(text))
    if "PHONE" in kinds:
        covered = sorted((s, e) for _, s, e, _ in found)
        add("PHONE", _find_phones(text, config.phone_regions, covered))

    found.sort()
    starts: list[int] = []  # accepted spans kept sorted by start for the overlap test
    accepted: list[tuple[int, int, str]] = []
    for _, s, e, kind in found:
        i = bisect_left(starts, s)
        if i > 0 and accepted[i - 1][1] > s:
            continue
        if i < len(accepted) and accepted[i][0] < e:
            continue
        starts.insert(i, s)
        accepted.insert(i, (s, e, kind))
    return [PiiSpan(s, e, kind, text[s:e]) for s, e, kind in accepted]


def scrub_pii_with_spans(text: str, config: PiiConfig | None = None) -> tuple[str, list[PiiSpan]]:
    """``text`` with every span replaced by its placeholder, and the spans (offsets in ``text``)."""
    spans = find_pii(text, config)
    if not spans:
        return text, spans
    pieces, pos = [], 0
    for s in spans:
        pieces.append(text[pos : s.start])
        pieces.append(placeholder(s.kind))
        pos = s.end
    pieces.append(text[pos:])
    return "".join(pieces), spans


def scrub_pii(text: str, config: PiiConfig | None = None) -> str:
    """``text`` with personal data replaced by typed placeholders such as ``[EMAIL]``."""
    return scrub_pii_with_spans(text, config)[0]


def remap_span(spans: Sequence[PiiSpan], start: int, end: int) -> tuple[int, int] | None:
    """Where ``original[start:end]`` sits in the scrubbed text, or None if it touches any PII span.

    ``spans`` are those :func:`scrub_pii_with_spans` returned for the same original text; used to
    re-locate a QA answer after its context was scrubbed.
    """
    shift = 0
    for s in spans:
        if s.start >= end:
            break
        if s.end > start:  # overlaps [start, end)
            return None
        shift += len(placeholder(s.kind)) - (s.end - s.start)
    return start + shift, end + shift


# ---------------------------------------------------------------- evaluation


def evaluate_pii(
    rows: Iterable[Mapping[str, Any]],
    config: PiiConfig | None = None,
    match: Literal["exact", "overlap"] = "exact",
) -> dict[str, Any]:
    """Span-level precision, recall and F1 per kind and overall on labeled rows.

    Each row is ``{"text": str, "spans": [{"start", "end", "kind"}, ...]}``. A predicted span is a
    true positive when a not yet matched gold span of the same kind has exactly the same offsets
    (``match="exact"``) or shares at least one character with it (``match="overlap"``). A gold span
    found with the wrong kind counts as a miss for its kind and a false alarm for the other.
    Returns ``{"per_kind": {kind: counts and scores}, "overall": ..., "rows", "negative_rows",
    "negative_rows_flagged", "errors": [first mistakes, for reading]}``.
    """
    if match not in ("exact", "overlap"):
        raise ValueError(f"match must be 'exact' or 'overlap', not {match!r}")
    counts = {k: {"gold": 0, "predicted": 0, "tp": 0} for k in KINDS}
    n_rows = n_neg = n_neg_flagged = 0
    errors: list[dict[str, Any]] = []
    for row in rows:
        text = row["text"]
        gold = [(g["start"], g["end"], g["kind"]) for g in row["spans"]]
        pred = find_pii(text, config)
        n_rows += 1
        if not gold:
            n_neg += 1
            n_neg_flagged += bool(pred)
        used = [False] * len(gold)
        for g in gold:
            counts[g[2]]["gold"] += 1
        for p in pred:
            counts[p.kind]["predicted"] += 1
            for i, (gs, ge, gk) in enumerate(gold):
                if used[i] or gk != p.kind:
                    continue
                hit = (gs, ge) == (p.start, p.end) if match == "exact" else (gs < p.end and p.start < ge)
                if hit:
                    used[i] = True
                    counts[gk]["tp"] += 1
                    break
            else:
                errors.append({"text": text, "false_positive": (p.start, p.end, p.kind, p.text)})
        for i, g in enumerate(gold):
            if not used[i]:
                errors.append({"text": text, "missed": (g[0], g[1], g[2], text[g[0] : g[1]])})

    def scores(c: dict[str, int]) -> dict[str, float | int]:
        p = c["tp"] / c["predicted"] if c["predicted"] else 1.0
        r = c["tp"] / c["gold"] if c["gold"] else 1.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return {**c, "precision": p, "recall": r, "f1": f1}

    total = {key: sum(c[key] for c in counts.values()) for key in ("gold", "predicted", "tp")}
    return {
        "match": match,
        "per_kind": {k: scores(c) for k, c in counts.items()},
        "overall": scores(total),
        "rows": n_rows,
        "negative_rows": n_neg,
        "negative_rows_flagged": n_neg_flagged,
        "errors": errors[:50],
    }


def pii_eval_table(result: Mapping[str, Any]) -> str:
    """:func:`evaluate_pii`'s figures as a fixed-width table."""
    lines = [f"{'kind':<12} {'gold':>5} {'pred':>5} {'tp':>5} {'precision':>9} {'recall':>7} {'f1':>6}"]
    rows = [*result["per_kind"].items(), ("overall", result["overall"])]
    for kind, r in rows:
        lines.append(
            f"{kind:<12} {r['gold']:>5} {r['predicted']:>5} {r['tp']:>5} "
            f"{r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f}"
        )
    lines.append(
        f"({result['match']} span match; {result['negative_rows_flagged']} of "
        f"{result['negative_rows']} hard-negative rows flagged)"
    )
    return "\n".join(lines)
