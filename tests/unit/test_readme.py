"""The README documents every setting and keeps its two-command Quick start."""

from __future__ import annotations

import re
from pathlib import Path

from common.settings import AgentSettings, CommonSettings, RouterSettings

README = Path(__file__).parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    fields = {
        name for cls in (CommonSettings, RouterSettings, AgentSettings) for name in cls.model_fields
    }
    missing = sorted(
        f"GPULET_{name.upper()}" for name in fields if f"GPULET_{name.upper()}" not in text
    )
    assert missing == []


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    lines = block.group(1).strip().splitlines()
    assert len(lines) == 2
    assert "gpulet up" in lines[0] and "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "README.md" in ci and "n == 2" in ci
