"""What a scanned code means: an evaluation link for a case, a pickup code, or something else.

Halls print different QR codes (the provincial evaluation link of a case, a pickup code for
documents), so the rules are regular expressions from the config, with defaults that fit the usual
formats. A rule must match the whole code (surrounding whitespace is ignored). Evaluation rules are
tried first, then pickup rules; anything else is `other`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus


class ScanKind(enum.StrEnum):
    """The meaning of a scanned code."""

    EVALUATION_URL = "evaluation_url"
    PICKUP_CODE = "pickup_code"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ScanMeaning:
    """The classification of one code; `case_no` is set only for an evaluation link."""

    kind: ScanKind
    case_no: str | None = None


CASE_NO_GROUP = "case_no"

DEFAULT_PATTERNS: Mapping[ScanKind, tuple[str, ...]] = {
    # An https link whose query carries the case number as case_no, caseNo or projectNo.
    ScanKind.EVALUATION_URL: (
        (
            r"(?i:https)://[^\s/?#]+(?:/[^\s?#]*)?"
            r"\?(?:[^\s#]*&)?(?:case_no|caseNo|projectNo)=(?P<case_no>[^\s&#]+)(?:[&#]\S*)?"
        ),
    ),
    # 6 to 12 characters: digits only, or letters and digits with at least one digit.
    ScanKind.PICKUP_CODE: (r"(?=[A-Za-z]*[0-9])[A-Za-z0-9]{6,12}",),
}


class ScanPatternError(ValueError):
    """A configured pattern is unusable; `kind` and `index` say which one, `pattern` is its text."""

    def __init__(self, kind: str, index: int, pattern: str, problem: str) -> None:
        super().__init__(f"scan pattern {kind}[{index}] {pattern!r}: {problem}")
        self.kind = kind
        self.index = index
        self.pattern = pattern
        self.problem = problem


class ScanClassifier:
    """Classifies codes with ordered regular expressions per kind.

    `patterns` maps `evaluation_url` and/or `pickup_code` to a list of patterns. A kind given there
    replaces that kind's defaults (an empty list turns the kind off); a kind left out keeps its
    defaults. Evaluation patterns must have a named group `case_no`; its text is percent-decoded.
    """

    def __init__(self, patterns: Mapping[str, Sequence[str]] | None = None) -> None:
        merged: dict[ScanKind, tuple[str, ...]] = dict(DEFAULT_PATTERNS)
        for kind_name, texts in (patterns or {}).items():
            kind = _kind_for(kind_name)
            if isinstance(texts, str):
                raise ScanPatternError(kind_name, 0, texts, "give a list of patterns, not a string")
            merged[kind] = tuple(texts)
        self._rules: list[tuple[ScanKind, re.Pattern[str]]] = []
        for kind in (ScanKind.EVALUATION_URL, ScanKind.PICKUP_CODE):
            for index, text in enumerate(merged.get(kind, ())):
                self._rules.append((kind, _compile(kind, index, text)))

    def classify(self, data: str) -> ScanMeaning:
        """The meaning of one scanned code."""
        code = data.strip()
        for kind, pattern in self._rules:
            match = pattern.fullmatch(code)
            if match is None:
                continue
            if kind is ScanKind.EVALUATION_URL:
                case_no = unquote_plus(match.group(CASE_NO_GROUP) or "").strip()
                if not case_no:
                    continue
                return ScanMeaning(kind, case_no)
            return ScanMeaning(kind)
        return ScanMeaning(ScanKind.OTHER)


def _kind_for(name: str) -> ScanKind:
    """The kind a config key names; `other` is the fallback and takes no patterns."""
    configurable = {ScanKind.EVALUATION_URL.value, ScanKind.PICKUP_CODE.value}
    if name not in configurable:
        raise ScanPatternError(
            name, 0, "", "unknown kind: patterns are for 'evaluation_url' or 'pickup_code'"
        )
    return ScanKind(name)


def _compile(kind: ScanKind, index: int, text: str) -> re.Pattern[str]:
    """Compile one pattern, turning regex errors into errors that name the pattern."""
    if not isinstance(text, str) or not text:
        raise ScanPatternError(kind.value, index, str(text), "a pattern must be a non-empty string")
    try:
        pattern = re.compile(text)
    except re.error as error:
        problem = f"not a valid regular expression ({error})"
        raise ScanPatternError(kind.value, index, text, problem) from error
    if kind is ScanKind.EVALUATION_URL and CASE_NO_GROUP not in pattern.groupindex:
        raise ScanPatternError(
            kind.value, index, text, "needs a named group (?P<case_no>...) for the case number"
        )
    return pattern
