"""``imgfetch bench``: the pieces, and a smoke run of ``--quick`` (no timing assertions)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import io
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from imgfetch import bench

if TYPE_CHECKING:
    from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its process pool pickles functions by module name
    spec.loader.exec_module(module)
    return module


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (seed * 40 % 256, 90, 160)).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_url_list_spreads_rows_over_hosts_and_images() -> None:
    entries = [{"name": f"{i:05d}.jpg"} for i in range(3)]
    urls = bench.url_list(entries, ["127.0.0.1", "127.0.0.2"], 8080, 5)
    assert urls == [
        "http://127.0.0.1:8080/img/00000.jpg",
        "http://127.0.0.2:8080/img/00001.jpg",
        "http://127.0.0.1:8080/img/00002.jpg",
        "http://127.0.0.2:8080/img/00000.jpg",
        "http://127.0.0.1:8080/img/00001.jpg",
    ]


def test_verify_counts_only_whole_images_and_for_w1_only_corpus_bytes(tmp_path: Path) -> None:
    good, other = jpeg(1), jpeg(2)
    (tmp_path / "a.jpg").write_bytes(good)
    (tmp_path / "b.jpg").write_bytes(other)
    (tmp_path / "c.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    want = frozenset({hashlib.sha256(good).hexdigest(), hashlib.sha256(good[: len(good) // 2]).hexdigest()})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert bench.verify(tmp_path, None, pool) == (3, 2)  # the cut JPEG does not decode
        assert bench.verify(tmp_path, want, pool) == (3, 1)  # b.jpg is not a corpus file


def test_table_compares_with_classic() -> None:
    rows = [
        bench.Result("W1", "imgfetch-async", 100, 1.0, 0.5, 60.0, 100, 100, 0, peak_pss_mb=41.4),
        bench.Result("W1", "classic", 100, 10.0, 2.0, 40.0, 100, 100, 0),
    ]
    text = bench.table(rows, "W1")
    assert "| imgfetch-async | 100 | 100 | 10.0x | 5.00 | 60 | 41 | 100/100 |  |  |" in text
    assert "| classic | 100 | 10 | 1.0x | 20.00 | 40 | - | 100/100 |  |  |" in text


def _run(tool: str, per_s: float, rep: int, workload: str = "W2") -> bench.Result:
    return bench.Result(workload, tool, 100, 100 / per_s, 1.0, 50.0, 100, 100, 0, rep=rep)


def test_ratios_pair_the_best_runs_and_each_repetitions_runs() -> None:
    runs = [
        _run("imgfetch-async", 100, 0),
        _run("img2dataset", 50, 0),
        _run(bench.CEILING, 110, 0),
        _run("imgfetch-async", 80, 1),
        _run("img2dataset", 50, 1),
        _run(bench.CEILING, 100, 1),
        _run("imgfetch-threads", 90, 1),  # another engine: compared in the table, not here
        bench.Result("W2", "curl", 100, 1.0, 1.0, 1.0, 0, 0, 7),  # no valid image: no ratio
    ]
    found = {(r.tool, r.against): r for r in bench.ratios(runs)}
    assert set(found) == {
        ("imgfetch-async", "img2dataset"),
        ("imgfetch-async", bench.CEILING),
        ("imgfetch-threads", "img2dataset"),
        ("imgfetch-threads", bench.CEILING),
    }
    peer = found["imgfetch-async", "img2dataset"]
    assert peer.best == pytest.approx(2.0)
    assert peer.same_repetition == pytest.approx((2.0, 1.6))
    assert peer.median == pytest.approx(1.8)
    ceiling = found["imgfetch-async", bench.CEILING]
    assert ceiling.best == pytest.approx(100 / 110)
    assert ceiling.same_repetition == pytest.approx((100 / 110, 0.8))
    # a tool that ran in one repetition only is paired with that repetition alone
    assert found["imgfetch-threads", bench.CEILING].same_repetition == pytest.approx((0.9,))
    assert bench.ratio_lines([ceiling]) == [
        "imgfetch-async vs processing ceiling: 90.9 % best vs best; same repetition: median 85.5 %"
        " (90.9 % / 80.0 %)"
    ]
    assert "| imgfetch-async | img2dataset | 2.00x | 1.80x | 2.00x / 1.60x |" in bench.ratio_table([peer])


@pytest.mark.parametrize("fork", [True, False], ids=["shared-by-fork", "read-by-each-worker"])
def test_processing_ceiling_processes_in_memory_bytes_and_counts_only_that_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    if not fork:  # as where processes cannot fork: each worker's initializer reads the bytes
        monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    names = []
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(i))
        names.append(f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    res = bench.processing_ceiling(tmp_path, [*names, *names, "bad.jpg"], 32, workers=2)
    assert (res.urls, res.valid) == (7, 6)  # repeated names are processed each time; garbage is not counted
    assert res.tool == "processing ceiling" and res.wall_s > 0
    # The CPU is the workers' time inside images.process: far below a pool's start-up (imports alone ~0.1 s).
    assert 0 < res.cpu_s < 0.05
    assert bench._BODIES == {}  # the parent lets go of the corpus


def test_the_ceiling_processes_with_the_options_of_imgfetch_size(tmp_path: Path) -> None:
    from imgfetch import api, cli

    args = cli.parser().parse_args([str(tmp_path / "list.txt"), "-o", str(tmp_path / "out"), "--size", "256"])
    assert api.config(args.input, args.out, **cli.options(args)).image == bench.ceiling_config(256)


class _Probe:
    def __init__(self, costs: list[float]) -> None:
        self.costs = costs
        self.folders: list[Path] = []

    def __call__(self, folder: Path, count: int = 300) -> float:
        assert folder not in self.folders  # each probe writes into a new folder
        self.folders.append(folder)
        return self.costs.pop(0)


def _bench_for_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, costs: list[float]
) -> tuple[bench.Bench, _Probe, list[str]]:
    probe = _Probe(costs)
    monkeypatch.setattr(bench, "file_create_cpu_us", probe)
    monkeypatch.setattr(bench, "DISK_POLL_S", 0.0)
    logged: list[str] = []
    settings = bench.settings_from(bench.parse(["--cache", str(tmp_path), "--out", str(tmp_path)]))
    return bench.Bench(settings, logged.append), probe, logged


def test_bench_waits_while_the_disk_is_in_its_slow_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = bench.Context(bench.settings_from(bench.parse(["--quick"])), tmp_path, tmp_path, None)
    b, probe, logged = _bench_for_disk(tmp_path, monkeypatch, [80.0])
    b.await_disk(ctx)
    assert len(probe.folders) == 1 and b.disk_waits == [] and logged == []  # healthy: one probe, no wait

    b, probe, logged = _bench_for_disk(tmp_path, monkeypatch, [900.0, 600.0, 90.0])
    b.await_disk(ctx)
    assert len(probe.folders) == 3 and len(b.disk_waits) == 1
    assert "slow state" in logged[0] and "recovered" in logged[-1]


def test_bench_measures_anyway_after_waiting_long_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = bench.Context(bench.settings_from(bench.parse(["--quick"])), tmp_path, tmp_path, None)
    b, probe, logged = _bench_for_disk(tmp_path, monkeypatch, [900.0, 900.0])
    b.s = dataclasses.replace(b.s, disk_wait=0.0)
    b.await_disk(ctx)
    assert len(probe.folders) == 1 and len(b.disk_waits) == 1
    assert "still slow; measuring anyway" in logged[-1]


def test_quick_bench_never_waits_for_the_disk_unless_asked() -> None:
    assert bench.settings_from(bench.parse(["--quick"])).disk_wait == 0
    assert bench.settings_from(bench.parse([])).disk_wait == bench.DISK_WAIT_S
    assert bench.settings_from(bench.parse(["--quick", "--disk-wait", "30"])).disk_wait == 30


def test_file_create_probe_writes_real_files(tmp_path: Path) -> None:
    us = bench.file_create_cpu_us(tmp_path / "probe", count=20)
    assert us > 0 and len(list((tmp_path / "probe").iterdir())) == 20


_FORKER = """
import os, sys, time
block = bytearray(64 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
pid = os.fork()
if pid == 0:
    time.sleep(30)
    os._exit(0)
print(os.getpid(), pid, flush=True)
sys.stdin.read()
os.kill(pid, 9)
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pss_splits_what_a_forked_child_shares() -> None:
    """RSS counts the pages a fork shares twice; PSS splits them, so the tree's PSS stays near one copy."""
    with subprocess.Popen(
        [sys.executable, "-c", _FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        try:
            rss, pss = bench._rss(pids), bench._pss(pids)
        finally:
            proc.stdin.close()
            proc.wait(10)
    assert rss > 2 * (60 << 20), "both processes count the block in their RSS"
    assert pss < rss - (50 << 20), "PSS counts the shared block about once"


def test_corpus_is_deterministic_and_grows_as_a_prefix(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    corpus = load("corpus")
    small = corpus.build(tmp_path / "a", 2, seed=3)
    big = corpus.build(tmp_path / "b", 3, seed=3)
    assert [e["sha256"] for e in small] == [e["sha256"] for e in big[:2]]
    again = corpus.build(tmp_path / "a", 3, seed=3)  # grows the cached folder
    assert [e["sha256"] for e in again] == [e["sha256"] for e in big]
    for e in big:
        with Image.open(tmp_path / "b" / e["name"]) as img:
            assert img.format == e["format"] and img.size == (e["width"], e["height"])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bench_quick_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "report"
    # --quick with a smaller list and corpus keeps CI lean; every step still runs.
    cmd = [sys.executable, "-m", "imgfetch", "bench", "--quick", "--urls", "80", "--corpus", "20"]
    cmd += ["--out", str(out), "--cache", str(tmp_path / "cache")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=380, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = {(r["workload"], r["tool"]): r for r in report["results"]}
    for wl in ("W1", "W2"):
        row = rows[(wl, "imgfetch-async")]
        assert row["valid"] == row["files"] == row["urls"] == 80
        assert row["cpu_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["server_requests"] == 80
        assert row["server_cpu_s"] is not None
    assert rows[("W2", "processing ceiling")]["valid"] == 80
    pairs = {(r["workload"], r["tool"], r["against"]) for r in report["ratios"]}
    assert pairs == {
        ("W1", "imgfetch-async", "classic"),
        ("W2", "imgfetch-async", "classic"),
        ("W2", "imgfetch-async", "processing ceiling"),
    }
    md = (out / "results.md").read_text()
    assert "## W1 download only" in md
    assert "| imgfetch-async | classic |" in md and "| imgfetch-async | processing ceiling |" in md
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "chart.png").is_file() == has_matplotlib
