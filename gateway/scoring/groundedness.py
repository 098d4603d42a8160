"""The default groundedness evaluator: offline, standard library only, about a millisecond.

The answer is split into sentences, and sentences into claims (on ";" and on a coordinating
conjunction that joins two clauses: ", but", ", and", "whereas", a bare "and" before a clause
with its own subject and verb). The context is split the same way, into clauses. Each claim is:

- an **abstention** ("the passages do not say", "the leaflet doesn't mention", "I don't know",
  "there is no information available", "a human agent will follow up"): supported, never a
  hallucination;
- dropped when it carries nothing to check (a courtesy like "Hope this helps!", a question back,
  advice to ask someone else: "please ask a pharmacist");
- otherwise checked against the context, and **unsupported** if any check fails:

  * *numbers and amounts*: every number in the claim (decimals, "1,200" == "1200", "30%" ==
    "30 percent", "$1,200.50", "€30", "30 USD", ordinals, number words before a unit or a
    counted noun: "thirty days", "three bags") occurs in the context with the same unit or
    currency when both name one ("60 days" fails against "30 days"; "30 weeks" fails against
    "30 days"; "$30" fails against "€30"), and the same rate when both give one ("$20 per user
    per month" against "per year"); time units convert exactly ("3 weeks" == "21 days");
  * *dates and times*: ISO dates, "5 December 2026", "Dec 5", "December 2026", day ranges
    ("2-3 April", "April 2 and 3"), weekdays (context ranges like "Monday to Friday" count every
    day between; "weekends" are Saturday and Sunday), "9am", "17:00";
  * *named entities*: capitalised spans (less a sentence's opening word, unless the context uses
    it as a name), acronyms ("EU", "SSO"; or the initials of a name in the context: "US") and
    letter-digit codes ("S3", "v2"): every word occurs in the context;
  * *absolute terms* ("unlimited", "lifetime", "guaranteed", "instantly", "free", ...) occur in
    the context;
  * *swapped values*: for each of the claim's numbers and names, the context clause that shares
    most of the rest of the claim (words weighted by their rarity in the context) is the
    statement the claim restates; if it lacks the value and holds a different one of the same
    kind, the claim swapped it in ("Buzz Aldrin remained in orbit" against "..., while Michael
    Collins remained in orbit"), unless a clause holding the value shares nearly as much;
  * *negation*: the context clause that shares the most content words with the claim (at
    least two, and 60 % of the claim's or of the clause's) must agree with it on negation, by
    the parity of negation cues ("do not give ... without advice" is not "can be given without
    advice"); bounds are not negations ("no more than 8" is "a maximum of 8"), and words that
    mean "not" are ("excluded" is "not included");
  * *content overlap*: the share of the claim's content words (lowercased, stopwords and hedges
    dropped, lightly stemmed, common synonyms and idioms folded) found in the context is at least
    ``min_overlap`` (0.5). Verified numbers and dates count as matched words; words of the
    question count half: restating the question is not support, but it is not invention either.

The score is the share of unsupported claims **weighted by claim length** (its number of
content words, at least 1), so a long invented sentence weighs more than a short one. An empty
answer scores 0 with no claims; with an empty context every claim but an abstention is
unsupported. Input beyond ``max_answer_chars`` / ``max_context_chars`` is not read (the
judgement's ``extra["truncated"]`` says so), which bounds the time per answer.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from gateway.scoring.evaluator import ClaimVerdict, Judgement, Verdict, weighted_score

# --- words -------------------------------------------------------------------------------------

STOPWORDS: Final = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing done down during each either
    else etc even ever every few for from further had has have having he her here hers herself
    him himself his how however i if in into is it its itself just let lets like ll may me
    might more most much must my myself neither nor now of off on once one only onto or other
    our ours ourselves out over own per please re same shall she should since so some still
    such than that the their theirs them themselves then there these they this those though
    through thus to too under until up upon us ve very via was we were what when where whether
    which while who whom whose why will with within would yes yet you your yours yourself
    yourselves ca wo sure simply really certainly definitely absolutely okay ok well
    able get gets got getting make makes made need needs want wants go goes going s t d m
    according passage passages context document documents article articles source sources
    information info based stated states say says said mention mentions mentioned note
    unfortunately fortunately sadly additionally furthermore moreover therefore hence basically actually
    usually typically generally normally roughly approximately around nearly almost currently
    """.split()  # noqa: SIM905 - a word list reads better as text
)

#: Negation cues; "n't" is rewritten to " not" before tokenising.
NEGATIONS: Final = frozenset({"not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without",
                              "non", "cannot", "nowhere"})
_NEGATION_PREFIXES: Final = ("non", "un")

_IRREGULAR: Final = {
    "bought": "buy", "paid": "pay", "took": "take", "taken": "take", "sent": "send", "gave": "give",
    "given": "give", "kept": "keep", "left": "leave", "held": "hold", "chose": "choose",
    "chosen": "choose", "written": "write", "wrote": "write", "spent": "spend", "lost": "lose",
    "children": "child", "people": "person", "data": "data", "does": "do", "did": "do",
}

#: Small groups of common synonyms in support answers, folded to one token.
_SYNONYMS: Final = (
    ("refund", "reimburse", "reimbursement", "repay", "repayment"),
    ("buy", "purchase", "order"),
    ("cost", "price", "fee", "charge", "pricing"),
    ("cancel", "cancellation", "terminate", "termination"),
    ("start", "begin", "commence"),
    ("end", "finish", "expire", "expiry", "expiration"),
    ("help", "assist", "assistance", "support"),
    ("receive", "obtain"),
    ("allow", "permit", "enable"),
    ("require", "requirement", "mandatory"),
    ("contact", "reach"),
    ("free", "complimentary"),
    ("quick", "fast", "rapid"),
    ("delete", "remove", "erase", "deletion", "removal"),
    ("move", "migrate", "migration", "transfer"),
    ("use", "utilize", "utilise"),
    ("customer", "client"),
    ("login", "signin"),
    ("email", "mail"),
    ("problem", "issue"),
    ("week", "weekly"),
    ("additional", "extra"),
    ("day", "daily"),
    ("ship", "shipment", "delivery", "deliver", "dispatch"),
    ("book", "booking", "reserve", "reservation", "schedule"),
    ("online", "website", "web", "internet"),
    ("advance", "ahead", "beforehand"),
    ("next", "following", "subsequent"),
    ("unused", "leftover", "remaining"),
    ("carry", "roll"),
    ("stay", "remain"),
    ("employee", "staff", "worker", "personnel"),
    ("doctor", "physician", "gp"),
    ("phone", "telephone"),
    ("big", "large", "huge"),
    ("small", "little", "tiny"),
    ("maximum", "max"),
    ("minimum", "min"),
    ("limit", "cap", "restriction", "restrict"),
    ("answer", "respond", "response", "reply"),
    ("approve", "approval", "authorise", "authorize", "authorisation", "authorization"),
    ("exceed", "surpass"),
    ("include", "contain", "comprise"),
    ("moon", "lunar"),
    ("sun", "solar"),
    ("car", "vehicle"),
    ("shut", "closed", "close"),
    ("error", "failure", "fault"),
    ("choose", "select", "pick"),
    ("show", "display"),
)

_SUFFIXES: Final = ("ational", "ation", "ition", "ability", "ibility", "ments", "ment", "ness", "ingly", "ing",
                    "ies", "ied", "edly", "ed", "able", "ible", "ly", "es", "s", "ion", "ate", "ity", "ive",
                    "ize", "ise")


def stem(word: str) -> str:
    """A light stemmer: "refunds"/"refunded"/"refundable" -> "refund", "shipped"/"shipping" -> "ship"."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                continue
            if suffix in ("ies", "ied"):
                word = word[: -len(suffix)] + "y"
            elif suffix == "es" and not word.endswith(("ses", "xes", "zes", "ches", "shes")):
                word = word[:-1]
            else:
                word = word[: -len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # shipp -> ship, committ -> commit (but not "process", "call")
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]  # purchase/purchas
    if len(word) > 4 and word.endswith("ll"):
        word = word[:-1]  # cancell -> cancel
    return word


def _build_synonyms() -> dict[str, str]:
    table: dict[str, str] = {}
    for group in _SYNONYMS:
        head = stem(group[0])
        for word in group:
            table[stem(word)] = head
    return table


_SYNONYM_OF: Final = _build_synonyms()


@functools.lru_cache(maxsize=16384)
def canonical(word: str) -> str:
    """A word's stem, folded to its synonym group's (cached: answers reuse a small vocabulary)."""
    s = stem(word)
    return _SYNONYM_OF.get(s, s)


# --- text normalisation and splitting ----------------------------------------------------------

_PUNCT_MAP: Final = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"',
    "\u2013": "-", "\u2014": " - ", "\u2212": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " ",
})
_CITATION: Final = re.compile(r"\[\d{1,3}(?:\s*[,-]\s*\d{1,3})*\]")
_SPACE_BEFORE_PUNCT: Final = re.compile(r"[ \t]+([.,;:!?])")
_MARKDOWN: Final = re.compile(r"[*_`#>]+")
_LIST_MARKER: Final = re.compile(r"(?m)^\s*(?:[-+\u2022]|\d{1,2}[.)])\s+")
#: A yes/no word opening an answer is not part of its claim's polarity ("No, annual plans can ...");
#: it needs its punctuation ("No one can ..." keeps its "No").
_INTERJECTION: Final = re.compile(
    r"^(?:yes|no|nope|yeah|yep|sure|ok|okay|of course|absolutely|sorry)(?:[,!.:;]|\s+-)\s+(?=\S)", re.IGNORECASE
)
_GREETING: Final = re.compile(r"^(?:hi|hello|hey|dear|good (?:morning|afternoon|evening))\b[^,.!\n]{0,40}[,!]\s*",
                              re.IGNORECASE)
_ABBREVIATIONS: Final = frozenset({"e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "st", "no", "jan", "feb",
                                   "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "approx",
                                   "incl", "inc", "ltd", "co"})
_ASCII_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SENTENCE_END: Final = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")


def normalise(text: str) -> str:
    """NFKC, ASCII quotes and dashes, and control or format characters (but line breaks) as spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_PUNCT_MAP)
    if text.isascii():
        return _ASCII_CONTROL.sub(" ", text)
    return "".join(ch if unicodedata.category(ch)[0] != "C" or ch in "\n\t" else " " for ch in text)


def sentences(text: str) -> list[str]:
    """Sentences, on ., ! or ? followed by a space (not after a common abbreviation) or a line break."""
    text = _LIST_MARKER.sub("", _MARKDOWN.sub("", _SPACE_BEFORE_PUNCT.sub(r"\1", _CITATION.sub("", text))))
    out: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start:match.start()]
        if match.group().strip(" \t\"')]") == "" and "\n" not in match.group():
            last = piece.rstrip(".!?\"')]").rsplit(None, 1)
            abbreviation = last[-1].lower().rstrip(".") if last else ""
            if abbreviation in _ABBREVIATIONS and piece.endswith(".") and \
                    (abbreviation != "no" or text[match.end():match.end() + 1].isdigit()):
                continue  # "e.g. the", "Dec. 5", "No. 5" (but "No. Annual plans ..." ends a sentence)
            nxt = text[match.end():match.end() + 1]
            if nxt and nxt.islower() and piece.endswith("."):
                continue  # "approx. three", "vs. the"
        out.append(piece)
        start = match.end()
    out.append(text[start:])
    return [s.strip() for s in out if s.strip()]


_CLAUSE_BREAK: Final = re.compile(
    r";\s*|,\s+(?=(?:and|but|yet|so|while|whereas|although|though|however|or)\s)|\s+(?=(?:but|whereas)\s)"
    r"|,\s+(?=as\s+(?:is|are|was|were|does|do|did|well\s+as)\s)",
    re.IGNORECASE,
)
_CONJUNCTION: Final = re.compile(r"^(?:and|but|yet|so|while|whereas|although|though|however|or"
                                 r"|as\s+(?:is|are|was|were|does|do|did|well\s+as))\s+,?\s*",
                                 re.IGNORECASE)
_FRAGMENT_START: Final = re.compile(r"^(?:not|no|only|also|for|with|without|in|on|at|by|to|from|of|as|than)\b",
                                    re.IGNORECASE)


def claims_of(sentence: str) -> list[tuple[str, bool]]:
    """A sentence's claims, each with whether it starts the sentence.

    It splits on ";" and before a coordinating conjunction that opens a clause; a piece too short
    to be a clause (under four words, or opening with "not", a preposition, ...) stays with the
    piece before it, so "refunds and exchanges" or "available, but not for monthly plans" stay
    whole. A bare "and" splits only before a clause with its own subject and verb ("... and no
    credit card is required"), both sides at least four words long.
    """
    pieces: list[tuple[str, str]] = []  # (separator before, text)
    start, separator = 0, ""
    for match in _CLAUSE_BREAK.finditer(sentence):
        pieces.append((separator, sentence[start:match.start()]))
        start, separator = match.end(), match.group()
    pieces.append((separator, sentence[start:]))
    merged: list[str] = []
    for separator, piece in pieces:
        piece = piece.strip()
        body = _CONJUNCTION.sub("", piece)
        if merged and (len(body.split()) < 4 or _FRAGMENT_START.match(body)):
            merged[-1] = f"{merged[-1]}{separator}{piece}" if piece else merged[-1]
        elif piece:
            merged.append(piece if not merged else body)
    claims: list[str] = []
    for claim in merged:
        claims.extend(_split_bare_and(claim))
    return [(claim.strip(" ,"), i == 0) for i, claim in enumerate(claims) if claim.strip(" ,")]


_AUXILIARY: Final = (r"(?:is|are|was|were|can|cannot|can't|will|won't|must|may|should|has|have|had|does|do|did"
                     r"|isn't|aren't|doesn't|don't|gets?|takes?|costs?|includes?|requires?|needs?|applies|apply)")
_BARE_AND: Final = re.compile(
    r"\s+and\s+(?=(?:it|you|we|they|he|she|this|that|there|i)\s+\w|(?:[\w'-]+\s+){1,3}" + _AUXILIARY + r"\b"
    # ... or before a long noun phrase of its own: "the original receipt and the serial number
    # printed on the box" holds two things to check.
    r"|(?:the|a|an|its|their|your|our|his|her)\s+(?:[\w'-]+\s+){3})",
    re.IGNORECASE,
)


def _split_bare_and(claim: str) -> list[str]:
    parts: list[str] = []
    start = 0
    for match in _BARE_AND.finditer(claim):
        left, right = claim[start:match.start()], claim[match.end():]
        if len(left.split()) >= 4 and len(right.split()) >= 4:
            parts.append(left)
            start = match.end()
    parts.append(claim[start:])
    return parts


_WORD: Final = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


#: A few common idioms, read as the word they mean before tokenising.
#: A few common idioms, read as the word they mean before tokenising. Each has a substring that
#: must occur for it to match, tested first: a pattern costs a scan of the text, a test does not.
_PHRASES: Final = (
    (("money",), re.compile(r"\b(?:get|getting|got|receive|receiving)\s+(?:your\s+|their\s+|the\s+)?money\s+back\b"
                         r"|\bmoney[- ]back\b"), "refund"),
    # "at no charge" is "free": its "no" is not the claim's negation.
    (("charge",), re.compile(r"\b(?:at\s+|for\s+|with\s+)?(?:no|zero)\s+(?:extra\s+|additional\s+)?charge\b"
                          r"|\bfree\s+of\s+charge\b|\bwithout\s+(?:any\s+)?(?:extra\s+)?charge\b"), "free"),
    (("cost",), re.compile(r"\b(?:at\s+|for\s+|with\s+)?(?:no|zero)\s+(?:extra\s+|additional\s+)?cost\b"), "free"),
    (("back",), re.compile(r"\b(?:send|sent|sending|ship|shipping|bring|brought)\s+(?:it\s+|them\s+)?back\b"),
     "return"),
    # A bound is not a negation: "no more than 23 kg" is "up to 23 kg", "do not take more than 8"
    # is "take a maximum of 8".
    (("than",), re.compile(r"\b(?:no|not)\s+(?:(\w+)\s+)?(?:more|longer|greater|higher|larger|heavier)\s+than\b"),
     r"\1 maximum"),
    (("than",), re.compile(r"\b(?:no|not)\s+(?:(\w+)\s+)?(?:less|fewer|shorter|lower|smaller)\s+than\b"),
     r"\1 minimum"),
    (("than",), re.compile(r"\b(?:no|not)\s+later\s+than\b"), "by"),
    (("not ",), re.compile(r"\b(?:must|should|may|can|do|does|will)\s+not\s+(?:exceed|go\s+over)\b"
                        r"|\bnot\s+exceeding\b"), "maximum"),
    # Words that mean "not ...": their negation is the context's "not covered" or "not allowed".
    (("exclu",), re.compile(r"\bexclud(?:ed|es)\b"), "not included"),
    (("prohibit", "forbid", "bann"), re.compile(r"\b(?:prohibited|forbidden|banned)\b"), "not allowed"),
    (("away", "once"), re.compile(r"\b(?:right away|straight away|at once)\b"), "immediately"),
    (("good",), re.compile(r"\bfor good\b"), "permanently"),
    (("log", "sign"), re.compile(r"\b(?:log|sign)(?:ging|ged)?[- ]?(?:in|on)\b"), "login"),
    (("log", "sign"), re.compile(r"\b(?:log|sign)(?:ging|ged)?[- ]?(?:out|off)\b"), "logout"),
    (("clock",), re.compile(r"\b(?:a)?round the clock\b"), "24/7"),
)
_CONTRACTION: Final = re.compile(r"'(?:ll|re|ve|d|m)\b")


def expand_negations(text: str) -> str:
    """"can't" as "can not", "won't" as "will not", "isn't" as "is not", "cannot" as "can not"."""
    return (text.replace("can't", "can not").replace("Can't", "Can not").replace("won't", "will not")
            .replace("Won't", "Will not").replace("n't", " not").replace("cannot", "can not"))


def words(text: str) -> list[str]:
    """Lowercased word tokens: "n't" as "not", "cannot" as "can not", "you'll" as "you", a few
    idioms as the word they mean ("money back" as "refund"), "'s" dropped."""
    lowered = _CONTRACTION.sub("", expand_negations(text.lower()))
    for triggers, pattern, replacement in _PHRASES:
        if any(trigger in lowered for trigger in triggers):
            lowered = pattern.sub(replacement, lowered)
    return [w[:-2] if w.endswith("'s") else w for w in _WORD.findall(lowered)]


def content_words(tokens: Iterable[str], *, units: bool = False) -> list[str]:
    """The canonical forms of the content words (:func:`content_tokens`)."""
    return [canonical(t) for t in content_tokens(tokens, units=units)]


def content_tokens(tokens: Iterable[str], *, units: bool = False) -> list[str]:
    """Content words: no stopwords, negations, numbers or single letters, and (unless ``units``, as
    for the context) no unit right after a number ("30 days": the number check covers it; "per
    year" stays a content word)."""
    out: list[str] = []
    previous = ""
    for t in tokens:
        if not units and (t in _MEASURE_WORDS or t in _UNIT_QUALIFIERS) and (
                _HAS_DIGIT(previous) or previous in _NUMBER_WORDS or previous in _UNIT_QUALIFIERS):
            previous = previous if previous in _UNIT_QUALIFIERS else t
            continue
        previous = t
        if len(t) > 1 and t not in STOPWORDS and t not in NEGATIONS and not _HAS_DIGIT(t) and t not in _NUMBER_WORDS:
            out.append(t)
    return out


_HAS_DIGIT: Final = re.compile(r"\d").search


# --- abstentions and filler --------------------------------------------------------------------

_SOURCE: Final = (r"(?:passages?|context|documents?|documentation|docs|articles?|sources?|information|text"
                  r"|help[- ]?cent(?:re|er)|knowledge base|materials?|provided|available|excerpts?|snippets?"
                  r"|leaflet|manual|guide|faq|notes|records|results|page|extract)")
_ABSTENTION: Final = re.compile(
    "|".join((
        rf"\b(?:the|these|this|those|our|my)\s+(?:provided\s+|available\s+|given\s+|retrieved\s+)?"
        rf"(?:\w+\s+)?{_SOURCE}\s+"
        r"(?:(?:provided|given|available|above|here|retrieved|i\s+have|we\s+have)\s+)?"
        r"(?:do|does|did|is|are|was|were)\s+not\s+(?:say|mention|specify|state|cover|contain|include|provide|"
        r"address|answer|tell|indicate|describe|explain|list|discuss|give|clarify|show|seem)",
        r"\b(?:i|we)\s+(?:do\s+not|can\s+not|could\s+not|am\s+not\s+able\s+to|are\s+not\s+able\s+to|am\s+unable\s+to"
        r"|are\s+unable\s+to|was\s+unable\s+to|have\s+no|don't|can't)\s+(?:know|find|answer|determine|tell|say|confirm"
        r"|see|locate|verify|access|information|details|data on|record|have\s+(?:that|this|enough|any))",
        r"\b(?:i'm|i am|we're|we are)\s+not\s+(?:sure|certain|aware)",
        r"\bnot\s+(?:mentioned|specified|stated|documented|discussed|addressed|described|explained|indicated|"
        r"clarified|detailed)\b",
        rf"\bnot\s+(?:covered|provided|included|given|found|listed|available)\s+(?:in|by|from)\s+(?:the\s+)?{_SOURCE}",
        r"\bno\s+(?:information|mention|details?|indication|data)\s+(?:about|on|regarding|of|as to|is given|in)\b",
        r"\b(?:not|insufficient|isn't)\s+enough\s+information\b|\binsufficient\s+information\b",
        # "... doesn't say anything about X": a speech verb, whatever the subject, is about the source.
        r"\b(?:do|does|did)\s+not\s+(?:say|mention|specify|state|indicate|clarify)\b",
        r"\bno\s+(?:information|details?|data|mention)\s+(?:is\s+|was\s+)?(?:available|provided|given|here)\b",
        rf"\b{_SOURCE}\s+(?:provided\s+|given\s+)?(?:is|are|was|were)\s+(?:empty|silent)\b",
        r"\b(?:can\s+not|could\s+not)\s+be\s+(?:determined|confirmed|answered|found)\b",
        r"\b(?:unclear|unknown)\s+(?:from|based on|in)\b",
        r"\b(?:human|support)?\s*(?:agent|colleague|someone|team|representative)\s+will\s+(?:follow\s+up|get\s+back"
        r"|reach\s+out|contact\s+you)",
        r"\bbeyond\s+(?:the\s+)?(?:scope|information)\b|\boutside\s+(?:the\s+)?(?:scope|information)\b",
    )),
    re.IGNORECASE,
)
_FILLER: Final = re.compile(
    r"^(?:thanks?|thank you|hope (?:this|that) helps|i hope|let (?:me|us) know|feel free|happy to help|"
    r"glad to help|is there anything else|have a (?:great|nice|good|lovely)|please (?:let|reach|feel|don't|do not)|"
    r"great question|good question|of course|certainly|sure|absolutely|no problem|you're welcome|best regards|"
    r"kind regards|cheers)\b",
    re.IGNORECASE,
)


#: Advice to ask someone else ("please ask a pharmacist", "contact support"): nothing to check
#: unless it names a number or a name, which the hard checks then see.
_REFERRAL: Final = re.compile(
    r"^(?:so\s+|but\s+)?(?:please\s+|you\s+(?:may|might|should|could)\s+(?:want\s+to\s+)?|i\s+(?:would\s+)?"
    r"(?:recommend|suggest)(?:\s+that\s+you)?\s+|we\s+(?:recommend|suggest)\s+)?(?:ask|consult|contact|check\s+with"
    r"|speak\s+(?:to|with)|talk\s+to|reach\s+out\s+to|asking|consulting|contacting|checking\s+with)\s+"
    r"(?:a|an|your|the|our)\b",
    re.IGNORECASE,
)


def is_abstention(claim: str) -> bool:
    return _ABSTENTION.search(expand_negations(claim)) is not None


# --- numbers, amounts, dates, times ------------------------------------------------------------

_MONTHS: Final = {name: i for i, names in enumerate((
    ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
    ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
    ("december", "dec")), start=1) for name in names}
_WEEKDAYS: Final = {name: i for i, names in enumerate((
    ("monday", "mon"), ("tuesday", "tue", "tues"), ("wednesday", "wed"), ("thursday", "thu", "thur", "thurs"),
    ("friday", "fri"), ("saturday", "sat"), ("sunday", "sun")), start=0) for name in names}
_MONTH_RE: Final = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
                    r"|Sept?(?:ember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_WEEKDAY_RE: Final = (r"(?:Mon(?:days?)?|Tue(?:s|sdays?)?|Wed(?:nesdays?)?|Thu(?:r|rs|rsdays?)?|Fri(?:days?)?"
                      r"|Sat(?:urdays?)?|Sun(?:days?)?)")


def _weekday(name: str) -> int:
    """A weekday's number from its name, abbreviation or plural ("Saturdays")."""
    name = name.lower().rstrip(".")
    return _WEEKDAYS[name] if name in _WEEKDAYS else _WEEKDAYS[name[:-1]]
_DATE_PATTERNS: Final = (
    re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})\b"),
    re.compile(rf"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<mn>{_MONTH_RE})\b\.?(?:,?\s+(?P<y>\d{{4}})\b)?"),
    re.compile(rf"\b(?P<mn>{_MONTH_RE})\b\.?\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\b(?!\s*(?:%|[:.,]\d))"
               rf"(?:,?\s+(?P<y>\d{{4}})\b)?"),
    re.compile(rf"\b(?P<mn>{_MONTH_RE})\b\.?,?\s+(?P<y>\d{{4}})\b"),
    re.compile(r"\b(?P<mn>January|February|March|April|June|July|August|September|October|November|December)\b"),
)
#: A range of days in one month, "2-3 April 2025", "April 2 and 3", "May 4-6": every day in it.
_DAY_RANGES: Final = (
    re.compile(rf"\b(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?\s*(?:-|to|and|&)\s*(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+"
               rf"(?:of\s+)?(?P<mn>{_MONTH_RE})\b\.?(?:,?\s+(?P<y>\d{{4}})\b)?"),
    re.compile(rf"\b(?P<mn>{_MONTH_RE})\b\.?\s+(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?\s*(?:-|to|and|&)\s*"
               rf"(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\b(?!\s*(?:%|[:.,]\d))(?:,?\s+(?P<y>\d{{4}})\b)?"),
)
#: "weekdays" and "weekends" name days too: "open on Saturdays" against "open at weekends".
_MONTH_NAME: Final = re.compile(rf"\b{_MONTH_RE}\b")
_WEEK_PARTS: Final = re.compile(r"\b(?P<part>weekdays?|weekends?|week-?ends?)\b", re.IGNORECASE)
_WEEKDAY_RANGE: Final = re.compile(rf"\b(?P<a>{_WEEKDAY_RE})\b\.?\s*(?:-|to|through|thru|until|till)\s*"
                                   rf"(?P<b>{_WEEKDAY_RE})\b")
_WEEKDAY: Final = re.compile(rf"\b{_WEEKDAY_RE}\b")
_TIME: Final = re.compile(
    r"\b(?P<h>\d{1,2})(?::(?P<min>\d{2}))?\s*(?P<ap>[ap])\.?m\b\.?|\b(?P<h24>\d{1,2}):(?P<m24>\d{2})\b", re.IGNORECASE
)

_CURRENCY_SIGNS: Final = {"$": "usd", "\u20ac": "eur", "\u00a3": "gbp", "\u00a5": "jpy", "\u20b9": "inr"}
_UNITS: Final = {
    "%": "%", "percent": "%", "pct": "%",
    "usd": "usd", "dollar": "usd", "dollars": "usd", "eur": "eur", "euro": "eur", "euros": "eur",
    "gbp": "gbp", "pound": "gbp", "pounds": "gbp", "jpy": "jpy", "yen": "jpy", "inr": "inr", "rupees": "inr",
    "day": "day", "days": "day", "week": "week", "weeks": "week", "month": "month", "months": "month",
    "year": "year", "years": "year", "yr": "year", "yrs": "year", "hour": "hour", "hours": "hour", "hr": "hour",
    "hrs": "hour", "h": "hour", "minute": "minute", "minutes": "minute", "min": "minute", "mins": "minute",
    "second": "second", "seconds": "second", "sec": "second", "secs": "second", "ms": "ms",
    "kb": "kb", "mb": "mb", "gb": "gb", "tb": "tb", "user": "user", "users": "user", "seat": "seat",
    "seats": "seat", "km": "km", "mile": "mile", "miles": "mile", "kg": "kg", "lb": "lb", "lbs": "lb",
    "item": "item", "items": "item", "request": "request", "requests": "request", "times": "times",
    "member": "member", "members": "member", "project": "project", "projects": "project",
    "device": "device", "devices": "device", "license": "license", "licenses": "license",
}
#: Units of measure, time and money: not content words, since the number before them is checked.
_MEASURE_WORDS: Final = frozenset(word for word, unit in _UNITS.items() if unit in {
    "%", "usd", "eur", "gbp", "jpy", "inr", "day", "week", "month", "year", "hour", "minute", "second", "ms", "kb",
    "mb", "gb", "tb", "km", "mile", "kg", "lb"})
#: Absolute terms an answer must not add: "unlimited seats" against "10 seats" fails.
ABSOLUTE_TERMS: Final = frozenset({"unlimited", "lifetime", "forever", "worldwide", "globally", "guarantee",
                                   "guaranteed", "guarantees", "instant", "instantly", "immediately", "immediate",
                                   "infinite", "everywhere", "automatic", "automatically", "free"})
_UNIT_QUALIFIERS: Final = frozenset({"business", "working", "calendar", "full", "additional", "more", "extra",
                                     "consecutive", "whole"})
_NUMBER: Final = re.compile(
    r"(?P<cur>[$\u20ac\u00a3\u00a5\u20b9])?\s?(?<![\w.,])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?P<ord>st|nd|rd|th)?(?![\w.]*\d)"
)
_UNIT_AFTER: Final = re.compile(r"\s*-?\s*(?:per\s+cent\b|%|[A-Za-z]+)")
_CURRENCY_BEFORE: Final = re.compile(r"\b(usd|eur|gbp|jpy|inr)\s*$", re.IGNORECASE)
_NUMBER_WORDS: Final = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
    "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
}
_WORD_NUMBER: Final = re.compile(
    r"\b(?P<w>(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:-(?:one|two|three|four|five|six|seven"
    r"|eight|nine))?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen"
    r"|sixteen|seventeen|eighteen|nineteen|hundred)(?=[\s-]+(?:(?:business|working|calendar|full|additional|extra"
    r"|consecutive)\s+)?(?:days?|weeks?|months?|years?|hours?|minutes?|seconds?|percent|per cent|dollars?|euros?"
    r"|users?|seats?|times)\b)",
    re.IGNORECASE,
)


#: A number word (two and up) before a counted plural noun: "three bags", "two doses".
_WORD_COUNT: Final = re.compile(
    r"\b(?P<w>two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen"
    r"|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)"
    r"(?=\s+(?!(?:is|was|has|does|this|thus|plus|us|its|as|yes|always|also)\b)[a-z]{2,}[^s\W]s\b)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Quantity:
    value: str
    unit: str | None
    surface: str
    #: "per month" in "$20 per user per month", "/month", "monthly"; None when none is given.
    rate: str | None = None


@dataclass(frozen=True, slots=True)
class DateRef:
    month: int
    day: int | None
    year: int | None
    surface: str


def _number_value(raw: str) -> str:
    raw = raw.replace(",", "")
    if "." in raw:
        raw = raw.rstrip("0").rstrip(".")
    return raw.lstrip("0") or "0"


def _word_value(word: str) -> int:
    parts = word.lower().split("-")
    return sum(_NUMBER_WORDS[p] for p in parts)


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    chars = list(text)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


@dataclass(slots=True)
class Facts:
    """The hard facts of a piece of text: quantities, dates, weekdays, times."""

    quantities: list[Quantity] = field(default_factory=list)
    dates: list[DateRef] = field(default_factory=list)
    weekdays: dict[int, str] = field(default_factory=dict)
    times: dict[str, str] = field(default_factory=dict)


def extract_facts(text: str) -> Facts:
    """The numbers, amounts, dates, weekdays and times of ``text``.

    Each kind is looked for only when a cheap test says it can be there (a digit, a month or a
    weekday name): most clauses have none, and the patterns are the evaluator's main cost.
    """
    facts = Facts()
    spans: list[tuple[int, int]] = []
    has_digit = _HAS_DIGIT(text) is not None
    has_month = _MONTH_NAME.search(text) is not None
    if _WEEKDAY.search(text):
        for match in _WEEKDAY_RANGE.finditer(text):
            a, b = _weekday(match["a"]), _weekday(match["b"])
            for weekday in range(a, (b if b >= a else b + 7) + 1):
                facts.weekdays.setdefault(weekday % 7, match.group())
            spans.append(match.span())
        for match in _WEEKDAY.finditer(_mask(text, spans)):
            facts.weekdays.setdefault(_weekday(match.group()), match.group())
    if "eek" in text:
        for match in _WEEK_PARTS.finditer(text):
            days = range(5) if match["part"].lower().startswith("weekday") else (5, 6)
            for weekday in days:
                facts.weekdays.setdefault(weekday, match.group())
    if has_digit and has_month:
        for pattern in _DAY_RANGES:
            for match in pattern.finditer(_mask(text, spans)):
                first, last = int(match["d1"]), int(match["d2"])
                if not first < last <= 31:
                    continue
                range_year = int(match["y"]) if match["y"] else None
                for range_day in range(first, last + 1):
                    facts.dates.append(DateRef(_MONTHS[match["mn"].lower()], range_day, range_year,
                                               match.group().strip()))
                spans.append(match.span())
    for index, pattern in enumerate(_DATE_PATTERNS):
        # 0: ISO dates (digits); 1-3: a day or year with a month name; 4: a month name alone.
        if (index == 0 and not has_digit) or (1 <= index <= 3 and not (has_digit and has_month)) or \
                (index == 4 and not has_month):
            continue
        for match in pattern.finditer(_mask(text, spans)):
            groups = match.groupdict()
            month = int(groups["m"]) if groups.get("m") else _MONTHS[groups["mn"].lower()]
            if not 1 <= month <= 12:
                continue
            day = int(groups["d"]) if groups.get("d") else None
            year = int(groups["y"]) if groups.get("y") else None
            facts.dates.append(DateRef(month, day, year, match.group().strip()))
            spans.append(match.span())
    if not has_digit:
        _word_quantities(text, facts)
        return facts
    masked = _mask(text, spans)
    for match in _TIME.finditer(masked):
        if match["h"] is not None:
            hour = int(match["h"]) % 12 + (12 if match["ap"].lower() == "p" else 0)
            minute = int(match["min"] or 0)
        else:
            hour, minute = int(match["h24"]), int(match["m24"])
        if hour < 24 and minute < 60:
            facts.times.setdefault(f"{hour:02d}:{minute:02d}", match.group().strip(" ."))
            spans.append(match.span())
    masked = _mask(text, spans)
    for match in _NUMBER.finditer(masked):
        unit: str | None = _CURRENCY_SIGNS.get(match["cur"] or "")
        if unit is None:
            before = _CURRENCY_BEFORE.search(masked, max(0, match.start() - 6), match.start())
            unit = before.group(1).lower() if before else None
        surface_end = match.end()
        if match["ord"]:
            unit = "th"  # an ordinal is not the count "5 days"
        elif unit is None:
            unit, surface_end = _unit_after(masked, match.end())
        rate, surface_end = _rate_after(masked, surface_end)
        facts.quantities.append(
            Quantity(_number_value(match["num"]), unit, masked[match.start():surface_end].strip(), rate)
        )
    _word_quantities(masked, facts)
    return facts


def _word_quantities(masked: str, facts: Facts) -> None:
    """Numbers written as words: before a unit ("thirty days"), or a count ("three bags")."""
    word_spans: list[tuple[int, int]] = []
    for match in _WORD_NUMBER.finditer(masked):
        unit, surface_end = _unit_after(masked, match.end())
        rate, surface_end = _rate_after(masked, surface_end)
        facts.quantities.append(Quantity(str(_word_value(match["w"])), unit, masked[match.start():surface_end], rate))
        word_spans.append(match.span())
    for match in _WORD_COUNT.finditer(masked):
        if any(a <= match.start() < b for a, b in word_spans):
            continue
        facts.quantities.append(Quantity(str(_word_value(match["w"])), None, match.group(), None))


_RATE: Final = re.compile(
    r"\s*(?:(?:/|per\s|an?\s|each\s|every\s)\s*(?:user|seat|member|person|key|device|project)s?\s*)?"
    r"(?:(?:/|per\s|an?\s|each\s|every\s)\s*(?P<period>second|minute|hour|day|week|month|year|annum|mo|yr)\b"
    r"|(?P<adverb>hourly|daily|weekly|monthly|yearly|annually)\b)",
    re.IGNORECASE,
)
_RATE_PERIODS: Final = {"annum": "year", "annually": "year", "yearly": "year", "mo": "month", "yr": "year",
                        "hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month"}


def _rate_after(text: str, at: int) -> tuple[str | None, int]:
    match = _RATE.match(text, at)
    if match is None:
        return None, at
    word = (match["period"] or match["adverb"]).lower()
    return _RATE_PERIODS.get(word, word), match.end()


def _compatible(claim: Quantity, context: Quantity) -> bool:
    """Same value assumed: the units agree unless the claim names one the context does not, and the
    rates agree when both give one."""
    if claim.unit is not None and context.unit not in (claim.unit, None):
        return False
    return claim.rate is None or context.rate is None or claim.rate == context.rate


#: Units one converts into another, exactly: "3 weeks" is "21 days", "48 hours" is "2 days".
_CONVERSIONS: Final = {("week", "day"): 7, ("day", "hour"): 24, ("hour", "minute"): 60, ("minute", "second"): 60,
                       ("year", "month"): 12}


def _converted(q: Quantity) -> list[tuple[str, str]]:
    """The quantity in the units it converts to exactly (as (value, unit)), for whole numbers."""
    if q.unit is None or not q.value.isdigit():
        return []
    value = int(q.value)
    out: list[tuple[str, str]] = []
    for (big, small), factor in _CONVERSIONS.items():
        if q.unit == big:
            out.append((str(value * factor), small))
        elif q.unit == small and value % factor == 0:
            out.append((str(value // factor), big))
    return out


def _unit_after(text: str, at: int) -> tuple[str | None, int]:
    pos = at
    for _ in range(2):
        match = _UNIT_AFTER.match(text, pos)
        if match is None:
            return None, at
        word = re.sub(r"[\s-]+", " ", match.group()).strip().lower()
        if word in _UNIT_QUALIFIERS:
            pos = match.end()
            continue
        unit = _UNITS.get(word.replace("per cent", "percent"))
        return (unit, match.end()) if unit else (None, at)
    return None, at


# --- entities ----------------------------------------------------------------------------------

_CAPITALISED_SPAN: Final = re.compile(r"\b[A-Z][\w'&.-]*(?:\s+(?:[A-Z][\w'&.-]*|&|of|de|von|van)(?=\s|\b))*")
_CODE: Final = re.compile(r"\b[A-Za-z]+\d[\w-]*\b")
_NOT_ENTITIES: Final = frozenset(w.capitalize() for w in (*_MONTHS, *_WEEKDAYS)) | \
    frozenset(f"{w.capitalize()}s" for w in _WEEKDAYS if w.endswith("day")) | {"I", "OK", "Yes", "No", "AM", "PM"}


def _is_acronym(word: str) -> bool:
    return len(word) >= 2 and word.isupper() and word not in _NOT_ENTITIES


def entities(claim: str, at_sentence_start: bool) -> list[str]:
    """Named entities: capitalised spans (without the word that opens a sentence), acronyms, codes."""
    found: list[str] = []
    for match in _CAPITALISED_SPAN.finditer(claim):
        span_words = [w.strip(".'-&") for w in match.group().split()]
        while span_words and not _is_acronym(span_words[0]) and (span_words[0].lower() in STOPWORDS or
                                                                 span_words[0] in _NOT_ENTITIES):
            span_words.pop(0)
        while span_words and (span_words[-1].lower() in {"of", "de", "von", "van", ""} or
                              span_words[-1] in _NOT_ENTITIES):
            span_words.pop()
        if not span_words:
            continue
        at_start = claim[:match.start()].strip(" \"'([-:") == ""
        is_acronym = len(span_words) == 1 and _is_acronym(span_words[0])
        if at_start and at_sentence_start and not is_acronym and \
                match.group().split()[0].strip(".'-&") == span_words[0]:
            span_words.pop(0)  # "Refunds are ...", "Click Forgot password": a sentence's first word is no name
            if not span_words:
                continue
        found.append(" ".join(span_words))
    found.extend(m.group() for m in _CODE.finditer(claim) if not re.fullmatch(r"[A-Za-z]+\d+(?:st|nd|rd|th)?",
                                                                               m.group()) or m.group()[0].isupper())
    return list(dict.fromkeys(found))


# --- the context, analysed once ----------------------------------------------------------------

@dataclass(slots=True)
class _ContextSentence:
    text: str
    tokens: list[str]
    words: frozenset[str]
    quantities: list[Quantity]
    #: Each entity's lowercased words.
    entities: list[frozenset[str]]
    raw: frozenset[str]
    values: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Context:
    words: frozenset[str]
    prefixes: frozenset[str]
    raw_words: frozenset[str]
    facts: Facts
    sentences: list[_ContextSentence]
    years: frozenset[int]
    values: frozenset[str]
    #: content word -> the indexes of the sentences holding it
    postings: dict[str, list[int]] = field(default_factory=dict)
    #: The words of the context's names (canonical), and the initials of its multi-word names
    #: ("us" for "United States").
    name_words: frozenset[str] = frozenset()
    initialisms: frozenset[str] = frozenset()

    #: The weight of a value held by one clause only (the rarest a word can be).
    rare: float = 1.0

    #: content word -> its rarity across the clauses: log((N + 1) / clauses holding it)
    rarity: dict[str, float] = field(default_factory=dict)

    def weight(self, shared: Iterable[str]) -> float:
        """The summed rarity of some of the context's words (a word not in it weighs nothing)."""
        rarity = self.rarity
        return sum(rarity.get(w, 0.0) for w in shared)

    @property
    def empty(self) -> bool:
        return not self.words and not self.facts.quantities and not self.facts.dates

    def best_sentences(self, claim_words: frozenset[str]) -> tuple[list[_ContextSentence], int]:
        """The sentences sharing the most content words with a claim (in context order), and how many."""
        counts: dict[int, int] = {}
        for word in claim_words:
            for index in self.postings.get(word, ()):
                counts[index] = counts.get(index, 0) + 1
        if not counts:
            return [], 0
        most = max(counts.values())
        return [self.sentences[i] for i in sorted(i for i, n in counts.items() if n == most)], most


def _negated(tokens: list[str], vocabulary: frozenset[str]) -> bool:
    """Whether the text says "not": an odd number of negation cues, so "do not give ... without
    advice" is positive about giving with advice, and "it can be given without advice" is not."""
    cues = 0
    for token in tokens:
        if token in NEGATIONS:
            cues += 1
            continue
        for prefix in _NEGATION_PREFIXES:
            if token.startswith(prefix) and len(token) - len(prefix) >= 4 and canonical(token[len(prefix):]) in \
                    vocabulary and canonical(token) not in vocabulary:
                cues += 1
                break
    return cues % 2 == 1


def _analyse_context(text: str) -> _Context:
    text = _CITATION.sub(" ", text)  # passage markers "[1]" are not numbers of the context
    tokens: list[str] = []
    facts = Facts()
    context_sentences = []
    # Clauses, split as a claim is: "A landed, while B remained in orbit" holds two statements, and
    # a claim that B landed restates the first with a swapped name. The whole context's words and
    # facts are the union of its clauses' (each clause is read once).
    seen: set[str] = set()
    for sentence in sentences(text):
        for clause, at_start in claims_of(sentence):
            if clause in seen:
                continue  # a repeated clause says nothing new (and would slow every lookup)
            seen.add(clause)
            stoks = words(clause)
            clause_facts = extract_facts(clause)
            tokens.extend(stoks)
            facts.quantities.extend(clause_facts.quantities)
            facts.dates.extend(clause_facts.dates)
            for day, surface in clause_facts.weekdays.items():
                facts.weekdays.setdefault(day, surface)
            for time, surface in clause_facts.times.items():
                facts.times.setdefault(time, surface)
            context_sentences.append(_ContextSentence(
                clause, stoks, frozenset(content_words(stoks, units=True)), clause_facts.quantities,
                [frozenset(canonical(w) for w in words(name)) for name in entities(clause, at_start)],
                frozenset(stoks) | frozenset(canonical(t) for t in stoks),
                frozenset(q.value for q in clause_facts.quantities),
            ))
    cws = frozenset().union(*(c.words for c in context_sentences))
    initialisms = frozenset(
        "".join(w[0] for w in name.split() if w[:1].isupper()).lower()
        for clause in context_sentences for name in entities(clause.text, False) if len(name.split()) > 1)
    postings: dict[str, list[int]] = {}
    for index, analysed in enumerate(context_sentences):
        for word in analysed.words:
            postings.setdefault(word, []).append(index)
    years = frozenset(int(q.value) for q in facts.quantities if q.value.isdigit() and len(q.value) == 4)
    years |= frozenset(d.year for d in facts.dates if d.year)
    return _Context(
        words=cws,
        prefixes=frozenset(w[:5] for w in cws if len(w) >= 5),
        raw_words=frozenset(tokens) | frozenset(canonical(t) for t in tokens),
        facts=facts,
        sentences=context_sentences,
        years=years,
        values=frozenset(q.value for q in facts.quantities),
        postings=postings,
        name_words=frozenset().union(*(e for c in context_sentences for e in c.entities)),
        initialisms=frozenset(i for i in initialisms if len(i) > 1),
        rare=math.log(len(context_sentences) + 1),
        rarity={word: math.log((len(context_sentences) + 1) / len(held)) for word, held in postings.items()},
    )


# --- the evaluator -----------------------------------------------------------------------------

#: A claim's opening capitalised word (matched at its start).
_FIRST_WORD: Final = re.compile(r"[A-Z][a-z]+\b")

#: A clause holding the claim's value with this share of the restated clause's weight means the
#: claim combined two statements ("annual plan refunds take 5 days"), not that it swapped a value.
_COMBINED: Final = 0.75
#: The clauses, by shared-word weight, that may be the one a claim restates.
_TOP_CLAUSES: Final = 24

class GroundednessEvaluator:
    """The default evaluator (scope 1 a of issue 14): see the module docstring."""

    def __init__(self, *, min_overlap: float = 0.5, negation_overlap: float = 0.6, threshold: float = 0.0,
                 max_answer_chars: int = 20_000, max_context_chars: int = 200_000) -> None:
        self.min_overlap = min_overlap
        self.negation_overlap = negation_overlap
        self.threshold = threshold
        self.max_answer_chars = max_answer_chars
        self.max_context_chars = max_context_chars

    @property
    def name(self) -> str:
        return "groundedness"

    def score(self, context: str, question: str, answer: str) -> Judgement:
        truncated = len(answer) > self.max_answer_chars or len(context) > self.max_context_chars
        ctx = _analyse_context(normalise(context[: self.max_context_chars]))
        question_words = frozenset(content_words(words(normalise(question[: self.max_answer_chars]))))
        verdicts = tuple(self._judge(claim, start, ctx, question_words)
                         for claim, start in self._claims(normalise(answer[: self.max_answer_chars])))
        return Judgement(
            score=weighted_score(verdicts),
            claims=verdicts,
            evaluator=self.name,
            threshold=self.threshold,
            extra={"truncated": 1.0} if truncated else {},
        )

    def _claims(self, answer: str) -> Iterator[tuple[str, bool]]:
        for sentence in sentences(answer):
            sentence = _INTERJECTION.sub("", _GREETING.sub("", sentence))
            yield from claims_of(sentence)

    def _judge(self, claim: str, at_start: bool, ctx: _Context, question_words: frozenset[str]) -> ClaimVerdict:
        tokens = words(claim)
        surface_words = content_tokens(tokens)
        cws = [canonical(t) for t in surface_words]
        weight = float(max(1, len(cws)))
        if is_abstention(claim):
            return ClaimVerdict(claim, Verdict.ABSTENTION, ("abstains",), None, weight)
        facts = extract_facts(claim)
        names = entities(claim, at_start)
        first = _FIRST_WORD.match(claim)
        if at_start and first and canonical(first.group().lower()) in ctx.name_words and \
                not any(n.split()[0] == first.group() for n in names):
            # A sentence's first word is no name, unless the context uses it as one ("Advance
            # tickets are ..." against "an Advance ticket ...; Anytime tickets are ...").
            names.insert(0, first.group())
        has_hard = bool(facts.quantities or facts.dates or facts.weekdays or facts.times or names)
        if not has_hard and (not cws or claim.rstrip().endswith("?") or _FILLER.match(claim.strip(" \"'"))
                             or _REFERRAL.match(claim.strip(" \"'"))):
            return ClaimVerdict(claim, Verdict.SUPPORTED, ("nothing to check",), None, weight)
        if ctx.empty:
            return ClaimVerdict(claim, Verdict.UNSUPPORTED, ("context is empty",), 0.0, weight)

        reasons: list[str] = []
        reasons.extend(self._check_quantities(facts, ctx))
        reasons.extend(self._check_dates(facts, ctx))
        n_facts = len(facts.quantities) + len(facts.dates) + len(facts.weekdays) + len(facts.times)
        facts_ok = n_facts - len(reasons)
        for name in names:
            missing = [w for w in words(name) if w not in ctx.raw_words and canonical(w) not in ctx.raw_words]
            if missing and _is_acronym(name) and name.lower() in ctx.initialisms:
                continue  # "US" against "United States"
            if missing:
                reasons.append(f"entity '{name}' not in context")
        for i, token in enumerate(tokens):
            if token in ABSOLUTE_TERMS and token not in ctx.raw_words and canonical(token) not in ctx.raw_words:
                if token == "free" and (tokens[i - 1:i] == ["feel"] or {"no", "cost"} <= ctx.raw_words):
                    continue  # "feel free to ..."; "free" against "at no cost"
                reasons.append(f"absolute term '{token}' not in context")
        if not reasons:
            reasons.extend(self._check_substitution(frozenset(cws), facts, names, ctx))

        # Verified numbers, dates and times are evidence too: "extra seats are $5 apiece" against
        # "additional seats cost $5 each" shares one content word, and the amount.
        matched = float(facts_ok)
        unmatched: list[str] = []
        for word, surface in zip(cws, surface_words, strict=True):
            if word in ctx.words or (len(word) >= 5 and word[:5] in ctx.prefixes) or \
                    (surface in _NUMBER_WORDS and str(_NUMBER_WORDS[surface]) in ctx.values):
                matched += 1.0
            elif word in question_words:
                matched += 0.5
            else:
                unmatched.append(surface)
        overlap = matched / (len(cws) + n_facts) if cws else 1.0
        if cws and overlap < self.min_overlap:
            reasons.append(f"content overlap {overlap:.2f} < {self.min_overlap:.2f} "
                           f"(not in context: {', '.join(dict.fromkeys(unmatched))})")

        negation = self._check_negation(tokens, cws, ctx)
        if negation:
            reasons.append(negation)
        verdict = Verdict.UNSUPPORTED if reasons else Verdict.SUPPORTED
        return ClaimVerdict(claim, verdict, tuple(reasons), round(overlap, 4), weight)

    @staticmethod
    def _check_quantities(facts: Facts, ctx: _Context) -> Iterator[str]:
        for q in facts.quantities:
            if any(c.value == value and c.unit == unit for value, unit in _converted(q) for c in ctx.facts.quantities):
                continue  # "three weeks" against "21 days"
            same_value = [c for c in ctx.facts.quantities if c.value == q.value]
            if q.unit is None and not same_value and len(q.value) == 4 and q.value.isdigit() and \
                    int(q.value) in ctx.years:
                continue
            if not same_value:
                yield f"number '{q.surface}' not in context"
            elif not any(_compatible(q, c) for c in same_value):
                units = ", ".join(sorted({c.surface for c in same_value}))
                yield f"number '{q.surface}' not in context (context has {units})"

    @staticmethod
    def _check_dates(facts: Facts, ctx: _Context) -> Iterator[str]:
        for d in facts.dates:
            ok = False
            for c in ctx.facts.dates:
                if c.month != d.month:
                    continue
                if d.day is not None and c.day != d.day:
                    continue
                if d.year is not None and c.year != d.year and not (c.year is None and d.year in ctx.years):
                    continue
                ok = True
                break
            if not ok:
                yield f"date '{d.surface}' not in context"
        for day, surface in facts.weekdays.items():
            if day not in ctx.facts.weekdays:
                yield f"date '{surface}' not in context"
        for time, surface in facts.times.items():
            if time not in ctx.facts.times:
                yield f"time '{surface}' not in context"

    def _check_substitution(self, claim_words: frozenset[str], facts: Facts, names: list[str],
                            ctx: _Context) -> Iterator[str]:
        """A number or name found in the context, but attached to another statement.

        For each of the claim's numbers and names, the context clause that shares most of the
        *rest* of the claim (its other content words, and its other numbers that the clause holds;
        at least two, and 60 %) is the statement the claim restates. If that clause lacks the value
        and has one of the same kind the claim lacks, the claim swapped it in ("Buzz Aldrin
        remained in orbit" against "... while Michael Collins remained in orbit"), unless a clause
        that holds the value shares nearly as much (the claim combined two statements).

        Only clauses that share a word with the claim can be either (the inverted index finds
        them); of those, only the best ``_TOP_CLAUSES`` by weight, and the best that hold one of
        the claim's values or names, are compared, which bounds the cost on long contexts.
        """
        if not (facts.quantities or names):
            return
        own_words = {name: frozenset(canonical(w) for w in words(name)) for name in names}
        claim_raw = frozenset().union(*own_words.values())
        claim_values = frozenset(q.value for q in facts.quantities)
        # Each clause's shared-word weight, summed from the inverted index: with and without the
        # words of the claim's names. Only the best of them can be the restated clause, and only
        # the best of those holding one of the claim's values or names can show that it combined
        # two statements.
        full: dict[int, float] = {}
        rest_only: dict[int, float] = {}
        for word in claim_words:
            rarity = ctx.rarity.get(word, 0.0)
            for index in ctx.postings.get(word, ()):
                full[index] = full.get(index, 0.0) + rarity
                if word not in claim_raw:
                    rest_only[index] = rest_only.get(index, 0.0) + rarity
        holders = [index for index in full if claim_values & ctx.sentences[index].values or
                   any(own <= ctx.sentences[index].raw for own in own_words.values())]
        selected = {*heapq.nlargest(_TOP_CLAUSES, full, key=full.__getitem__),
                    *heapq.nlargest(_TOP_CLAUSES, rest_only, key=rest_only.__getitem__),
                    *heapq.nlargest(_TOP_CLAUSES, holders, key=full.__getitem__)}
        rows = [(ctx.sentences[i], claim_words & ctx.sentences[i].words, full[i]) for i in sorted(selected)]
        for q in facts.quantities:
            others = [o for o in facts.quantities if o is not q and o.value != q.value]
            ranked = []
            for sentence, shared, weight in rows:
                held = sum(1 for o in others if o.value in sentence.values and
                           any(c.value == o.value and _compatible(o, c) for c in sentence.quantities))
                holds = q.value in sentence.values and \
                    any(c.value == q.value and _compatible(q, c) for c in sentence.quantities)
                rival = not holds and any(c.value not in claim_values and (c.unit == q.unit or None in (c.unit, q.unit))
                                          for c in sentence.quantities)
                ranked.append((sentence, len(shared) + held, weight + held * ctx.rare, holds, rival))
            reason = self._swapped(ranked, len(claim_words) + len(others))
            if reason:
                yield f"number '{q.surface}' is not what the context says: '{reason}'"
        for name, own in own_words.items():
            if _is_acronym(name) and name.lower() in ctx.initialisms:
                continue  # "US" for "United States": the clause holds it under its long name
            ranked = []
            for sentence, shared, weight in rows:
                mine = shared & own
                holds = own <= sentence.raw
                rival = not holds and any(e and not e & claim_raw for e in sentence.entities)
                ranked.append((sentence, len(shared) - len(mine), weight - ctx.weight(mine), holds, rival))
            reason = self._swapped(ranked, len(claim_words - own))
            if reason:
                yield f"entity '{name}' is not what the context says: '{reason}'"

    def _swapped(self, ranked: list[tuple[_ContextSentence, int, float, bool, bool]], size: int) -> str | None:
        """The clause the claim restates, when it lacks the claim's value and has a rival one.

        ``ranked`` holds each candidate clause with the claim words it shares (how many, and their
        weight: a word's rarity in the context, since a word in every clause, like "plan", tells
        little about which statement is restated), whether it holds the value, and whether it has
        a rival one. A clause holding the value with at least ``_COMBINED`` of the best weight
        means the claim combined two statements: no swap.
        """
        if size < 2 or not ranked:
            return None
        best_weight = max(weight for _, _, weight, _, _ in ranked)
        best = [row for row in ranked if abs(row[2] - best_weight) <= 1e-9]
        best_count = best[0][1]
        holder_weight = max((weight for _, _, weight, holds, _ in ranked if holds), default=0.0)
        if best_count < 2 or best_count / size < self.negation_overlap or holder_weight >= _COMBINED * best_weight:
            return None
        swapped = [sentence for sentence, _, _, _, rival in best if rival]
        return swapped[0].text if swapped else None

    def _check_negation(self, tokens: list[str], cws: list[str], ctx: _Context) -> str | None:
        """The claim and the context sentence sharing most of its content words agree on negation.

        A "non-"/"un-" word counts as a negation only when the other side has the word without it
        ("unavailable" against "available"), so "unlimited" or "update" never do.
        """
        claim_words = frozenset(cws)
        if len(claim_words) < 2:
            return None
        best, best_shared = ctx.best_sentences(claim_words)
        if best_shared < 2 or best_shared / min(len(claim_words), max(len(b.words) for b in best)) < \
                self.negation_overlap:
            return None
        for sentence in best:
            if _negated(tokens, sentence.words) == _negated(sentence.tokens, claim_words):
                return None
        return f"negation disagrees with context: '{best[0].text}'"
