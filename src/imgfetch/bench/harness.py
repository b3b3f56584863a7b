"""``imgfetch bench``: the engines and the peers measured side by side, offline.

What it does (details and results in the repository's benchmarks/README.md):

1. builds, once, a corpus of real photos at realistic sizes (``python -m imgfetch.bench.corpus``,
   cached under ``~/.cache/imgfetch/bench`` or ``--cache``);
2. serves it with ``python -m imgfetch.bench.server`` in a separate process on
   127.0.0.1..N with a log-normal latency (median 80 ms), a fresh server per run
   so each run's request counts and peak concurrency per host are its own;
3. runs every tool as a subprocess on the same URL list into a fresh folder:
   the four imgfetch engines, the async engine writing shards
   (``imgfetch-async-webdataset``, ``imgfetch-async-parquet``, compared with it
   writing files), the classic ``ThreadPool(10)`` + ``requests``
   script (``imgfetch/bench/classic.py``), ``curl --parallel``, ``aria2c`` and,
   with ``--with-img2dataset``, img2dataset in its own virtualenv;
4. measures wall time, CPU seconds of the tool's whole process tree (rusage of
   reaped children; the bench makes itself a subreaper so that orphaned
   grandchildren are reaped and counted too) and the peak RSS of the tree
   (summed over its processes, sampled every 50 ms);
5. checks every output file (it must decode with Pillow; in the download-only
   workload it must also be byte-identical to a corpus file), or for the shard
   formats every sample in the shards against its own record (:func:`verify_shards`);
6. prints a table and writes ``results.json``, ``results.md`` and ``chart.png``.

Workloads: W1 download only; W2 the same with ``--size 256`` (peers that cannot
resize are not run in W2).  The processing ceiling (``images.process`` alone
over the same bodies, on all cores) is measured in the same run for W2.

Everything it runs ships in this package (a plain ``pip install 'imgfetch[bench]'``
is enough, no source checkout); without the ``bench`` extra it stops at once and says so.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import itertools
import json
import multiprocessing
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgfetch.config import HttpConfig, ImageConfig
from imgfetch.runners.loops import MIN_PER_LOOP

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

SAMPLE_EVERY = 0.05
IMGFETCH_ENGINES = ("async", "threads", "processes", "loop")
#: imgfetch's ``--output-format`` values other than ``files``: each gets an ``imgfetch-async-FORMAT`` tool.
SHARD_FORMATS = ("webdataset", "parquet")
#: Files that tools write next to the images; everything else in an output folder must be an image.
METADATA_SUFFIXES = frozenset({".json", ".jsonl", ".parquet", ".txt", ".sqlite", ".csv", ".log"})
IMG2DATASET_SPEC = "img2dataset"
SCALING_J = (16, 32, 64, 128, 256, 512)
#: Outputs are kept until the end of the bench while at least this much disk stays free.
DISK_RESERVE = 4 * 1024**3
#: file_create_cpu_us() above this means the disk is in its slow state: on this benchmark's VM
#: (ext4 without a journal) ~60-110 us per file normally, 400-1000 us for minutes after many
#: files were deleted, because a new inode then skips every recently deleted one
#: (``recently_deleted()`` in the kernel's inode allocator, seen with ``perf``).
DISK_SLOW_US = 150.0
#: The longest the bench waits for the disk to leave its slow state before measuring anyway.
DISK_WAIT_S = 600.0
DISK_POLL_S = 20.0
#: The ceiling's name as a tool in the results (W2's target is a ratio to it).
CEILING = "processing ceiling"


# ---- settings ------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    urls: int
    hosts: int
    latency: float
    corpus: int
    seed: int
    size: int
    loop_urls: int
    cache: Path
    out: Path
    tools: tuple[str, ...]
    workloads: tuple[str, ...]
    scaling: bool
    scaling_urls: int
    with_img2dataset: bool
    keep_outputs: bool
    repeat: int = 1
    #: ``--shard-size`` for the shard-format tools (None: imgfetch's default, 10,000 rows).
    shard_size: int | None = None
    #: Longest wait for a disk in its slow state before a run (0: probe, say so, measure anyway).
    disk_wait: float = DISK_WAIT_S


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    size: int | None

    @property
    def title(self) -> str:
        return "W1 download only" if self.size is None else f"W2 download + resize (--size {self.size})"


@dataclasses.dataclass
class Result:
    workload: str
    tool: str
    urls: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    files: int
    valid: int
    returncode: int
    server_requests: int | None = None
    server_peak_per_host: int | None = None
    note: str = ""
    #: CPU seconds the image server spent during the run (not part of the tool's cost).
    server_cpu_s: float | None = None
    #: images/s of every repetition, when the tool ran more than once (the best run is reported).
    runs: list[float] = dataclasses.field(default_factory=list)
    #: Peak proportional set size of the tree (shared pages split between the processes sharing them).
    peak_pss_mb: float | None = None
    #: The round-robin repetition this run belongs to (0-based): ratios pair runs of the same one.
    rep: int = 0
    #: imgfetch's ``--output-format`` for imgfetch tools (``files`` for the others).
    output_format: str = "files"
    #: Shards the run wrote (shard formats only).
    shards: int | None = None

    @property
    def images_per_s(self) -> float:
        return self.valid / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_per_1000(self) -> float:
        return 1000 * self.cpu_s / self.valid if self.valid else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["images_per_s"] = round(self.images_per_s, 1)
        d["cpu_s_per_1000"] = round(self.cpu_per_1000, 3) if self.valid else None
        for k in ("wall_s", "cpu_s", "peak_rss_mb", "server_cpu_s", "peak_pss_mb"):
            if d[k] is not None:
                d[k] = round(d[k], 3)
        return d


# ---- what the bench needs ----------------------------------------------------
#: The ``bench`` extra's modules and what needs each: a bench stops before it starts without any one.
EXTRA_MODULES = {
    "numpy": "the corpus",
    "skimage": "the corpus (scikit-image's photos)",
    "requests": "the classic peer",
    "matplotlib": "the chart",
}
INSTALL_EXTRA = "pip install 'imgfetch[bench]'"
#: The classic peer, run as a script (not ``-m``) so that its figures include no import of imgfetch.
CLASSIC_SCRIPT = Path(__file__).with_name("classic.py")


def missing_extra() -> list[str]:
    """The ``bench`` extra's modules that cannot be imported here."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def require_extra() -> None:
    """Stop, with one line saying how to fix it, before anything runs without the ``bench`` extra."""
    missing = missing_extra()
    if missing:
        needs = ", ".join(f"{name} ({EXTRA_MODULES[name]})" for name in missing)
        raise SystemExit(f"imgfetch: error[bench-missing]: imgfetch bench needs {needs}: {INSTALL_EXTRA}")


def clean_env() -> dict[str, str]:
    """The environment for every tool: no proxy variables (all traffic is loopback)."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


# ---- the server ------------------------------------------------------------
class Server:
    """``python -m imgfetch.bench.server`` in its own process, for one run."""

    def __init__(self, folder: Path, hosts: int, latency: float, stats_file: Path) -> None:
        self.stats_file = stats_file
        stats_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "imgfetch.bench.server", str(folder), "--hosts", str(hosts)]
        cmd += ["--latency", str(latency), "--stats-file", str(stats_file)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=clean_env(), text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.proc.kill()
            raise RuntimeError(f"image server did not start (said {line!r})")
        self.port = int(line)
        self.hosts = [f"127.0.0.{i + 1}" for i in range(hosts)]

    def cpu_seconds(self) -> float | None:
        """CPU the server has used so far (Linux): it shares the cores with the tool measured."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        try:
            stats: dict[str, Any] = json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {}
        return stats


def url_list(entries: Sequence[dict[str, Any]], hosts: Sequence[str], port: int, count: int) -> list[str]:
    """Row r asks host r mod H for corpus image r mod N: every host serves the whole mix."""
    return [
        f"http://{hosts[r % len(hosts)]}:{port}/img/{entries[r % len(entries)]['name']}" for r in range(count)
    ]


# ---- measuring a process tree ------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss(pids: Sequence[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


def _pss(pids: Sequence[int]) -> int:
    """Proportional set size: a page shared by k processes counts 1/k in each (Linux 4.14+).

    Summing RSS counts every page a forked child shares with its parent twice;
    PSS is what the tree really holds.
    """
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    return _rss(_tree(pid))


class TreeSampler:
    """Peak RSS of a process tree; the tree is re-listed every few samples, which is
    the costly part (a scan of /proc), while the known processes are read every time."""

    RESCAN_EVERY = 4

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.peak_pss = 0
        self._pids: list[int] = [pid]
        self._n = 0

    def sample(self) -> None:
        if self._n % self.RESCAN_EVERY == 0:
            self._pids = _tree(self.pid)
            # PSS costs the kernel a page-table walk: sampled less often than RSS.
            self.peak_pss = max(self.peak_pss, _pss(self._pids))
        self._n += 1
        self.peak = max(self.peak, _rss(self._pids))


def _become_subreaper() -> None:
    """Orphaned grandchildren (e.g. a forkserver's workers) come to us, so their CPU is counted."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _own_children() -> set[int]:
    return set(_children_map().get(os.getpid(), []))


def _reap_strays(keep: set[int], timeout: float = 10.0) -> None:
    """Wait for descendants that were reparented to us (children not in ``keep``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        strays = [p for p in _own_children() if p not in keep]
        if not strays:
            return
        for pid in strays:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


@dataclasses.dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss: int
    returncode: int
    peak_pss: int = 0


def measure(cmd: Sequence[str], *, log: Path, cwd: Path | None = None) -> Measured:
    """Run ``cmd`` to the end; wall time, CPU of the whole tree, peak RSS of the tree."""
    keep = _own_children()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=clean_env(), cwd=cwd)
        sampler = TreeSampler(proc.pid)
        linux = sys.platform.startswith("linux")
        try:
            while proc.poll() is None:
                if linux:
                    sampler.sample()
                time.sleep(SAMPLE_EVERY)
        except BaseException:  # Ctrl-C: do not leave the tool running
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
        peak = sampler.peak
        peak_pss = sampler.peak_pss
    _reap_strays(keep)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not sys.platform.startswith("linux"):
        peak = after.ru_maxrss * 1024
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(wall, cpu, peak, proc.returncode, peak_pss)


# ---- checking outputs -------------------------------------------------------
def _check_bytes(data: bytes, want: frozenset[str] | None, sha256: str | None = None) -> bool:
    """Whole image bytes: they decode (and are a corpus file when ``want``, and hash to ``sha256``)."""
    from PIL import Image

    try:
        if want is not None or sha256 is not None:
            digest = hashlib.sha256(data).hexdigest()
            if (want is not None and digest not in want) or (sha256 is not None and digest != sha256):
                return False
        with Image.open(io.BytesIO(data)) as img:
            # draft() decodes a JPEG at 1/8 scale: every byte of the stream is still parsed.
            img.draft("RGB", (img.width // 8 or 1, img.height // 8 or 1))
            img.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def _check_file(path: str, want: frozenset[str] | None) -> bool:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    return _check_bytes(data, want)


def output_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() not in METADATA_SUFFIXES and ".imgfetch" not in p.parts
    ]


def verify(folder: Path, want: frozenset[str] | None, pool: concurrent.futures.Executor) -> tuple[int, int]:
    """(files, valid): every non-metadata file must decode (and be a corpus file when ``want``)."""
    files = output_files(folder)
    ok = sum(pool.map(_check_file, [str(p) for p in files], [want] * len(files), chunksize=32))
    return len(files), ok


@dataclasses.dataclass
class ShardCheck:
    """What :func:`verify_shards` found in a shard-format output folder."""

    #: Image samples in the shards: tar members ``{key}.jpg|png|webp``, or Parquet rows with an image.
    samples: int = 0
    #: Samples whose bytes decode, are a corpus file (W1) and hash to their record's ``sha256``,
    #: counted once per input row.
    valid: int = 0
    #: Shard data files (``00000.tar`` / ``00000.parquet``).
    shards: int = 0
    #: Every disagreement found (between the shards, their records, stats and index, staging).
    problems: list[str] = dataclasses.field(default_factory=list)


#: The image members of a webdataset sample (``shards.image_field``: the output format's, or jpg).
_SAMPLE_IMAGES = frozenset({"jpg", "png", "webp"})
#: Samples checked per task in the pool.
_SPANS_PER_TASK = 64


def _shard_files(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if re.fullmatch(rf"\d{{5,}}{re.escape(suffix)}", p.name))


def _check_spans(
    path: str, spans: Sequence[tuple[int, int, str | None, int]], want: frozenset[str] | None
) -> list[int]:
    """The rows of the samples at ``(offset, size, sha256, row)`` in ``path`` whose bytes are whole."""
    good = []
    with open(path, "rb") as fh:
        for offset, size, sha, row in spans:
            fh.seek(offset)
            if _check_bytes(fh.read(size), want, sha):
                good.append(row)
    return good


def _check_row_group(path: str, group: int, want: frozenset[str] | None) -> tuple[int, list[int], int]:
    """One row group of a parquet shard: rows with an image, the rows whose image is whole,
    and ok rows without an image."""
    import pyarrow.parquet as pq

    tbl = pq.ParquetFile(path).read_row_group(group, columns=["row", "status", "sha256", "image"])
    rows, statuses, shas = (tbl.column(n).to_pylist() for n in ("row", "status", "sha256"))
    images = tbl.column("image").combine_chunks()
    data = images.field("bytes")
    samples, good, missing = 0, [], 0
    for i in range(len(tbl)):
        if images[i].is_valid and data[i].is_valid:
            samples += 1
            if statuses[i] == "ok" and _check_bytes(data[i].as_py(), want, shas[i]):
                good.append(rows[i])
        elif statuses[i] == "ok":
            missing += 1
    return samples, good, missing


def _tar_samples(path: Path, check: ShardCheck) -> list[tuple[int, int, str | None, int]]:
    """The image samples of one webdataset tar as ``(offset, size, sha256, row)``, from its headers
    and JSON members; disagreements with the JSON and the tar's records go to ``check.problems``."""
    import pyarrow.parquet as pq

    metas: dict[str, dict[str, Any]] = {}
    spans: dict[str, tuple[int, int]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext == "json":
                fh = tar.extractfile(member)
                metas[key] = json.loads(fh.read()) if fh is not None else {}
            elif ext in _SAMPLE_IMAGES:
                spans[key] = (member.offset_data, member.size)
    orphans = len(spans.keys() - metas.keys())
    if orphans:
        check.problems.append(f"{path.name}: {orphans} images without their JSON")
    bad = sum(1 for k in spans if metas.get(k, {}).get("status") != "ok")
    if bad:
        check.problems.append(f"{path.name}: {bad} images whose JSON is not status ok")
    records = path.with_suffix(".parquet")
    try:
        ok_rows = pq.read_table(records, columns=["status"]).column("status").to_pylist().count("ok")
    except (OSError, ValueError) as exc:
        check.problems.append(f"{records.name}: unreadable ({exc})")
    else:
        if ok_rows != len(spans):
            check.problems.append(f"{records.name}: {ok_rows} ok rows, {len(spans)} samples in the tar")
    out = []
    for key, (offset, size) in spans.items():
        meta = metas.get(key, {})
        out.append((offset, size, meta.get("sha256"), int(meta.get("row", -1))))
    return out


def verify_shards(
    folder: Path, fmt: str, want: frozenset[str] | None, pool: concurrent.futures.Executor
) -> ShardCheck:
    """Check a ``--output-format webdataset|parquet`` folder sample by sample.

    webdataset: every ``{key}.<image>`` member of every ``NNNNN.tar`` must have its
    ``{key}.json`` with status ok, and its bytes must decode, be a corpus file (W1)
    and hash to the JSON's ``sha256``; the tar's ``NNNNN.parquet`` must list as many
    ok rows.  parquet: every row of every ``NNNNN.parquet`` with a non-null ``image``
    is checked the same way, and an ok row without an image is a problem.  Both:
    each shard's ``_stats.json`` successes and ``shards.json``'s ``nsamples`` must
    match what the shard holds, and staging (``.imgfetch/staging``) must be empty.
    ``valid`` counts input rows once, so a row held twice is not counted twice.
    """
    import pyarrow.parquet as pq

    check = ShardCheck()
    good: list[int] = []
    per_shard: dict[str, int] = {}
    if fmt == "webdataset":
        tars = _shard_files(folder, ".tar")
        futures: list[concurrent.futures.Future[list[int]]] = []
        for path in tars:
            work = _tar_samples(path, check)
            per_shard[path.name] = len(work)
            for i in range(0, len(work), _SPANS_PER_TASK):
                futures.append(pool.submit(_check_spans, str(path), work[i : i + _SPANS_PER_TASK], want))
        for fut in futures:
            good += fut.result()
    elif fmt == "parquet":
        jobs: dict[tuple[str, int], concurrent.futures.Future[tuple[int, list[int], int]]] = {}
        for path in _shard_files(folder, ".parquet"):
            per_shard[path.name] = 0
            for group in range(pq.ParquetFile(path).metadata.num_row_groups):
                jobs[(path.name, group)] = pool.submit(_check_row_group, str(path), group, want)
        for (name, _group), job in jobs.items():
            samples, rows, missing = job.result()
            per_shard[name] += samples
            good += rows
            if missing:
                check.problems.append(f"{name}: {missing} ok rows without an image")
    else:
        raise ValueError(f"not a shard format: {fmt!r}")
    check.shards = len(per_shard)
    check.samples = sum(per_shard.values())
    check.valid = len(set(good))
    if check.valid < len(good):
        check.problems.append(f"{len(good) - check.valid} rows held by more than one sample")
    _check_shard_records(folder, per_shard, check)
    return check


def _check_shard_records(folder: Path, per_shard: dict[str, int], check: ShardCheck) -> None:
    """The stats files and ``shards.json`` agree with the samples counted; staging is empty."""
    for name, samples in sorted(per_shard.items()):
        stats = folder / (name.split(".", 1)[0] + "_stats.json")
        try:
            successes = json.loads(stats.read_text())["successes"]
        except (OSError, ValueError, KeyError):
            check.problems.append(f"{stats.name}: missing or unreadable")
            continue
        if successes != samples:
            check.problems.append(f"{stats.name}: {successes} successes, {samples} samples")
    try:
        index = json.loads((folder / "shards.json").read_text())
        listed = {s["url"]: s["nsamples"] for s in index["shardlist"]}
    except (OSError, ValueError, KeyError, TypeError):
        check.problems.append("shards.json: missing or unreadable")
    else:
        if listed != per_shard:
            check.problems.append(f"shards.json lists {sum(listed.values())} samples in {len(listed)} shards")
    staging = folder / ".imgfetch" / "staging"
    left = list(staging.iterdir()) if staging.is_dir() else []
    if left:
        check.problems.append(f"{len(left)} files left in {staging}")


# ---- the tools -------------------------------------------------------------
@dataclasses.dataclass
class Context:
    settings: Settings
    work: Path
    img2dataset: Path | None


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    #: (context, workload, urls, output folder) -> argv, or a string saying why it cannot run.
    build: Callable[[Context, Workload, list[str], Path], list[str] | str]
    resizes: bool = True
    max_urls: Callable[[Settings], int] | None = None
    #: imgfetch's ``--output-format`` (what :func:`verify_shards` checks when not ``files``).
    output_format: str = "files"
    #: The tool this one is compared with, same engine writing ``files`` (shard formats only).
    files_twin: str | None = None


def _imgfetch(
    engine: str, output_format: str = "files"
) -> Callable[[Context, Workload, list[str], Path], list[str] | str]:
    def build(ctx: Context, wl: Workload, urls: list[str], out: Path) -> list[str]:
        listing = _write_list(ctx, urls)
        cmd = [sys.executable, "-m", "imgfetch", str(listing), "-o", str(out), "-q", "--engine", engine]
        if output_format != "files":
            cmd += ["--output-format", output_format]
            if ctx.settings.shard_size is not None:
                cmd += ["--shard-size", str(ctx.settings.shard_size)]
        if wl.size is not None:
            cmd += ["--size", str(wl.size)]
        return cmd

    return build


def _shard_tool(engine: str, output_format: str) -> Tool:
    """``imgfetch-ENGINE-FORMAT``: the engine writing shards, compared with ``imgfetch-ENGINE`` (files)."""
    return Tool(
        f"imgfetch-{engine}-{output_format}",
        _imgfetch(engine, output_format),
        output_format=output_format,
        files_twin=f"imgfetch-{engine}",
    )


def _write_list(ctx: Context, urls: list[str]) -> Path:
    listing = ctx.work / "urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    return listing


def _ext(url: str) -> str:
    return os.path.splitext(url.rsplit("/", 1)[-1])[1]


def _classic(ctx: Context, wl: Workload, urls: list[str], out: Path) -> list[str] | str:
    cmd = [sys.executable, str(CLASSIC_SCRIPT), str(_write_list(ctx, urls)), str(out)]
    return cmd + (["--size", str(wl.size)] if wl.size is not None else [])


def _curl(ctx: Context, wl: Workload, urls: list[str], out: Path) -> list[str] | str:
    curl = shutil.which("curl")
    if curl is None:
        return "curl is not installed"
    out.mkdir(parents=True, exist_ok=True)
    config = ctx.work / "curl.cfg"
    config.write_text(
        "".join(f'url = "{u}"\noutput = "{out / f"{i:06d}{_ext(u)}"}"\n' for i, u in enumerate(urls))
    )
    return [
        curl,
        "--parallel",
        "--parallel-max",
        "64",
        "--silent",
        "--show-error",
        "--fail",
        "-K",
        str(config),
    ]


def _aria2c(ctx: Context, wl: Workload, urls: list[str], out: Path) -> list[str] | str:
    aria2c = shutil.which("aria2c")
    if aria2c is None:
        return "aria2c is not installed (apt-get install aria2)"
    listing = ctx.work / "aria2.txt"
    listing.write_text("".join(f"{u}\n  out={i:06d}{_ext(u)}\n" for i, u in enumerate(urls)))
    return [
        aria2c,
        "-i",
        str(listing),
        "-j",
        "64",
        "-d",
        str(out),
        "--quiet=true",
        "--file-allocation=none",
        "--auto-file-renaming=false",
        "--allow-overwrite=true",
        "--max-tries=3",
    ]


def _img2dataset(ctx: Context, wl: Workload, urls: list[str], out: Path) -> list[str] | str:
    if ctx.img2dataset is None:
        return "opt in with --with-img2dataset"
    cmd = [
        str(ctx.img2dataset),
        "--url_list",
        str(_write_list(ctx, urls)),
        "--input_format",
        "txt",
        "--output_folder",
        str(out),
        "--output_format",
        "files",
        "--processes_count",
        "2",
        "--thread_count",
        "64",
        "--timeout",
        "60",
        "--retries",
        "3",
        "--number_sample_per_shard",
        "10000",
        "--enable_wandb",
        "False",
    ]
    if wl.size is None:
        return [*cmd, "--resize_mode", "no", "--disable_all_reencoding", "True"]
    return [*cmd, "--image_size", str(wl.size), "--resize_mode", "keep_ratio"]


TOOLS: dict[str, Tool] = {
    "imgfetch-async": Tool("imgfetch-async", _imgfetch("async")),
    "imgfetch-threads": Tool("imgfetch-threads", _imgfetch("threads")),
    "imgfetch-processes": Tool("imgfetch-processes", _imgfetch("processes")),
    # One request at a time: a prefix of the list measures its (latency-bound) rate well enough.
    "imgfetch-loop": Tool("imgfetch-loop", _imgfetch("loop"), max_urls=lambda s: s.loop_urls),
    # The async engine in the shard formats, against imgfetch-async writing files.
    **{t.name: t for t in (_shard_tool("async", fmt) for fmt in SHARD_FORMATS)},
    "classic": Tool("classic", _classic),
    "curl": Tool("curl", _curl, resizes=False),
    "aria2c": Tool("aria2c", _aria2c, resizes=False),
    "img2dataset": Tool("img2dataset", _img2dataset),
}
QUICK_TOOLS = ("imgfetch-async", *(f"imgfetch-async-{fmt}" for fmt in SHARD_FORMATS), "classic")


def ensure_img2dataset(cache: Path, log: Callable[[str], None]) -> Path:
    """img2dataset from PyPI in its own virtualenv under the cache (created once)."""
    venv = cache / "img2dataset-venv"
    exe = venv / "bin" / "img2dataset"
    if exe.is_file():
        return exe
    log(f"installing {IMG2DATASET_SPEC} from PyPI into {venv} (once)")
    started = time.monotonic()
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", IMG2DATASET_SPEC],
        check=True,
        env=clean_env(),
    )
    log(f"img2dataset installed in {time.monotonic() - started:.0f} s")
    return exe


# ---- the processing ceiling ---------------------------------------------------
#: The ceiling's corpus in memory, read before the clock starts: here before forking, or by
#: each worker's initializer where processes cannot fork.
_BODIES: dict[str, bytes] = {}


def _load_bodies(folder: str, names: Sequence[str]) -> None:
    from imgfetch import images  # noqa: F401  (imported before the clock starts, as in a running imgfetch)

    _BODIES.update((n, (Path(folder) / n).read_bytes()) for n in names)


def _worker_ready(_: int) -> int:
    time.sleep(0.2)  # long enough that every worker gets one of these
    return os.getpid()


def ceiling_config(size: int) -> ImageConfig:
    """The image options ``imgfetch --size N`` runs with (a test holds the two together)."""
    return ImageConfig(size=(size, size), resize="fit")


def _process_batch(names: list[str], size: int) -> tuple[int, float]:
    """Processed images and the CPU seconds ``images.process`` took over them."""
    from imgfetch import images

    cfg = ceiling_config(size)
    started = time.process_time()
    done = sum(isinstance(images.process(_BODIES[n], cfg), images.Processed) for n in names)
    return done, time.process_time() - started


def processing_ceiling(folder: Path, names: Sequence[str], size: int, workers: int | None = None) -> Result:
    """``images.process`` alone, over the corpus bytes held in memory, on all cores: W2's physical limit.

    Measured as the issue defines it, nothing around it: every worker has started,
    imported and holds the bytes before the clock starts; the CPU is the workers'
    own time inside ``images.process``.  (An earlier version read the files inside
    the clock and counted the pool's start, which put the ceiling ~2 % lower.)
    Where processes fork, the bytes are read once here and the workers share
    them; elsewhere each worker reads its own copy (1000 images are ~134 MB).
    """
    workers = workers or os.cpu_count() or 1
    keep = _own_children()
    batches = [list(names[i : i + 25]) for i in range(0, len(names), 25)]
    unique = sorted(set(names))
    forks = "fork" in multiprocessing.get_all_start_methods()
    if forks:
        _load_bodies(str(folder), unique)
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    else:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, initializer=_load_bodies, initargs=(str(folder), unique)
        )
    try:
        for _ in range(20):  # until every worker has answered (each one ran the initializer first)
            if len(set(pool.map(_worker_ready, range(workers)))) == workers:
                break
        started = time.perf_counter()
        results = list(pool.map(_process_batch, batches, [size] * len(batches)))
        wall = time.perf_counter() - started
    finally:
        pool.shutdown()
        _BODIES.clear()
        _reap_strays(keep)
    done = sum(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    return Result("W2", CEILING, len(names), wall, cpu, 0.0, len(names), done, 0, note="no I/O")


# ---- running ---------------------------------------------------------------
def best(runs: Sequence[Result]) -> Result:
    """The fastest of a tool's repetitions (on a shared machine, the least disturbed one)."""
    top = max(runs, key=lambda r: r.images_per_s)
    if len(runs) > 1:
        top.runs = [round(r.images_per_s, 1) for r in runs]
    return top


@dataclasses.dataclass(frozen=True)
class Ratio:
    """An imgfetch tool's images/s over another tool's (a peer, or the processing ceiling); for a
    shard format against its files twin also CPU per image over CPU per image (``metric``)."""

    workload: str
    tool: str
    against: str
    #: the best run of each (what the table shows; for CPU the lowest of each).
    best: float
    #: run against run within each repetition both ran in, in order; the VM's speed drifts
    #: during a bench, so these pair runs made under the same conditions.
    same_repetition: tuple[float, ...]
    #: :data:`SPEED` (images/s) or :data:`CPU` (CPU s / 1000 images).
    metric: str = "images/s"

    @property
    def median(self) -> float:
        """Of the same-repetition ratios; the best-against-best one if no repetition has both tools."""
        return statistics.median(self.same_repetition) if self.same_repetition else self.best

    def text(self, value: float) -> str:
        return f"{100 * value:.1f} %" if self.against == CEILING else f"{value:.2f}x"

    def each(self) -> str:
        return " / ".join(self.text(v) for v in self.same_repetition)


SPEED = "images/s"
CPU = "CPU s / 1000"


def files_twin(tool: str) -> str | None:
    """The tool a shard-format tool is compared with: the same engine writing files."""
    known = TOOLS.get(tool)
    return None if known is None else known.files_twin


def ratios(runs: Sequence[Result]) -> list[Ratio]:
    """Every imgfetch tool against every other tool among one workload's ``runs`` (the targets
    are ratios).  Another imgfetch engine is not a peer: the table compares the engines.
    """
    by_tool: dict[str, list[Result]] = {}
    for r in runs:
        if r.images_per_s > 0:
            by_tool.setdefault(r.tool, []).append(r)
    out = []
    for tool, mine in by_tool.items():
        if not tool.startswith("imgfetch"):
            continue
        for other, theirs in by_tool.items():
            if other.startswith("imgfetch"):
                continue
            reps = {r.rep: r for r in theirs}
            same = tuple(m.images_per_s / reps[m.rep].images_per_s for m in mine if m.rep in reps)
            top = max(m.images_per_s for m in mine) / max(t.images_per_s for t in theirs)
            out.append(Ratio(mine[0].workload, tool, other, top, same))
    return out


def format_ratios(runs: Sequence[Result]) -> list[Ratio]:
    """Each shard-format tool against its files twin among one workload's ``runs``: images/s
    (the best run of each) and CPU per image (the lowest of each), and both run against run
    within each repetition (the issue's targets: at least as fast, no more CPU per image)."""
    by_tool: dict[str, list[Result]] = {}
    for r in runs:
        if r.valid > 0 and r.wall_s > 0:
            by_tool.setdefault(r.tool, []).append(r)
    out = []
    for tool, mine in by_tool.items():
        twin = files_twin(tool)
        if twin is None or twin not in by_tool:
            continue
        theirs = by_tool[twin]
        reps = {r.rep: r for r in theirs}
        wl = mine[0].workload
        speed = tuple(m.images_per_s / reps[m.rep].images_per_s for m in mine if m.rep in reps)
        top = max(m.images_per_s for m in mine) / max(t.images_per_s for t in theirs)
        out.append(Ratio(wl, tool, twin, top, speed, SPEED))
        cpu = tuple(m.cpu_per_1000 / reps[m.rep].cpu_per_1000 for m in mine if m.rep in reps)
        low = min(m.cpu_per_1000 for m in mine) / min(t.cpu_per_1000 for t in theirs)
        out.append(Ratio(wl, tool, twin, low, cpu, CPU))
    return out


def ratio_lines(found: Sequence[Ratio]) -> list[str]:
    return [
        f"{r.tool} vs {r.against}{'' if r.metric == SPEED else f' ({r.metric})'}: {r.text(r.best)}"
        f" best vs best; same repetition: median {r.text(r.median)} ({r.each()})"
        for r in found
    ]


def ratio_table(found: Sequence[Ratio], *, metric: bool = False) -> str:
    """The ratios as Markdown; ``metric`` adds a column saying what each one divides."""
    what = "| what " if metric else ""
    lines = [
        f"| imgfetch | against {what}| best vs best | same repetition: median | each repetition |",
        "|---|---|---|---|---|" + ("---|" if metric else ""),
    ]
    for r in found:
        col = f"| {r.metric} " if metric else ""
        lines.append(f"| {r.tool} | {r.against} {col}| {r.text(r.best)} | {r.text(r.median)} | {r.each()} |")
    return "\n".join(lines)


def format_table(runs: Sequence[dict[str, Any]], workload: str) -> str:
    """Every repetition of each shard-format tool and of its files twin: images/s, CPU s / 1000
    images and peak RSS (as ``results.json``'s ``runs``), with the best (lowest CPU, highest RSS)."""
    mine = [r for r in runs if r["workload"] == workload]
    shard_tools = [t for t in dict.fromkeys(r["tool"] for r in mine) if files_twin(t)]
    if not shard_tools:
        return ""
    tools = list(dict.fromkeys([*(files_twin(t) for t in shard_tools), *shard_tools]))
    lines = [
        "| tool | output format | shards | images/s, each repetition | best | CPU s / 1000, each"
        " | lowest | peak RSS MB, each | highest | valid, each |",
        "|" + "---|" * 10,
    ]
    for tool in tools:
        rows = [r for r in mine if r["tool"] == tool]
        if not rows:
            continue
        speed = [r["images_per_s"] for r in rows]
        valid = " / ".join(f"{r['valid']}/{r['urls']}" for r in rows)
        cpu = [r["cpu_s_per_1000"] for r in rows if r["cpu_s_per_1000"] is not None]
        rss = [r["peak_rss_mb"] for r in rows]
        shards = sorted({r["shards"] for r in rows if r.get("shards") is not None})
        lines.append(
            f"| {tool} | {rows[0].get('output_format', 'files')} | {'/'.join(map(str, shards)) or '-'}"
            f" | {' / '.join(f'{v:.0f}' for v in speed)} | **{max(speed):.0f}**"
            f" | {' / '.join(f'{v:.2f}' for v in cpu)} | **{min(cpu, default=float('nan')):.2f}**"
            f" | {' / '.join(f'{v:.0f}' for v in rss)} | {max(rss):.0f}"
            f" | {valid} |"
        )
    return "\n".join(lines)


class Bench:
    def __init__(self, settings: Settings, log: Callable[[str], None]) -> None:
        self.s = settings
        self.log = log
        self.corpus_dir = settings.cache / f"corpus-seed{settings.seed}"
        self.entries: list[dict[str, Any]] = []
        self.results: list[Result] = []
        #: Every run of every tool, in the order run (``results`` keeps each tool's best).
        self.runs: list[Result] = []
        self.ratios: list[Ratio] = []
        self.scaling: dict[str, list[dict[str, Any]]] = {}
        self._last_stats: dict[str, Any] = {}
        self._spent: list[Path] = []
        #: file_create_cpu_us() at the start and the end of the bench.
        self.disk_probe: dict[str, float] = {}
        #: Seconds the bench waited for a slow disk before a run, one entry per wait.
        self.disk_waits: list[float] = []
        self._probes = itertools.count()

    def build_corpus(self) -> None:
        cmd = [sys.executable, "-m", "imgfetch.bench.corpus", str(self.corpus_dir)]
        cmd += ["--count", str(self.s.corpus), "--seed", str(self.s.seed)]
        subprocess.run(cmd, check=True, env=clean_env())
        meta = json.loads((self.corpus_dir / "index.json").read_text())
        self.entries = [e for e in meta["images"] if e["index"] < self.s.corpus]

    @contextlib.contextmanager
    def server(self, latency: float, stats: Path) -> Iterator[Server]:
        srv = Server(self.corpus_dir, self.s.hosts, latency, stats)
        try:
            yield srv
        finally:
            self._last_stats = srv.stop()

    def run_tool(
        self,
        ctx: Context,
        tool: Tool,
        wl: Workload,
        count: int,
        pool: concurrent.futures.Executor,
        *,
        latency: float | None = None,
        extra: Sequence[str] = (),
        label: str | None = None,
    ) -> Result | None:
        name = label or tool.name
        if tool.max_urls is not None:
            count = min(count, tool.max_urls(self.s))
        self.await_disk(ctx)
        out = ctx.work / f"out-{wl.name}-{name}-{time.time_ns():x}"
        with self.server(self.s.latency if latency is None else latency, ctx.work / "stats.json") as srv:
            urls = url_list(self.entries, srv.hosts, srv.port, count)
            cmd = tool.build(ctx, wl, urls, out)
            if isinstance(cmd, str):
                self.log(f"  {name}: skipped: {cmd}")
                return None
            cmd = [*cmd, *extra]
            self.log(f"  {name}: {count} URLs ...")
            server_before = srv.cpu_seconds()
            m = measure(cmd, log=ctx.work / f"{wl.name}-{name}.log")
            server_after = srv.cpu_seconds()
        stats = self._last_stats
        want = frozenset(e["sha256"] for e in self.entries) if wl.size is None else None
        shards: ShardCheck | None = None
        if not out.exists():
            files, valid = 0, 0
        elif tool.output_format == "files":
            files, valid = verify(out, want, pool)
        else:
            shards = verify_shards(out, tool.output_format, want, pool)
            files, valid = shards.samples, shards.valid
        if not self.s.keep_outputs:
            self._discard(out)
        peak_host = max(stats.get("peak", {}).values(), default=None)
        notes = [f"exit {m.returncode}; see {ctx.work / f'{wl.name}-{name}.log'}"] if m.returncode else []
        if shards is not None:
            notes += shards.problems
        res = Result(
            wl.name, name, count, m.wall_s, m.cpu_s, m.peak_rss / 1e6, files, valid, m.returncode,
            stats.get("requests"), peak_host, "; ".join(notes),
        )  # fmt: skip
        res.output_format = tool.output_format
        if shards is not None:
            res.shards = shards.shards
        if server_before is not None and server_after is not None:
            res.server_cpu_s = server_after - server_before
        if m.peak_pss:
            res.peak_pss_mb = m.peak_pss / 1e6
        self.log(
            f"  {name}: {res.images_per_s:.0f} images/s, {res.cpu_per_1000:.2f} CPU s/1000,"
            f" {res.peak_rss_mb:.0f} MB, {valid}/{count} valid"
            + (f" in {res.shards} shards" if res.shards is not None else "")
            + (f" ({res.note})" if res.note else "")
        )
        self.runs.append(res)
        return res

    def _discard(self, out: Path) -> None:
        """Delete a run's output at the end of the bench, not now (unless the disk is filling up).

        Measured on this benchmark's VM (ext4): after thousands of files are deleted, file
        creation costs ~1 ms of kernel CPU per file for minutes instead of ~0.08 ms, so
        deleting one tool's output would tax whichever tool runs next.
        """
        self._spent.append(out)
        if shutil.disk_usage(out.parent).free < DISK_RESERVE:
            self._delete_spent()

    def _delete_spent(self) -> None:
        for path in self._spent:
            shutil.rmtree(path, ignore_errors=True)
        self._spent.clear()

    def run(self) -> None:
        try:
            self._run()
        finally:
            self._delete_spent()

    def _run(self) -> None:
        s = self.s
        self.log(f"corpus: {s.corpus} images (seed {s.seed}) in {self.corpus_dir}")
        self.build_corpus()
        _become_subreaper()
        i2d = ensure_img2dataset(s.cache, self.log) if s.with_img2dataset else None
        workloads = [Workload(w, None if w == "W1" else s.size) for w in s.workloads]
        with (
            tempfile.TemporaryDirectory(prefix="imgfetch-bench-", dir=s.cache) as tmp,
            concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1) as pool,
        ):
            ctx = Context(s, Path(tmp), i2d)
            self._probe_disk(ctx, "start")
            for wl in workloads:
                self.log(
                    f"{wl.title}: {s.urls} URLs, {s.hosts} hosts, latency median {s.latency * 1000:g} ms"
                )
                tools = [TOOLS[n] for n in s.tools if wl.size is None or TOOLS[n].resizes]
                names = [self.entries[r % len(self.entries)]["name"] for r in range(s.urls)]
                runs: dict[str, list[Result]] = {}
                # Repetitions go round-robin, so a burst of load elsewhere hits every tool alike.
                for rep in range(s.repeat):
                    if s.repeat > 1:
                        self.log(f" repetition {rep + 1} of {s.repeat}")
                    for tool in tools:
                        res = self.run_tool(ctx, tool, wl, s.urls, pool)
                        if res is not None:
                            res.rep = rep
                            runs.setdefault(tool.name, []).append(res)
                    if wl.size is not None:
                        ceiling = processing_ceiling(self.corpus_dir, names, wl.size)
                        ceiling.rep = rep
                        self.log(f"  processing ceiling: {ceiling.images_per_s:.0f} images/s")
                        runs.setdefault(ceiling.tool, []).append(ceiling)
                        self.runs.append(ceiling)
                self.results += [best(r) for r in runs.values()]
                every = [r for rs in runs.values() for r in rs]
                found = ratios(every) + format_ratios(every)
                self.ratios += found
                for line in ratio_lines(found):
                    self.log(f"  {line}")
            if s.scaling:
                self.run_scaling(ctx, pool)
            self._probe_disk(ctx, "end")

    def await_disk(self, ctx: Context) -> None:
        """Measure nothing while the disk is in its slow state: wait for it to recover.

        Every tool writes thousands of files, so a disk in that state would tax
        whichever tool ran then (by up to 1 ms of CPU per file, more than a whole
        download costs).  After ``--disk-wait`` seconds (none with ``--quick``, a smoke
        run) the bench measures anyway and says so.
        """
        us = file_create_cpu_us(ctx.work / f"probe-{next(self._probes)}")
        if us <= DISK_SLOW_US:
            return
        self.log(f"disk: a file costs {us:.0f} CPU us (slow state): waiting for it to recover")
        started = time.monotonic()
        while us > DISK_SLOW_US and time.monotonic() - started < self.s.disk_wait:
            time.sleep(DISK_POLL_S)
            us = file_create_cpu_us(ctx.work / f"probe-{next(self._probes)}")
        waited = time.monotonic() - started
        self.disk_waits.append(round(waited, 1))
        state = "recovered" if us <= DISK_SLOW_US else "still slow; measuring anyway"
        self.log(f"disk: {us:.0f} CPU us per file after {waited:.0f} s ({state})")

    def _probe_disk(self, ctx: Context, when: str) -> None:
        us = file_create_cpu_us(ctx.work / f"probe-{when}")
        self.disk_probe[when] = round(us, 1)
        self.log(f"disk: writing a 15 kB file atomically costs {us:.0f} CPU us ({when} of the bench)")

    def run_scaling(self, ctx: Context, pool: concurrent.futures.Executor) -> None:
        s = self.s
        tool = TOOLS["imgfetch-async"]
        wl = Workload("W1", None)
        self.log(f"scaling (imgfetch async, W1, {s.scaling_urls} URLs)")
        default_j = HttpConfig().concurrency
        points: list[tuple[str, float, int, list[str]]] = [
            ("latency", latency, default_j, []) for latency in (0.02, 0.08, 0.3)
        ]
        # --per-host j: the per-host limit must not be what binds in this sweep.
        points += [("concurrency", s.latency, j, ["-j", str(j), "--per-host", str(j)]) for j in SCALING_J]
        # Where --loops auto starts more loops, the same points with one loop show what they add.
        points += [
            ("concurrency-one-loop", s.latency, j, ["-j", str(j), "--per-host", str(j), "--loops", "1"])
            for j in SCALING_J
            if j >= 2 * MIN_PER_LOOP
        ]
        runs: dict[tuple[str, float, int], list[Result]] = {}
        for _ in range(s.repeat):
            for key, latency, j, extra in points:
                label = f"latency-{latency:g}" if key == "latency" else f"j-{j}"
                res = self.run_tool(
                    ctx, tool, wl, s.scaling_urls, pool, latency=latency, extra=extra, label=label
                )
                if res is not None:
                    runs.setdefault((key, latency, j), []).append(res)
        for (key, latency, j), results in runs.items():
            row = {"latency_s": latency, "concurrency": j, **best(results).to_dict()}
            self.scaling.setdefault(key, []).append(row)


# ---- reporting -------------------------------------------------------------
def file_create_cpu_us(folder: Path, count: int = 300) -> float:
    """CPU microseconds to write one 15 kB file atomically (create, write, rename) in ``folder``.

    A probe of the disk's state, reported with the results: on this benchmark's VM
    it varied from 70 us to over 1 ms per file over minutes (after many files are
    deleted, for instance), and a download-only run writes thousands of files.
    """
    folder.mkdir(parents=True)
    data = os.urandom(15_000)
    started = time.process_time()
    for i in range(count):
        tmp, final = folder / f".probe-{i}", folder / f"{i}.jpg"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    return (time.process_time() - started) / count * 1e6


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def table(results: Sequence[Result], workload: str) -> str:
    rows = [r for r in results if r.workload == workload]
    if not rows:
        return ""
    classic = next((r for r in rows if r.tool == "classic" and r.images_per_s), None)
    head = (
        "| tool | URLs | images/s | vs classic | CPU s / 1000 images | peak RSS MB | peak PSS MB | valid"
        " | peak/host | server CPU s / 1000 |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        ratio = f"{r.images_per_s / classic.images_per_s:.1f}x" if classic else ""
        cpu = f"{r.cpu_per_1000:.2f}" if r.valid else "-"
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-"
        pss = f"{r.peak_pss_mb:.0f}" if r.peak_pss_mb else "-"
        peak = "" if r.server_peak_per_host is None else str(r.server_peak_per_host)
        valid = f"{r.valid}/{r.urls}" + (f" ({r.note})" if r.note else "")
        server = f"{1000 * r.server_cpu_s / r.valid:.2f}" if r.server_cpu_s is not None and r.valid else ""
        lines.append(
            f"| {r.tool} | {r.urls} | {r.images_per_s:.0f} | {ratio} | {cpu} | {rss} | {pss} | {valid}"
            f" | {peak} | {server} |"
        )
    return "\n".join(lines)


def markdown(report: dict[str, Any], results: Sequence[Result], found: Sequence[Ratio] = ()) -> str:
    m = report["machine"]
    parts = [
        "# imgfetch bench",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['system']}",
        "",
        "Disk: CPU us to write a 15 kB file atomically, start / end of the bench: "
        + " / ".join(f"{v:g}" for v in m.get("file_create_cpu_us", {}).values())
        + (
            f"; before {len(m['disk_waits_s'])} run(s) the bench waited for it to leave its slow state"
            f" ({' / '.join(f'{w:g}' for w in m['disk_waits_s'])} s)"
            if m.get("disk_waits_s")
            else ""
        ),
        "",
        f"Corpus: {report['corpus']}",
        "",
        f"Server: {report['settings']['hosts']} hosts on 127.0.0.x, log-normal latency,"
        f" median {report['settings']['latency'] * 1000:g} ms",
    ]
    repeat = report["settings"]["repeat"]
    if repeat > 1:
        parts += ["", f"Each figure is the best of {repeat} round-robin runs (every run is in results.json)."]
    for wl, title in (("W1", "W1 download only"), ("W2", f"W2 --size {report['settings']['size']}")):
        t = table(results, wl)
        if t:
            parts += ["", f"## {title}", "", t]
            mine = [r for r in found if r.workload == wl and r.against != files_twin(r.tool)]
            if mine:
                parts += [
                    "",
                    "Ratios of images/s: the best run of each, and run against run within each repetition.",
                    "",
                    ratio_table(mine),
                ]
            formats = format_table(report.get("runs", []), wl)
            if formats:
                twins = [r for r in found if r.workload == wl and r.against == files_twin(r.tool)]
                parts += [
                    "",
                    f"### {wl}: output formats against files",
                    "",
                    formats,
                    "",
                    "Shard format over files: images/s (best run of each) and CPU s / 1000 images"
                    " (lowest run of each), and run against run within each repetition.",
                    "",
                    ratio_table(twins, metric=True),
                ]
    for key, label in (
        ("latency", "latency_s"),
        ("concurrency", "concurrency"),
        ("concurrency-one-loop", "concurrency"),
    ):
        rows = report.get("scaling", {}).get(key)
        if rows:
            what = "concurrency, --loops 1" if key == "concurrency-one-loop" else key
            parts += ["", f"## Scaling by {what} (imgfetch async, W1)", ""]
            parts += [f"| {label} | images/s | CPU s / 1000 images | peak RSS MB |", "|---|---|---|---|"]
            for row in rows:
                parts.append(
                    f"| {row[label]:g} | {row['images_per_s']:.0f} | {row['cpu_s_per_1000']} |"
                    f" {row['peak_rss_mb']:.0f} |"
                )
    return "\n".join(parts) + "\n"


def write_reports(bench: Bench, command: str) -> dict[str, Any]:
    s = bench.s
    s.out.mkdir(parents=True, exist_ok=True)
    sizes = sorted(e["width"] * e["height"] for e in bench.entries)
    nbytes = sorted(e["bytes"] for e in bench.entries)
    formats: dict[str, int] = {}
    for e in bench.entries:
        formats[e["format"]] = formats.get(e["format"], 0) + 1
    corpus = (
        f"{len(bench.entries)} distinct images (seed {s.seed}), median {sizes[len(sizes) // 2] / 1e6:.2f} MP,"
        f" largest {max(max(e['width'], e['height']) for e in bench.entries)} px,"
        f" median {nbytes[len(nbytes) // 2] / 1e3:.0f} kB; "
        + ", ".join(f"{k} {v}" for k, v in sorted(formats.items()))
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(s).items()}
    report: dict[str, Any] = {
        "command": command,
        "machine": {**machine(), "file_create_cpu_us": bench.disk_probe, "disk_waits_s": bench.disk_waits},
        "corpus": corpus,
        "settings": settings,
        "results": [r.to_dict() for r in bench.results],
        "runs": [r.to_dict() for r in bench.runs],
        "scaling": bench.scaling,
        "ratios": [{**dataclasses.asdict(r), "median": r.median} for r in bench.ratios],
    }
    (s.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (s.out / "results.md").write_text(markdown(report, bench.results, bench.ratios))
    return report


def draw_chart(out: Path, log: Callable[[str], None]) -> None:
    cmd = [sys.executable, "-m", "imgfetch.bench.chart", str(out / "results.json"), str(out / "chart.png")]
    done = subprocess.run(cmd, env=clean_env(), check=False)
    if done.returncode == 0:
        log(f"chart: {out / 'chart.png'}")
    else:
        log("chart failed (see above)")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="imgfetch bench",
        description="Measure the imgfetch engines and their peers on a local image server (offline).",
    )
    ap.add_argument("--quick", action="store_true", help="a small version (a few hundred URLs, < 1 minute)")
    ap.add_argument("--scaling", action="store_true", help="also: latency 20/80/300 ms and -j 16..512")
    ap.add_argument("--with-img2dataset", action="store_true", help="install img2dataset (PyPI) and run it")
    ap.add_argument(
        "--out", type=Path, default=Path("imgfetch-bench"), help="reports (default: ./imgfetch-bench)"
    )
    ap.add_argument("--cache", type=Path, help="corpus and virtualenvs (default: ~/.cache/imgfetch/bench)")
    ap.add_argument("--urls", type=int, help="URLs per workload (default: 5000; quick: 300)")
    ap.add_argument("--hosts", type=int, help="server addresses 127.0.0.1..N (default: 20; quick: 5)")
    ap.add_argument("--latency", type=float, default=0.08, help="median seconds (default: 0.08)")
    ap.add_argument("--corpus", type=int, help="distinct images (default: 1000; quick: 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256, help="W2's --size (default: 256)")
    ap.add_argument(
        "--loop-urls", type=int, default=300, help="URLs for the one-at-a-time engine (default: 300)"
    )
    ap.add_argument("--scaling-urls", type=int, default=2000)
    ap.add_argument("--tools", help=f"comma-separated subset of: {', '.join(TOOLS)}")
    ap.add_argument(
        "--shard-size",
        type=int,
        help="--shard-size of the shard-format tools (imgfetch-async-webdataset, imgfetch-async-parquet;"
        " default: imgfetch's, 10000)",
    )
    ap.add_argument("--workloads", default="W1,W2", help="default: W1,W2")
    ap.add_argument("--keep-outputs", action="store_true", help="keep each tool's downloaded files")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run every tool N times, round-robin, and report its best run"
    )
    ap.add_argument(
        "--disk-wait",
        type=float,
        help=f"longest wait in s for a disk slowed by many deletions, before each run"
        f" (default: {DISK_WAIT_S:g}; quick: 0)",
    )
    return ap.parse_args(list(argv))


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    if args.tools:
        tools = tuple(t.strip() for t in args.tools.split(",") if t.strip())
        unknown = [t for t in tools if t not in TOOLS]
        if unknown:
            raise SystemExit(
                f"imgfetch: error[bad-option]: unknown tool(s) {unknown}; known: {', '.join(TOOLS)}"
            )
    else:
        tools = QUICK_TOOLS if quick else tuple(TOOLS)
    if args.with_img2dataset and "img2dataset" not in tools:
        tools = (*tools, "img2dataset")
    if not args.with_img2dataset:
        tools = tuple(t for t in tools if t != "img2dataset")
    if args.shard_size is not None and args.shard_size < 1:
        raise SystemExit("imgfetch: error[bad-option]: --shard-size must be at least 1")
    workloads = tuple(w.strip().upper() for w in args.workloads.split(",") if w.strip())
    if not set(workloads) <= {"W1", "W2"}:
        raise SystemExit("imgfetch: error[bad-option]: --workloads takes W1, W2 or both")
    cache = (
        args.cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgfetch" / "bench"
    )
    return Settings(
        urls=args.urls or (300 if quick else 5000),
        hosts=args.hosts or (5 if quick else 20),
        latency=args.latency,
        corpus=args.corpus or (100 if quick else 1000),
        seed=args.seed,
        size=args.size,
        loop_urls=min(args.loop_urls, 100) if quick else args.loop_urls,
        cache=cache.expanduser().resolve(),
        out=args.out.resolve(),
        tools=tools,
        workloads=workloads,
        scaling=args.scaling,
        scaling_urls=args.scaling_urls,
        with_img2dataset=args.with_img2dataset,
        keep_outputs=args.keep_outputs,
        repeat=max(1, args.repeat),
        shard_size=args.shard_size,
        disk_wait=max(0.0, args.disk_wait if args.disk_wait is not None else 0.0 if quick else DISK_WAIT_S),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    if not sys.platform.startswith("linux"):
        print(
            "imgfetch: note: bench measures process trees through /proc; figures are Linux-only",
            file=sys.stderr,
        )
    settings = settings_from(parse(argv))
    require_extra()
    settings.cache.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"bench [{time.monotonic() - started:5.1f}s] {msg}", file=sys.stderr, flush=True)

    bench = Bench(settings, log)
    bench.run()
    command = "imgfetch bench" + "".join(f" {shlex.quote(a)}" for a in argv)
    report = write_reports(bench, command)
    m = report["machine"]
    print(f"\nimgfetch bench — {m['cores']} cores, {m['cpu']}, Python {m['python']}")
    for wl in settings.workloads:
        print(f"\n{wl}\n{table(bench.results, wl)}")
    draw_chart(settings.out, log)
    log(f"reports in {settings.out} ({time.monotonic() - started:.0f} s)")
    failed = [r for r in bench.results if r.tool.startswith("imgfetch") and r.valid < r.urls]
    return 1 if failed else 0
