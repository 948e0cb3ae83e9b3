"""Doctor's findings and report: one line per finding, the closing summary, `--json`, the terminal."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from hub import __version__

__all__ = ["LABELS", "Finding", "Level", "Report", "plural", "print_report"]


class Level(enum.StrEnum):
    """How bad a finding is; any error makes doctor exit 1. `skipped`: a check that could not run
    because what it needs in the config is not valid (the config errors say why)."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    SKIPPED = "skipped"


LABELS: Final = {Level.OK: "OK", Level.WARNING: "WARN", Level.ERROR: "ERROR", Level.SKIPPED: "SKIP"}
_COLOURS: Final = {Level.OK: "green", Level.WARNING: "yellow", Level.ERROR: "bold red", Level.SKIPPED: "cyan"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One result line: `LEVEL check[subject]: message; fix: fix`.

    `key` is the config key path a config or secret-file finding is about (`national.pf.qr`), as
    `hallhub config check` names it; empty for the other checks.
    """

    check: str
    subject: str
    level: Level
    message: str
    fix: str = ""
    key: str = ""

    @classmethod
    def ok(cls, check: str, subject: str, message: str) -> Finding:
        """A check that passed."""
        return cls(check, subject, Level.OK, message)

    @classmethod
    def warn(cls, check: str, subject: str, message: str, fix: str = "") -> Finding:
        """Works, but a technician should know."""
        return cls(check, subject, Level.WARNING, message, fix)

    @classmethod
    def error(cls, check: str, subject: str, message: str, fix: str = "") -> Finding:
        """The hub will not work as configured."""
        return cls(check, subject, Level.ERROR, message, fix)

    @classmethod
    def skip(cls, check: str, subject: str, why: str) -> Finding:
        """A check that could not run because what it needs in the config is not valid."""
        return cls(
            check,
            subject,
            Level.SKIPPED,
            f"not checked: {why}",
            "fix the errors above, then run doctor again",
        )

    def line(self) -> str:
        """The finding as one line of text."""
        text = f"{LABELS[self.level]:<5} {self.check}[{self.subject}]: {self.message}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def scrubbed(self, scrub: Callable[[str], str]) -> Finding:
        """The finding with its texts passed through `scrub` (secrets and personal data removed)."""
        return Finding(
            self.check, scrub(self.subject), self.level, scrub(self.message), scrub(self.fix), self.key
        )

    def to_json(self) -> dict[str, str]:
        """The finding for `--json`."""
        return {
            "check": self.check,
            "subject": self.subject,
            "level": str(self.level),
            "message": self.message,
            "fix": self.fix,
            "key": self.key,
        }


@dataclass(slots=True)
class Report:
    """All findings of one doctor run."""

    config_path: str
    user: str
    findings: list[Finding] = field(default_factory=list)
    config: dict[str, Any] | None = None
    elapsed_s: float = 0.0

    @property
    def errors(self) -> int:
        """Number of errors."""
        return sum(1 for f in self.findings if f.level is Level.ERROR)

    @property
    def warnings(self) -> int:
        """Number of warnings."""
        return sum(1 for f in self.findings if f.level is Level.WARNING)

    @property
    def skipped(self) -> int:
        """Number of checks that could not run (what they need in the config is not valid)."""
        return sum(1 for f in self.findings if f.level is Level.SKIPPED)

    @property
    def exit_code(self) -> int:
        """1 if any check failed, else 0."""
        return 1 if self.errors else 0

    def lines(self) -> list[str]:
        """One line per finding."""
        return [finding.line() for finding in self.findings]

    def summary(self) -> str:
        """The closing line."""
        checks = plural(len(self.findings), "check")
        if self.skipped:
            checks += f", {self.skipped} skipped"
        if self.errors:
            return (
                f"doctor: {plural(self.errors, 'error')} and {plural(self.warnings, 'warning')} "
                f"in {checks} ({self.elapsed_s:.1f} s): fix the errors, then run it again"
            )
        return f"doctor: no errors, {plural(self.warnings, 'warning')} in {checks} ({self.elapsed_s:.1f} s)"

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (`--json`)."""
        return {
            "hallhub": __version__,
            "config_path": self.config_path,
            "user": self.user,
            "ok": self.errors == 0,
            "errors": self.errors,
            "warnings": self.warnings,
            "skipped": self.skipped,
            "elapsed_s": round(self.elapsed_s, 2),
            "findings": [finding.to_json() for finding in self.findings],
            "config": self.config,
        }


def plural(count: int, noun: str) -> str:
    """`1 check`, `3 checks`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_report(report: Report, config_path: str) -> None:
    """The report on the terminal: a heading, one coloured line per finding, the summary."""
    from rich.console import Console  # noqa: PLC0415 (rich only for the terminal, not for --json)
    from rich.markup import escape  # noqa: PLC0415

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"hallhub doctor {__version__}: {config_path}, permissions checked for user {report.user}")
    for finding in report.findings:
        label = LABELS[finding.level]
        rest = escape(finding.line()[len(label) :])
        console.print(f"[{_COLOURS[finding.level]}]{label}[/]{rest}")
    console.print(report.summary())
