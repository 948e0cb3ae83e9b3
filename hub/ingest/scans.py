"""What a scanned code means: an evaluation link for a case, a pickup code, or something else.

Halls print different QR codes (the provincial evaluation link of a case, a pickup code for
documents), so the rules are regular expressions from the config, with defaults that fit the usual
formats. A rule must match the whole code (surrounding whitespace is ignored). Evaluation rules are
tried first, then pickup rules; anything else is `other`.

`ScanRecorder` is what every scan path (MQTT scanners, serial and camera QR scanners) goes through
to become record fields: it classifies the raw code, then keeps it only with each ID number masked
(`hub.privacy.id_numbers`) and adds `citizen_ref`/`citizen_masked` of the first one, as for card reads.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from drivers.base import CitizenIdentifier, CitizenIdentity
from hub.privacy.id_numbers import mask_id_numbers

log = logging.getLogger(__name__)


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


class ScanRecorder:
    """Turns a scanned code into the fields a scan record keeps, with every ID number masked.

    The code is classified as scanned, then `data`, `symbology` and `case_no` are kept with each ID
    number masked (first 6 and last 4 kept). `citizen_ref` and `citizen_masked` describe the first
    number found (in `data`, then `symbology`), or are None; later numbers are masked only.
    `identifier` is called once, on the first scan that carries a number, so a node that never
    scans one never reads its secret for this or loads the HMAC code.
    """

    def __init__(
        self, identifier: Callable[[], CitizenIdentifier], classifier: ScanClassifier | None = None
    ) -> None:
        self._make_identifier = identifier
        self._identifier: CitizenIdentifier | None = None
        self.classifier = classifier or ScanClassifier()

    def fields(self, code: str, symbology: str | None) -> dict[str, str | None]:
        """`data`, `symbology`, `meaning`, `case_no`, `citizen_ref`, `citizen_masked` of one code."""
        meaning = self.classifier.classify(code)
        data = mask_id_numbers(code)
        kept_symbology = mask_id_numbers(symbology) if symbology is not None else None
        numbers = data.numbers + (kept_symbology.numbers if kept_symbology else ())
        citizen = self._identify(numbers[0].canonical) if numbers else None
        return {
            "data": data.text,
            "symbology": kept_symbology.text if kept_symbology else None,
            "meaning": str(meaning.kind),
            "case_no": mask_id_numbers(meaning.case_no).text if meaning.case_no else None,
            "citizen_ref": citizen.ref if citizen else None,
            "citizen_masked": numbers[0].masked if numbers else None,
        }

    def _identify(self, number: str) -> CitizenIdentity | None:
        """The number's identity (its seal, if any, is dropped); None, logged, if it cannot be made."""
        try:
            if self._identifier is None:
                self._identifier = self._make_identifier()
            identity = self._identifier.identify(number)
        except Exception as exc:  # still stored, masked: a scan without its ref beats none
            problem = mask_id_numbers(str(exc)).text
            log.error("scan: ID number masked, but no citizen_ref (%s: %s)", type(exc).__name__, problem)
            return None
        return CitizenIdentity(masked=identity.masked, ref=identity.ref)
