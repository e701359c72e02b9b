"""Which labels a labelled model samples from: one, a blend, or all of them as trained.

    --label el_GR:first         one label
    --label el_GR               every label with that part (labels are parts joined by ':'; a
                                locale's language and territory ask too: el, GR), in the
                                proportions of their training lines
    --label CH:first            de_CH:first and fr_CH:first (a territory, and a kind)
    --label greek:first         a language by its English name (any case) asks as its code: el:first
    --label "spain streets"     a territory by its English name too: ES:street ("united states": US)
    --label "greek surnames"    pieces apart by spaces too, and a kind in the plural: el:surname
    --label "italian last names"  a kind in other words (KINDS): it:surname
    --label "spanish names"     names, or people, with no kind: people's names, es:first and es:surname
    --label de:city             every label with both parts (de_AT:city, de_CH:city, de_DE:city)
    --label it=0.7,es=0.3       a blend: a mixture of the labels' distributions with these weights
    (no --label)                every label, in the proportions of their training lines (a model
                                adapted from a labelled one with --labels: its own run's labels)

A blend is a proper mixture: each sample first draws its label with the blend's weights (from its
own random stream, so the same seed gives the same samples at any batch width), then is drawn
from that label's distribution; under constraints the mixture is conditioned exactly (the label
is the first choice of the prefix tree, chargen.sampling.tree.LabelTree).
"""

from __future__ import annotations

import difflib
import math
import unicodedata
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import UsageError
from .engine import inverse_cdf
from .randomness import uniforms

# A locale's language by its English name: `--label greek` asks as `--label el`. The languages of
# the bundled base model's locales and others a list is likely to come in (ISO 639-1 codes).
LANGUAGES = {
    "af": "afrikaans", "am": "amharic", "ar": "arabic", "az": "azerbaijani", "be": "belarusian", "bg": "bulgarian",
    "bn": "bengali", "bs": "bosnian", "ca": "catalan", "cs": "czech", "cy": "welsh", "da": "danish", "de": "german",
    "el": "greek", "en": "english", "eo": "esperanto", "es": "spanish", "et": "estonian", "eu": "basque",
    "fa": "persian", "fi": "finnish", "fil": "filipino", "fr": "french", "ga": "irish", "gl": "galician",
    "gu": "gujarati", "ha": "hausa", "he": "hebrew", "hi": "hindi", "hr": "croatian", "hu": "hungarian",
    "hy": "armenian", "id": "indonesian", "ig": "igbo", "is": "icelandic", "it": "italian", "ja": "japanese",
    "ka": "georgian", "kk": "kazakh", "km": "khmer", "ko": "korean", "la": "latin", "lt": "lithuanian",
    "lv": "latvian", "mk": "macedonian", "ml": "malayalam", "mn": "mongolian", "mr": "marathi", "ms": "malay",
    "mt": "maltese", "my": "burmese", "nb": "norwegian", "ne": "nepali", "nl": "dutch", "no": "norwegian",
    "pa": "punjabi", "pl": "polish", "pt": "portuguese", "ro": "romanian", "ru": "russian", "si": "sinhala",
    "sk": "slovak", "sl": "slovenian", "so": "somali", "sq": "albanian", "sr": "serbian", "sv": "swedish",
    "sw": "swahili", "ta": "tamil", "te": "telugu", "th": "thai", "tl": "tagalog", "tr": "turkish", "tw": "twi",
    "uk": "ukrainian", "ur": "urdu", "uz": "uzbek", "vi": "vietnamese", "yo": "yoruba", "zh": "chinese",
    "zu": "zulu",
}
# A locale's territory by its English names, lower case: `--label spain:street` asks as `ES:street`,
# `--label "united states"` as `US`. The base model's territories and others a list is likely to
# come from (ISO 3166-1 codes, and Faker's own: MS is its Malaysia, QC Quebec); no name that is a
# language's code (uk is Ukrainian, not Britain).
TERRITORIES = {
    "AE": ("united arab emirates", "uae", "emirates"), "AF": ("afghanistan",), "AL": ("albania",),
    "AM": ("armenia",), "AR": ("argentina",), "AT": ("austria",), "AU": ("australia",), "AZ": ("azerbaijan",),
    "BA": ("bosnia",), "BD": ("bangladesh",), "BE": ("belgium",), "BG": ("bulgaria",), "BH": ("bahrain",),
    "BO": ("bolivia",), "BR": ("brazil",), "BY": ("belarus",), "CA": ("canada",), "CH": ("switzerland",),
    "CL": ("chile",), "CN": ("china",), "CO": ("colombia",), "CR": ("costa rica",), "CU": ("cuba",),
    "CY": ("cyprus",), "CZ": ("czechia", "czech republic"), "DE": ("germany",), "DK": ("denmark",),
    "DZ": ("algeria",), "EC": ("ecuador",), "EE": ("estonia",), "EG": ("egypt",), "ES": ("spain",),
    "ET": ("ethiopia",), "FI": ("finland",), "FR": ("france",), "GB": ("united kingdom", "britain", "great britain"),
    "GE": ("georgia",), "GH": ("ghana",), "GR": ("greece",), "GT": ("guatemala",), "HK": ("hong kong",),
    "HR": ("croatia",), "HU": ("hungary",), "ID": ("indonesia",), "IE": ("ireland",), "IL": ("israel",),
    "IN": ("india",), "IQ": ("iraq",), "IR": ("iran",), "IS": ("iceland",), "IT": ("italy",), "JO": ("jordan",),
    "JP": ("japan",), "KE": ("kenya",), "KH": ("cambodia",), "KR": ("south korea", "korea"), "KW": ("kuwait",),
    "KZ": ("kazakhstan",), "LB": ("lebanon",), "LI": ("liechtenstein",), "LK": ("sri lanka",),
    "LT": ("lithuania",), "LU": ("luxembourg",), "LV": ("latvia",), "MA": ("morocco",), "ME": ("montenegro",),
    "MK": ("north macedonia",), "MM": ("myanmar",), "MN": ("mongolia",), "MS": ("malaysia",), "MT": ("malta",),
    "MX": ("mexico",), "MY": ("malaysia",), "NG": ("nigeria",), "NL": ("netherlands", "holland"),
    "NO": ("norway",), "NP": ("nepal",), "NZ": ("new zealand",), "OM": ("oman",), "PE": ("peru",),
    "PH": ("philippines",), "PK": ("pakistan",), "PL": ("poland",), "PS": ("palestine",), "PT": ("portugal",),
    "PY": ("paraguay",), "QA": ("qatar",), "QC": ("quebec",), "RO": ("romania",), "RS": ("serbia",),
    "RU": ("russia",), "SA": ("saudi arabia",), "SE": ("sweden",), "SG": ("singapore",), "SI": ("slovenia",),
    "SK": ("slovakia",), "SN": ("senegal",), "SY": ("syria",), "TH": ("thailand",), "TN": ("tunisia",),
    "TR": ("turkey", "türkiye"), "TW": ("taiwan",), "TZ": ("tanzania",), "UA": ("ukraine",), "UG": ("uganda",),
    "US": ("united states", "usa", "america"), "UY": ("uruguay",), "UZ": ("uzbekistan",), "VE": ("venezuela",),
    "VN": ("vietnam",), "YE": ("yemen",), "ZA": ("south africa",),
}
# A kind of list by other words: `--label "italian last names"` asks as `it:surname`, `--label "spanish
# towns"` as `es:city`. The kinds are the bundled base model's (corpora/build.py); a label of a list
# of one's own with such a part (`elves:first`) is asked so too.
KINDS = {
    "first": ("given", "forename", "firstname"), "surname": ("last", "lastname", "family"),
    "city": ("town", "village", "municipality"), "street": ("road", "avenue"),
    "region": ("province", "state", "county"), "country": ("nation",),
}
_KIND_WORDS = set(KINDS).union(*KINDS.values())
# Words that ask for no part themselves where no label has them ("greek first names": el:first);
# in a term that names no kind they ask for people's names ("spanish names": es:first, es:surname).
FILLERS = ("name", "names", "people", "person")
PEOPLE = ("first", "surname")
# How close (difflib's ratio) a word must be to be shown for an unknown one, and to be proposed in
# its place ("did you mean 'it_IT:first'?": frist -> first 0.8; places -> last 0.6 is not)
CUTOFFS = {"close": 0.5, "meant": 0.7}
_NAMES = set(LANGUAGES.values()) | {name for names in TERRITORIES.values() for name in names}  # asked in any case

# An attempt's random stream at these "characters" (characters use 0, 1, 2, ...): the label it
# draws (plain and rejection sampling), and a blend's two steps in the adaptive exact sampler
# (chargen.sampling.tree.LabelTree: go on, then pick).
LABEL_DRAW, LABEL_GO, LABEL_PICK = (np.uint64((1 << 62) + k) for k in range(3))


MAX_WEIGHT = 1e9  # a blend's term's weight at most (weights are shares: 1e308 and 1e308 overflowed their sum)


def line_key(label: Optional[str], text: str) -> str:
    """How a labelled model keeps a training line for `novel`: "LABEL<TAB>line" (the line alone
    without a label), so a sample is novel against its own label's lines."""
    return text if label is None else f"{label}\t{text}"


@dataclass
class LabelMix:
    """The labels a drawing samples from and their weights (summing to 1)."""

    names: list[str]
    index: np.ndarray  # (P,) the labels' indices in the model
    weights: np.ndarray  # (P,) float64

    def key(self) -> tuple:
        """The mix as a hashable value: what a cache of its primed states or trees is found by."""
        return tuple(self.names), tuple(self.weights.tolist())

    def pick(self, key: np.uint64, indices: np.ndarray) -> np.ndarray:
        """Each attempt's component (P = 1: all 0), from the attempt's own random stream."""
        if len(self.names) == 1:
            return np.zeros(len(indices), dtype=np.int64)
        u = uniforms(key, indices, LABEL_DRAW)
        return inverse_cdf(np.broadcast_to(self.weights, (len(indices), len(self.weights))), u)

    def start_states(self, start_state: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Each component's start state, from a labelled model's ([h] or [h, c], each (labels, layers, H))."""
        return [[t[k] for t in start_state] for k in self.index.tolist()]


def label_languages(names: list[str]) -> dict[str, str]:
    """The English names of the languages among these labels' parts ({"el": "greek"}): what an
    exported page needs of LANGUAGES for its model."""
    return {code: LANGUAGES[code] for code in sorted(set().union(*map(_own_parts, names))) if code in LANGUAGES}


def label_territories(names: list[str]) -> dict[str, list[str]]:
    """The English names of the territories among these labels' parts ({"GR": ["greece"]}): what an
    exported page needs of TERRITORIES for its model."""
    return {code: list(TERRITORIES[code]) for code in sorted(set().union(*map(_own_parts, names)))
            if code in TERRITORIES}


def territory_name(code: str) -> str:
    """The name a territory is suggested by: its first of one word where it has one (usa, britain),
    so that a shell's completion can offer it."""
    return next((n for n in TERRITORIES[code] if " " not in n), TERRITORIES[code][0])


def label_kinds(names: list[str]) -> list[str]:
    """The kinds among these labels: their last ':'-separated parts (first, surname, city...)."""
    return sorted({n.rsplit(":", 1)[1] for n in names if ":" in n})


def label_asks(names: list[str], own: Optional[list[str]] = None) -> list[str]:
    """What a label can be asked by, to suggest before the labels themselves: an adapted model's
    own labels, then the languages and the territories (in English: a territory by a name of one
    word where it has one, usa, britain) and the kinds (`--label <TAB>`, the playground's and an
    exported page's label field)."""
    territories = sorted(map(territory_name, label_territories(names)))
    return list(dict.fromkeys([*(own or []), *sorted(set(label_languages(names).values())), *territories,
                               *label_kinds(names)]))


def label_facts(names: list[str], own: Optional[list[str]] = None) -> dict:
    """What /v1/models says of these labels beside their names (the playground reads it): the
    languages and territories their terms can name, the suggestions (label_asks), and the summary
    an unknown label's error shows (label_summary)."""
    return {"languages": label_languages(names), "territories": label_territories(names),
            "asks": label_asks(names, own), "summary": label_summary(names)}


def loose_labels(names: list[str]) -> list[str]:
    """The labels with neither a kind nor a language (an adapted model's own, often): label_summary
    names them."""
    codes = label_languages(names)
    return [n for n in names if ":" not in n and not _own_parts(n) & codes.keys()]


def label_summary(names: list[str], loose_note: str = "") -> Optional[str]:
    """What --label can ask many labels by: "labels boys, girls; kinds city, first...; languages
    arabic, ..." (by name the loose_labels, then `loose_note`); None for a dozen labels or fewer
    (they are shown by name), or labels with neither a kind nor a language."""
    kinds, languages = label_kinds(names), sorted(set(label_languages(names).values()))
    if len(names) <= 12 or not (kinds or languages):
        return None
    loose = loose_labels(names)
    return "; ".join(part for part in (
        f"labels {', '.join(loose[:12])}{', ...' if len(loose) > 12 else ''}{loose_note}" if loose else "",
        f"kinds {', '.join(kinds)}" if kinds else "", f"languages {', '.join(languages)}" if languages else "") if part)


def _own_parts(name: str) -> set[str]:
    """A label's ':'-separated parts, and a locale's language and territory (el_GR:first: el_GR,
    first, el and GR)."""
    parts = name.split(":")
    return set(parts) | {piece for p in parts if "_" in p for piece in p.split("_", 1)}


def _parts(name: str) -> set[str]:
    """What asks for a label besides its name: its own parts, its language's English name and its
    territory's, its kind's other words (el_GR:first: greek, greece, given, forename, firstname)."""
    own = _own_parts(name)
    return own | {LANGUAGES[p] for p in own if p in LANGUAGES} | {t for p in own for t in TERRITORIES.get(p, ())} \
        | {w for p in own for w in KINDS.get(p, ())}


def _pieces(term: str, parts: set[str]) -> list[str]:
    """A term's pieces, separated by ':' or spaces (greek:surname, "greek surnames"), words that
    make a part or a place's name together taken together ("united states cities": united states,
    cities), less the FILLERS where another piece names a kind ("greek first names") or no label is
    a person's name."""
    words, pieces, known = [w for w in term.replace(":", " ").split(" ") if w], [], parts | _NAMES
    while words:
        k = next((k for k in range(len(words), 1, -1) if " ".join(words[:k]).lower() in known), 1)
        pieces.append(" ".join(words[:k]).lower() if k > 1 else words[0])
        words = words[k:]
    kind = any(_forms(p, parts) & _KIND_WORDS for p in pieces if not _filler(p, parts))
    return [p for p in pieces if not (_filler(p, parts) and (kind or not _forms(p, parts) & parts))]


def _filler(piece: str, parts: set[str]) -> bool:
    """One of the FILLERS, where no label has the word itself."""
    return piece.lower() in FILLERS and not _own_forms(piece, parts) & parts


def _forms(piece: str, parts: set[str]) -> set[str]:
    """What a piece asks as, among the labels' `parts` (_own_forms); a filler, people's names."""
    forms = _own_forms(piece, parts)
    return forms | set(PEOPLE) if _filler(piece, parts) else forms


def _own_forms(piece: str, parts: set[str]) -> set[str]:
    """What a piece asks as, among the labels' `parts`: itself, and unless it is a code (it, IT:
    three letters or fewer) in lower case and a plural as its singular (Greek: greek, Surnames:
    surname, cities: city); a language's name in any case (Twi: twi); a territory's code typed in
    lower case where no label has it so (us: US; but it stays Italian where a label is in it)."""
    low = piece.lower()
    if len(piece) <= 3:
        up = {piece.upper()} if piece == low and piece not in parts else set()
        return {piece, low} | up if low in _NAMES else {piece} | up
    return {piece, low, low[:-3] + "y" if low.endswith("ies") else low[:-1] if low.endswith("s") else low}


def _matching(term: str, names: list[str]) -> list[int]:
    """A label by its name, else every label that has each of the term's pieces as a part
    (de:city: de_AT:city, de_CH:city, de_DE:city; "greek first names": el_GR:first)."""
    if term in names:
        return [names.index(term)]
    return _having(_pieces(term, set().union(*map(_parts, names))), names)


def _having(pieces: list[str], names: list[str]) -> list[int]:
    """The labels that have each of a term's `pieces` as a part (none for no pieces)."""
    label_parts = [_parts(n) for n in names]
    every = set().union(*label_parts)
    asked = [_forms(p, every) for p in pieces]
    return [i for i, parts in enumerate(label_parts) if asked and all(forms & parts for forms in asked)]


def _shown(found: list[int], names: list[str]) -> str:
    """Labels as an error lists them: the first 8, and ... for more."""
    return ", ".join(names[i] for i in found[:8]) + (", ..." if len(found) > 8 else "")


def _unknown(term: str, names: list[str]) -> UsageError:
    """The error for a term no label answers: the close matches of the piece that no label has (or
    of the whole term) and the labels its other pieces ask for ("italian places": italian:
    it_IT:first, ...), or that its pieces are there but never together."""
    parts = set().union(*map(_parts, names)) | set(names)
    pieces = _pieces(term, parts)
    missing = [p for p in pieces if not _forms(p, parts) & parts]
    if len(pieces) > 1 and not missing:
        return UsageError(f"unknown label {term!r}: no label has all of {', '.join(pieces)}; {pieces[0]}: "
                          f"{_shown(_matching(pieces[0], names), names)} (chargen info --labels lists them)")
    look = missing[0] if len(pieces) > 1 else term
    word = look if look in parts else look.lower()
    close = difflib.get_close_matches(word, sorted(parts), n=5, cutoff=CUTOFFS["close"])
    known = _known_place(look)
    where = f": no label is {known}" if known else f": no label has {look!r}" if look != term else ""
    hint = f"; close: {', '.join(close)}" if close and not known else \
        f"; it has {len(names)}: {label_summary(names) or ', '.join(names)}"
    rest = [p for p in pieces if p not in missing] if len(pieces) > 1 and not known else []
    meant = _meant(term, look, word, close, names) if rest and len(missing) == 1 else None
    if meant is not None:
        hint = f"; did you mean {meant!r}?"
    elif found := _having(rest, names):
        hint += f"; {' '.join(rest)}: {_shown(found, names)}"
    return UsageError(f"unknown label {term!r}{where}{hint} (chargen info --labels lists them)")


def _meant(term: str, look: str, word: str, close: list[str], names: list[str]) -> Optional[str]:
    """The term with its one unknown word `look` (`word` as compared) as the closest of `close` that
    is at least CUTOFFS["meant"] from it and makes the term ask for labels; None if none does."""
    for c in close:
        if difflib.SequenceMatcher(None, c, word).ratio() >= CUTOFFS["meant"]:
            if _matching(meant := term.replace(look, c, 1), names):
                return meant
    return None


def _known_place(piece: str) -> Optional[str]:
    """A language or territory the piece names, as the error for a model with no label in it says
    it ("in Russian (ru)", "from Russia (RU)"); None for any other piece. A code in capitals is a
    territory, in lower case a language first."""
    low = piece.lower()
    languages = [c for c, n in LANGUAGES.items() if low in (c, n) and (c == piece or len(piece) > 3)]
    territories = [c for c, ns in TERRITORIES.items() if (len(piece) <= 3 and c == piece.upper()) or low in ns]
    if languages and not (territories and piece.isupper()):
        return f"in {LANGUAGES[languages[0]].capitalize()} ({languages[0]})"
    if territories:
        name = TERRITORIES[territories[0]][0]
        return f"from {name.title() if ' ' in name else name.capitalize()} ({territories[0]})"
    return None


def resolve_labels(spec: Optional[str], names: Optional[list[str]], counts: Optional[list[int]],
                   default: Optional[list[int]] = None) -> Optional[LabelMix]:
    """The LabelMix `spec` asks for (see the module docstring); None for a model without labels
    and no spec. With no spec, the labels in proportion to `default` (a model's own training
    run's lines: chargen.checkpoint.Checkpoint.label_default), else to `counts`. A one-line
    UsageError for a bad spec, an unknown label (with close matches), or a label asked of a model
    without labels."""
    if not names:
        if spec:
            raise UsageError("this model has no labels; `label` needs a model trained with --labels")
        return None
    counts = list(counts or [1] * len(names))
    weights = np.zeros(len(names))
    if not spec:
        weights[:] = default if default is not None else counts
    else:
        for term in spec.split(","):
            label, eq, share = term.strip().partition("=")
            label = label.strip()
            if label not in names:
                label = unicodedata.normalize("NFC", label)  # (labels are read in NFC: Vocab.conform)
            try:
                w = float(share) if eq else 1.0
            except ValueError:
                w = math.nan
            if not (0 < w <= MAX_WEIGHT):  # (NaN fails; a bound, so that the shares' sum stays finite)
                raise UsageError(f"`label`: the weight in {term.strip()!r} must be a number above 0 and at most "
                                 f"{MAX_WEIGHT:,.0f} (a blend: it=0.7,es=0.3)")
            if not label:
                raise UsageError(f"`label`: {term.strip()!r} names no label (a blend: it=0.7,es=0.3)")
            found = _matching(label, names)
            if not found:
                raise _unknown(label, names)
            within = np.array([counts[i] for i in found], dtype=np.float64)
            if not within.sum():  # (a small list whose lines the run's split all held out to validate)
                raise UsageError(f"label '{label}' has no training lines in this model (the run held them all out "
                                 "to validate it), so it has learnt nothing to draw from")
            weights[found] += w * within / within.sum()
    chosen = np.flatnonzero(weights > 0)
    # Summed in order (a cumulative sum's last entry), as an exported page sums them.
    return LabelMix([names[i] for i in chosen], chosen.astype(np.int64), weights[chosen] / np.cumsum(weights[chosen])[-1])
