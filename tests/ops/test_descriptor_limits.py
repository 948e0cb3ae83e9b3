"""The hub may hold many connections at once (issue 13, defect 8): its unit and the hub itself lift
the open-file limit above systemd's default soft limit of 1,024."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

from hub.config import ApiSection

REPO = Path(__file__).resolve().parents[2]


def test_the_unit_allows_far_more_descriptors_than_the_api_takes_connections() -> None:
    unit = (REPO / "systemd" / "hallhub.service").read_text()
    match = re.search(r"^LimitNOFILE=(\d+)$", unit, re.MULTILINE)
    assert match is not None, "systemd/hallhub.service sets no LimitNOFILE"
    assert int(match.group(1)) >= 16 * ApiSection().max_connections


def test_the_hub_lifts_a_soft_limit_of_1024_itself() -> None:
    """As when started by hand or by a supervisor without the unit's limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = (
        "import resource\n"
        "from hub.ops.runner import raise_open_file_limit\n"
        "raise_open_file_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )

    def soft_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        preexec_fn=soft_1024,  # the child only sets its own limit before exec
    )
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    assert int(done.stdout.strip()) == max(1024, wanted)
