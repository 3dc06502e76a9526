"""Batches through /dev/shm: slots written and read back as frames, reused only once answered,
removed when given up; the probe that tells a router it shares an agent's /dev/shm."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from common import shared_memory
from common.cluster import AgentInfo, DeviceInfo
from common.shared_memory import SHM_DIR, BatchSlots, SharedBatchError, read_batch
from router.dispatch.agent_client import AgentClient

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm on this system"),
]


@pytest.fixture
def slots() -> Iterator[BatchSlots]:
    kept = BatchSlots(keep=2)
    try:
        yield kept
    finally:
        kept.close()


def batch(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {"image": rng.standard_normal((rows, 3, 32, 32)).astype(np.float32),
            "ids": rng.integers(0, 9, (rows, 7)).astype(np.int64),
            "mask": np.ones((rows, 7), bool), "half": np.zeros((rows, 0), np.float16)}  # fmt: skip


def assert_same(got: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> None:
    assert got.keys() == sent.keys()
    for name, array in sent.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


def test_a_batch_reads_back_as_written(slots: BatchSlots) -> None:
    sent = batch(4)
    name = slots.write(sent)
    assert name is not None and (SHM_DIR / name).is_file()
    assert_same(read_batch(name), sent)


def test_an_answered_slot_takes_a_smaller_batch_and_reads_only_that(slots: BatchSlots) -> None:
    first = slots.write(batch(8))
    assert first is not None
    slots.release(first, answered=True)
    smaller = batch(1)
    again = slots.write(smaller)
    assert again == first  # the same file, written over
    assert_same(read_batch(again), smaller)  # not the older, longer frame's tail


def test_a_slot_not_answered_is_removed_never_reused(slots: BatchSlots) -> None:
    name = slots.write(batch(2))
    assert name is not None
    slots.release(name, answered=False)
    assert not (SHM_DIR / name).exists()
    with pytest.raises(SharedBatchError, match="gone"):
        read_batch(name)
    assert slots.write(batch(2)) != name


def test_slots_kept_are_bounded_and_close_removes_them_all() -> None:
    slots = BatchSlots(keep=1)
    names = [slots.write(batch(1)) for _ in range(3)]
    assert all(n is not None for n in names) and len(set(names)) == 3
    for name in names:
        assert name is not None
        slots.release(name, answered=True)
    assert [(SHM_DIR / str(n)).exists() for n in names] == [True, False, False]
    held = slots.write(batch(1))
    slots.close()
    assert not any((SHM_DIR / str(n)).exists() for n in [*names, held])


@pytest.mark.parametrize("name", ["../etc/passwd", "gpulet-batch-xyz", "other-file"])
def test_only_batch_names_are_read(name: str) -> None:
    with pytest.raises(SharedBatchError, match="not a shared batch name"):
        read_batch(name)


def test_a_torn_slot_is_an_error_not_a_batch(slots: BatchSlots) -> None:
    name = slots.write(batch(2))
    assert name is not None
    with (SHM_DIR / name).open("r+b") as file:
        file.truncate(20)
    with pytest.raises(SharedBatchError, match="not whole"):
        read_batch(name)


def agent(url: str, probe: str | None) -> AgentInfo:
    device = DeviceInfo("cpu0", "cpu", (0,))
    return AgentInfo(url, url, "host", 1, (device,), time.time(), shared_memory=probe)


def test_a_router_shares_memory_only_with_agents_whose_probe_it_sees() -> None:
    probe = shared_memory.create_probe()
    assert probe is not None
    elsewhere = "gpulet-probe-" + "0" * 32  # made in another /dev/shm: not found here
    client = AgentClient(4)
    off = AgentClient(4, via_shared_memory=False)
    try:
        agents = [agent("http://here", probe), agent("http://there", elsewhere),
                  agent("http://old", None)]  # fmt: skip
        client.know_agents(agents)
        off.know_agents(agents)
        big, small = batch(64), batch(1)  # 800 KB and 12 KB
        shared = [client._share(a.url, big) for a in agents]
        assert shared[0] is not None and shared[1:] == [None, None]
        assert client._share("http://here", small) is None  # cheaper inline
        assert off._share("http://here", big) is None
        # The agent restarted with a new probe that this router cannot see: inline again.
        client.know_agents([agent("http://here", elsewhere)])
        assert client._share("http://here", big) is None
    finally:
        shared_memory.remove_probe(probe)
        client._slots.close()


LEAVE = """
import sys
from common import shared_memory
from common.shared_memory import BatchSlots
import numpy as np
slots = BatchSlots()
print(slots.write({"x": np.zeros((4, 4), np.float32)}), shared_memory.create_probe(), flush=True)
sys.stdin.read()  # held until the test kills it
"""


def test_a_sweep_removes_only_files_no_live_process_holds() -> None:
    mine, probe = BatchSlots(), shared_memory.create_probe()
    try:
        # A child makes a slot and a probe and is killed before it can remove them (SIGKILL).
        with subprocess.Popen([sys.executable, "-c", LEAVE], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) as child:  # fmt: skip
            assert child.stdout is not None
            orphans = child.stdout.readline().split()
            assert len(orphans) == 2
            # While it lives, its files are not swept, however old.
            assert all(n not in swept_now() for n in orphans)
            child.kill()
        assert all((SHM_DIR / n).exists() for n in orphans)
        held = mine.write(batch(1))
        # A young file is left (its maker may not hold its lock yet); an old one goes.
        assert all(n not in swept_now(min_age_s=3600) for n in orphans)
        gone = swept_now()
        assert set(orphans) <= gone and not (SHM_DIR / orphans[0]).exists()
        # This process's own slot and probe stay: it holds their locks.
        assert held is not None and probe is not None
        assert held not in gone and probe not in gone and shared_memory.sees_probe(probe)
    finally:
        mine.close()
        if probe is not None:
            shared_memory.remove_probe(probe)


def swept_now(min_age_s: float = 0.0) -> set[str]:
    before = {p.name for p in SHM_DIR.glob("gpulet-*")}
    shared_memory.sweep_orphans(min_age_s=min_age_s)
    return before - {p.name for p in SHM_DIR.glob("gpulet-*")}
