"""loadgen's PNG: written with matplotlib when installed, a clear hint when not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loadgen.plot import INSTALL_HINT, PlotUnavailable, write_plot
from loadgen.report import Record, Replan, Report, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report() -> Report:
    records = [
        Record("a", i / 10, i / 10, i / 10 + 0.02, 200, None, 20.0 + i, 50.0) for i in range(50)
    ]
    records.append(Record("a", 4.0, 4.0, None, 0, "timeout", None, 50.0))
    return build_report(records, warmup_s=0.5, duration_s=5.0, models={"a": 50.0},
                        replans=[Replan(2.0, 3), Replan(3.5, 4)])  # fmt: skip


def test_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "run.png"
    write_plot(_report(), path, title="t")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(PlotUnavailable, match=r"gpulet\[plot\]"):
        write_plot(_report(), tmp_path / "run.png")
    assert "pip install 'gpulet[plot]'" in INSTALL_HINT
