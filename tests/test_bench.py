"""``imgfetch bench``: the pieces, and a smoke run of ``--quick`` (no timing assertions)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import imgfetch
from conftest import FAST
from imgfetch.bench import harness as bench

if TYPE_CHECKING:
    from imgfetch.bench.server import ImageServer

ROOT = Path(__file__).resolve().parents[1]


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


def _shard_output(tmp_path: Path, server: ImageServer, images: dict[str, bytes], fmt: str) -> Path:
    """Eight rows (seven images, one 404) in shards of three: 00000, 00001 full, 00002 two rows."""
    names = sorted(images)
    urls = [server.url(f"img/{names[i % len(names)]}?k=bench-{fmt}-{i}", i % 3) for i in range(7)]
    urls.insert(4, server.url(f"_/status/404?k=bench-{fmt}", 0))
    listing = tmp_path / f"{fmt}.txt"
    listing.write_text("\n".join(urls) + "\n")
    out = tmp_path / f"out-{fmt}"
    imgfetch.download(listing, out, **FAST, output_format=fmt, shard_size=3)
    return out


@pytest.mark.parametrize("fmt", bench.SHARD_FORMATS)
def test_verify_shards_checks_every_sample_against_its_record(
    tmp_path: Path, server: ImageServer, images: dict[str, bytes], fmt: str
) -> None:
    out = _shard_output(tmp_path, server, images, fmt)
    want = frozenset(hashlib.sha256(b).hexdigest() for b in images.values())
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        check = bench.verify_shards(out, fmt, want, pool)
        assert (check.samples, check.valid, check.shards, check.problems) == (7, 7, 3, [])
        # W1 wants the corpus's bytes: samples that are not are counted, not valid
        assert bench.verify_shards(out, fmt, frozenset(), pool).valid == 0
        assert bench.verify_shards(out, fmt, None, pool).valid == 7  # W2: they need only decode

        if fmt == "webdataset":  # one image's bytes damaged in place: it no longer hashes to its JSON
            with tarfile.open(out / "00001.tar") as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
            with open(out / "00001.tar", "r+b") as fh:
                fh.seek(member.offset_data + member.size // 2)
                fh.write(b"\xff\x00\xff\x00")
            check = bench.verify_shards(out, fmt, None, pool)
            assert (check.samples, check.valid) == (7, 6)
        # the records must agree with the samples, and nothing may stay in staging
        (out / "00002_stats.json").unlink()
        (out / ".imgfetch" / "staging" / "00009.samples").write_bytes(b"")
        problems = bench.verify_shards(out, fmt, None, pool).problems
        assert "00002_stats.json: missing or unreadable" in problems
        assert any(p.startswith("1 files left in") for p in problems)


def test_verify_shards_counts_a_row_once_and_reports_records_that_disagree(tmp_path: Path) -> None:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    tbl = pa.table(
        {
            "row": [0, 1, 1, 2],
            "status": ["ok", "ok", "ok", "ok"],
            "sha256": [hashlib.sha256(jpeg(i)).hexdigest() for i in (0, 1, 1, 2)],
            "image": pa.array([{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in (0, 1, 1)] + [None], image),
        }
    )
    pq.write_table(tbl, tmp_path / "00000.parquet", row_group_size=2)
    (tmp_path / "00000_stats.json").write_text(json.dumps({"successes": 3}))
    index = {"shardlist": [{"url": "00000.parquet", "nsamples": 2}]}
    (tmp_path / "shards.json").write_text(json.dumps(index))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        check = bench.verify_shards(tmp_path, "parquet", None, pool)
    assert (check.samples, check.valid, check.shards) == (3, 2, 1)  # row 1 twice: one valid row
    assert check.problems == [
        "00000.parquet: 1 ok rows without an image",
        "1 rows held by more than one sample",
        "shards.json lists 2 samples in 1 shards",
    ]


def test_shard_tools_run_imgfetch_with_the_format_and_the_shard_size(tmp_path: Path) -> None:
    plain = bench.Context(bench.settings_from(bench.parse([])), tmp_path, None)
    sized = bench.Context(bench.settings_from(bench.parse(["--shard-size", "1000"])), tmp_path, None)
    w1 = bench.Workload("W1", None)
    for fmt in bench.SHARD_FORMATS:
        tool = bench.TOOLS[f"imgfetch-async-{fmt}"]
        assert (tool.output_format, tool.files_twin) == (fmt, "imgfetch-async")
        cmd = tool.build(plain, w1, ["http://127.0.0.1:1/a.jpg"], tmp_path / "out")
        assert isinstance(cmd, list)
        assert cmd[cmd.index("--output-format") + 1] == fmt and "--shard-size" not in cmd
        cmd = tool.build(sized, w1, ["http://127.0.0.1:1/a.jpg"], tmp_path / "out")
        assert isinstance(cmd, list) and cmd[cmd.index("--shard-size") + 1] == "1000"
    files = bench.TOOLS["imgfetch-async"].build(plain, w1, ["http://127.0.0.1:1/a.jpg"], tmp_path / "out")
    assert isinstance(files, list) and "--output-format" not in files
    with pytest.raises(SystemExit, match="--shard-size must be at least 1"):
        bench.settings_from(bench.parse(["--shard-size", "0"]))


def test_format_ratios_compare_each_shard_format_with_files_per_repetition() -> None:
    def run(tool: str, per_s: float, cpu_s: float, rep: int) -> bench.Result:
        res = bench.Result("W1", tool, 100, 100 / per_s, cpu_s, 50.0, 100, 100, 0, rep=rep)
        res.output_format = bench.TOOLS[tool].output_format if tool in bench.TOOLS else "files"
        return res

    runs = [
        run("imgfetch-async", 1000, 1.0, 0),
        run("imgfetch-async-webdataset", 1100, 0.9, 0),
        run("imgfetch-async", 800, 1.2, 1),
        run("imgfetch-async-webdataset", 1000, 1.0, 1),
        run("imgfetch-async-parquet", 500, 2.0, 1),
        run("curl", 700, 0.5, 1),
    ]
    found = {(r.tool, r.metric): r for r in bench.format_ratios(runs)}
    assert set(found) == {
        (f"imgfetch-async-{f}", m) for f in bench.SHARD_FORMATS for m in (bench.SPEED, bench.CPU)
    }
    speed = found["imgfetch-async-webdataset", bench.SPEED]
    assert speed.against == "imgfetch-async" and speed.best == pytest.approx(1.1)
    assert speed.same_repetition == pytest.approx((1.1, 1.25))
    cpu = found["imgfetch-async-webdataset", bench.CPU]
    assert cpu.best == pytest.approx(0.9)  # lowest CPU over lowest CPU
    assert cpu.same_repetition == pytest.approx((0.9, 1.0 / 1.2))
    assert found["imgfetch-async-parquet", bench.SPEED].same_repetition == pytest.approx((0.625,))
    assert bench.ratio_lines([cpu])[0].startswith(
        "imgfetch-async-webdataset vs imgfetch-async (CPU s / 1000): 0.90x"
    )
    table = bench.format_table(
        [{**r.to_dict(), "shards": 1 if "-" in r.tool[9:] else None} for r in runs], "W1"
    )
    assert "| imgfetch-async | files | - | 1000 / 800 | **1000** | 10.00 / 12.00 | **10.00** |" in table
    assert "| imgfetch-async-parquet | parquet | 1 | 500 | **500** | 20.00 |" in table
    assert "curl" not in table


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
    ctx = bench.Context(bench.settings_from(bench.parse(["--quick"])), tmp_path, None)
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
    ctx = bench.Context(bench.settings_from(bench.parse(["--quick"])), tmp_path, None)
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
    from imgfetch.bench import corpus

    small = corpus.build(tmp_path / "a", 2, seed=3)
    big = corpus.build(tmp_path / "b", 3, seed=3)
    assert [e["sha256"] for e in small] == [e["sha256"] for e in big[:2]]
    again = corpus.build(tmp_path / "a", 3, seed=3)  # grows the cached folder
    assert [e["sha256"] for e in again] == [e["sha256"] for e in big]
    for e in big:
        with Image.open(tmp_path / "b" / e["name"]) as img:
            assert img.format == e["format"] and img.size == (e["width"], e["height"])


def _skip_without_extra() -> None:
    if bench.missing_extra():
        pytest.skip(f"the bench extra is not installed here: {bench.missing_extra()}")


#: The quick tests' shard size: several shards per run, so shards are committed while rows are fetched.
QUICK_SHARD = 30


def _quick(out: Path, cache: Path, urls: int = 80, corpus: int = 20) -> list[str]:
    """``bench --quick`` with a smaller list and corpus (keeps CI lean; every step still runs)."""
    args = [
        "bench",
        "--quick",
        "--urls",
        str(urls),
        "--corpus",
        str(corpus),
        "--shard-size",
        str(QUICK_SHARD),
    ]
    return [*args, "--out", str(out), "--cache", str(cache)]


def _check_quick_report(out: Path, urls: int) -> None:
    report = json.loads((out / "results.json").read_text())
    rows = {(r["workload"], r["tool"]): r for r in report["results"]}
    imgfetch_tools = ("imgfetch-async", *(f"imgfetch-async-{f}" for f in bench.SHARD_FORMATS))
    for wl in ("W1", "W2"):
        for tool in imgfetch_tools:
            row = rows[(wl, tool)]
            # shard formats: ok samples in the tars / rows with an image, each checked against its record
            assert row["valid"] == row["files"] == row["urls"] == urls, row
            assert row["note"] == ""  # no disagreement between shards, records, stats and index
            assert row["cpu_s"] > 0 and row["peak_rss_mb"] > 0
            assert row["server_requests"] == urls
            assert row["server_cpu_s"] is not None
            assert row["shards"] == (None if tool == "imgfetch-async" else -(-urls // QUICK_SHARD))
        assert rows[(wl, "classic")]["valid"] == urls  # the classic peer's script ran
    assert rows[("W2", "processing ceiling")]["valid"] == urls
    pairs = {(r["workload"], r["tool"], r["against"], r["metric"]) for r in report["ratios"]}
    peers = {(wl, t, "classic", bench.SPEED) for wl in ("W1", "W2") for t in imgfetch_tools}
    peers |= {("W2", t, bench.CEILING, bench.SPEED) for t in imgfetch_tools}
    twins = {
        (wl, f"imgfetch-async-{f}", "imgfetch-async", m)
        for wl in ("W1", "W2")
        for f in bench.SHARD_FORMATS
        for m in (bench.SPEED, bench.CPU)
    }
    assert pairs == peers | twins
    md = (out / "results.md").read_text()
    assert "## W1 download only" in md
    assert "| imgfetch-async | classic |" in md and "| imgfetch-async | processing ceiling |" in md
    assert "### W1: output formats against files" in md
    assert "| imgfetch-async-webdataset | imgfetch-async | CPU s / 1000 |" in md
    with Image.open(out / "chart.png") as chart:  # the chart module ran
        assert chart.format == "PNG"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bench_quick_runs_end_to_end(tmp_path: Path) -> None:
    _skip_without_extra()
    cmd = [sys.executable, "-m", "imgfetch", *_quick(tmp_path / "report", tmp_path / "cache")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=380, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_quick_report(tmp_path / "report", 80)


def test_bench_stops_at_once_without_its_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    gone = {"skimage", "matplotlib"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a)
    )
    assert bench.missing_extra() == ["skimage", "matplotlib"]
    with pytest.raises(SystemExit) as stop:
        bench.main(_quick(tmp_path / "report", tmp_path / "cache")[1:])
    message = str(stop.value.code)
    assert message.startswith("imgfetch: error[bench-missing]: imgfetch bench needs skimage")
    assert message.endswith(": pip install 'imgfetch[bench]'") and "\n" not in message
    assert "matplotlib (the chart)" in message
    assert not (tmp_path / "cache").exists() and not (tmp_path / "report").exists()  # nothing ran


def test_the_download_path_and_the_server_do_not_load_the_harness() -> None:
    """The bench is out of the runtime path: a download never imports imgfetch.bench, and the
    tests' and the demo's server does not pull in the harness."""
    code = (
        "import sys, imgfetch.cli, imgfetch.api, imgfetch.pipeline\n"
        "assert not [m for m in sys.modules if m.startswith('imgfetch.bench')], sys.modules\n"
        "import imgfetch.bench.server\n"
        "assert 'imgfetch.bench.harness' not in sys.modules\n"
        "from imgfetch.bench import main, CEILING\n"
        "assert 'imgfetch.bench.harness' in sys.modules and CEILING == 'processing ceiling'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _python(python: Path, code: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, cwd=cwd, env=env, timeout=60
    )
    return done.stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_quick_runs_from_an_installed_wheel_without_the_checkout(tmp_path: Path) -> None:
    """``pip install 'imgfetch[bench]'`` then ``imgfetch bench``: no benchmarks/ folder, no source tree.

    The wheel is built from a copy of the project's sources (not benchmarks/, not tests/)
    and installed, without dependencies, into a fresh virtualenv. The dependencies (the
    extra's included) come from this interpreter's site-packages, added as a plain path:
    its ``.pth`` files, and with them the editable install of the checkout, are not read.
    The bench then runs from an empty folder through the virtualenv's ``imgfetch`` script.
    """
    _skip_without_extra()
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(project)], check=True)
    (wheel,) = (tmp_path / "dist").glob("imgfetch-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        meta = whl.read(next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    extra = {m[1] for m in re.finditer(r"^Requires-Dist: ([\w.-]+).*extra == .bench.", meta, re.MULTILINE)}
    # the extra holds what the bench checks for (and nothing else): skimage is scikit-image
    assert extra == {{"skimage": "scikit-image"}.get(m, m) for m in bench.EXTRA_MODULES}
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    shutil.rmtree(project)  # nothing of the copy is left to reach into either

    ours = sysconfig.get_paths()
    site = Path(_python(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    (site / "dependencies.pth").write_text(f"{ours['purelib']}\n{ours['platlib']}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.pop("IMGFETCH_BENCHMARKS", None)
    empty = tmp_path / "cwd"
    empty.mkdir()
    where = json.loads(
        _python(
            python,
            "import json, sys, imgfetch, imgfetch.bench.harness\n"
            "print(json.dumps([imgfetch.bench.harness.__file__, sys.path]))",
            cwd=empty,
            env=env,
        )
    )
    assert Path(where[0]).is_relative_to(site), where[0]  # the harness imported is the wheel's
    checkout = [ROOT, *(ROOT / d for d in ("src", "benchmarks", "tests"))]
    reach = [p for p in where[1] if p and any(Path(p).resolve().is_relative_to(c) for c in checkout[1:])]
    assert not reach and str(ROOT) not in where[1], where[1]  # nor can it import from the checkout

    out = tmp_path / "report"
    cmd = [str(env_dir / "bin" / "imgfetch"), *_quick(out, tmp_path / "cache", urls=40, corpus=10)]
    done = subprocess.run(cmd, cwd=empty, env=env, capture_output=True, text=True, timeout=500, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_quick_report(out, 40)
    assert not list(empty.iterdir())
