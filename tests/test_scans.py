"""ScanClassifier: default rules, case number extraction, custom patterns, bad patterns."""

from __future__ import annotations

import pytest

from hub.ingest.scans import ScanClassifier, ScanKind, ScanMeaning, ScanPatternError


@pytest.fixture
def classifier() -> ScanClassifier:
    return ScanClassifier()


@pytest.mark.parametrize(
    ("code", "case_no"),
    [
        ("https://zwfw.sd.gov.cn/pj/index?case_no=37010220240001", "37010220240001"),
        ("https://zwfw.sd.gov.cn/pj?caseNo=37010220240002&from=qr", "37010220240002"),
        ("https://pj.example.gov.cn/?lang=zh&projectNo=SD-2024-0003#top", "SD-2024-0003"),
        ("HTTPS://PJ.EXAMPLE.GOV.CN/e?projectNo=A%2F2024%200004", "A/2024 0004"),
        ("  https://e.example.gov.cn/p?case_no=X1\r\n", "X1"),
    ],
)
def test_evaluation_links_carry_the_case_number(classifier: ScanClassifier, code: str, case_no: str) -> None:
    assert classifier.classify(code) == ScanMeaning(ScanKind.EVALUATION_URL, case_no)


@pytest.mark.parametrize(
    "code",
    [
        "http://zwfw.sd.gov.cn/pj?case_no=1",  # not https
        "https://zwfw.sd.gov.cn/pj?case_no=",  # empty case number
        "https://zwfw.sd.gov.cn/pj?mycase_no=1",  # a different parameter
        "https://zwfw.sd.gov.cn/pj",  # no query
        "see https://zwfw.sd.gov.cn/pj?case_no=1",  # not the whole code
    ],
)
def test_links_without_a_usable_case_number_are_other(classifier: ScanClassifier, code: str) -> None:
    assert classifier.classify(code) == ScanMeaning(ScanKind.OTHER)


@pytest.mark.parametrize("code", ["123456", "123456789012", "AB12CD", "pk20240042", " 88001234 "])
def test_pickup_codes(classifier: ScanClassifier, code: str) -> None:
    assert classifier.classify(code) == ScanMeaning(ScanKind.PICKUP_CODE)


@pytest.mark.parametrize(
    "code",
    ["12345", "1234567890123", "ABCDEFGH", "AB-123456", "取件码123456", "", "WIFI:S:hall;;"],
)
def test_other_codes(classifier: ScanClassifier, code: str) -> None:
    meaning = classifier.classify(code)
    assert meaning.kind is ScanKind.OTHER
    assert meaning.case_no is None


def test_kind_values_are_plain_strings() -> None:
    assert str(ScanKind.EVALUATION_URL) == "evaluation_url"
    assert [k.value for k in ScanKind] == ["evaluation_url", "pickup_code", "other"]


def test_custom_pickup_pattern_replaces_the_default_and_keeps_evaluation() -> None:
    classifier = ScanClassifier({"pickup_code": [r"QJ-\d{4}"]})
    assert classifier.classify("QJ-0042").kind is ScanKind.PICKUP_CODE
    assert classifier.classify("12345678").kind is ScanKind.OTHER
    assert classifier.classify("https://a.gov.cn/?case_no=9").case_no == "9"


def test_custom_evaluation_pattern_and_order() -> None:
    classifier = ScanClassifier(
        {"evaluation_url": [r"HCP:(?P<case_no>\d+)", r"https://pj\.local/(?P<case_no>[A-Z0-9]+)"]}
    )
    assert classifier.classify("HCP:123456") == ScanMeaning(ScanKind.EVALUATION_URL, "123456")
    assert classifier.classify("https://pj.local/AB99") == ScanMeaning(ScanKind.EVALUATION_URL, "AB99")
    # Evaluation rules are tried before pickup rules, and the default link rule was replaced.
    assert classifier.classify("https://a.gov.cn/?case_no=9").kind is ScanKind.OTHER


def test_empty_list_turns_a_kind_off() -> None:
    classifier = ScanClassifier({"pickup_code": []})
    assert classifier.classify("12345678").kind is ScanKind.OTHER


def test_optional_case_group_that_did_not_match_is_no_evaluation() -> None:
    classifier = ScanClassifier({"evaluation_url": [r"EVAL(?::(?P<case_no>\d+))?"]})
    assert classifier.classify("EVAL:7") == ScanMeaning(ScanKind.EVALUATION_URL, "7")
    assert classifier.classify("EVAL") == ScanMeaning(ScanKind.OTHER)


def test_invalid_regex_names_kind_index_and_pattern() -> None:
    with pytest.raises(ScanPatternError) as caught:
        ScanClassifier({"pickup_code": [r"\d{6}", r"(unclosed"]})
    error = caught.value
    assert (error.kind, error.index, error.pattern) == ("pickup_code", 1, "(unclosed")
    assert "pickup_code[1]" in str(error)
    assert "not a valid regular expression" in str(error)
    assert isinstance(error, ValueError)


def test_evaluation_pattern_needs_a_case_no_group() -> None:
    with pytest.raises(ScanPatternError, match=r"\(\?P<case_no>"):
        ScanClassifier({"evaluation_url": [r"https://x/(\d+)"]})


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ({"other": [r".*"]}, "unknown kind"),
        ({"ticket": [r".*"]}, "unknown kind"),
        ({"pickup_code": r"\d+"}, "list of patterns"),
        ({"pickup_code": [""]}, "non-empty"),
    ],
)
def test_other_bad_settings(patterns: dict[str, object], message: str) -> None:
    with pytest.raises(ScanPatternError, match=message):
        ScanClassifier(patterns)  # type: ignore[arg-type]
