"""The ``imgfetch`` command in a real subprocess: outputs, stdin, exit codes, errors, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import imgfetch
from conftest import check_output, key_fields, snapshot
from imgfetch.records.manifest import read_manifest

if TYPE_CHECKING:
    from imgfetch.bench.server import ImageServer

_SCRIPT = Path(sys.executable).with_name("imgfetch")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "imgfetch"]
#: Flags that keep the fault rows of these tests quick.
QUICK = ["--retries", "0", "--timeout", "10", "--no-progress"]


def run(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # A proxy set in the developer's environment must not see loopback test traffic.
    clean = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgfetch: error"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_exit_0_with_per_url_failures(tmp_path: Path, server: ImageServer) -> None:
    urls = [server.url("img/rocket.jpg"), server.url("_/status/404"), "not a url"]
    (tmp_path / "list.txt").write_text("\n".join(urls) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    proc = run("list.txt", "-o", "out", *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 ok, 0 skipped, 2 failed of 3 rows" in proc.stderr
    res = check_output(tmp_path, out, before, 3)
    assert [key_fields(r) for r in res.records] == [
        ("ok", None, 200, 1),
        ("failed", "http-404", 404, 1),
        ("failed", "invalid-url", None, 0),
    ]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["total"], summary["ok"], summary["failed"]) == (3, 1, 2)


def test_default_output_folder_is_the_list_stem(tmp_path: Path, server: ImageServer) -> None:
    (tmp_path / "cats.txt").write_text(server.url("img/chelsea-the-cat.jpg") + "\n", encoding="utf-8")
    before = snapshot(tmp_path)
    proc = run("cats.txt", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # -q: no progress, no summary
    res = check_output(tmp_path, tmp_path / "cats", before, 1)
    assert res.paths() == ["00000/chelsea-the-cat.jpg"]


def test_stdin(tmp_path: Path, server: ImageServer) -> None:
    urls = [server.url("img/coins.png", 1), "# a comment", "", server.url("_/html-as-jpeg", 2)]
    before = snapshot(tmp_path)
    proc = run("-", "-o", "out", *QUICK, cwd=tmp_path, stdin="\r\n".join(urls) + "\r\n")
    assert proc.returncode == 0, proc.stderr
    res = check_output(tmp_path, tmp_path / "out", before, 2)
    assert [(r["status"], r["reason"]) for r in res.records] == [("ok", None), ("failed", "not-an-image")]
    assert res.paths()[0] == "00000/coins.png"


def test_stdin_needs_an_output_folder(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    assert_one_line_error(run("-", cwd=tmp_path, stdin="http://127.0.0.1:1/a.jpg\n"))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["missing.txt", "-o", "out"], id="missing-input"),
        pytest.param(["list.txt", "-o", "taken"], id="output-is-a-file"),
        pytest.param(["list.txt", "-o", "out", "-j", "0"], id="zero-concurrency"),
        pytest.param(["list.txt", "-o", "out", "--name", "bogus"], id="bad-naming"),
        pytest.param(["list.txt", "-o", "out", "--max-failure-rate", "3"], id="bad-failure-rate"),
        pytest.param(["list.txt", "-o", "out", "--folder-size", "-1"], id="negative-folder-size"),
        pytest.param(["list.txt", "-o", "out", "--input-format", "xml"], id="bad-choice"),
        pytest.param(["list.txt", "-o", "out", "--no-such-flag"], id="unknown-flag"),
        pytest.param(["list.txt", "-o", "out", "--max-bytes", "lots"], id="bad-size"),
    ],
)
def test_exit_1_when_the_run_cannot_happen(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "list.txt").write_text("http://127.0.0.1:1/a.jpg\n", encoding="utf-8")
    (tmp_path / "taken").write_text("a regular file where the output folder should go\n", encoding="utf-8")
    before = snapshot(tmp_path)
    assert_one_line_error(run(*args, cwd=tmp_path))
    assert snapshot(tmp_path) == before, "a run that cannot happen writes nothing"


@pytest.mark.parametrize(("limit", "code"), [("0.4", 2), ("0.5", 0)])
def test_max_failure_rate(tmp_path: Path, server: ImageServer, limit: str, code: int) -> None:
    urls = [server.url("img/hubble.jpg"), server.url("_/status/404")]
    (tmp_path / "list.txt").write_text("\n".join(urls) + "\n", encoding="utf-8")
    before = snapshot(tmp_path)
    proc = run("list.txt", "-o", "out", "--max-failure-rate", limit, *QUICK, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert ("exceeds --max-failure-rate" in proc.stderr) == (code == 2)
    check_output(tmp_path, tmp_path / "out", before, 2)  # the run itself still completed


def test_version(tmp_path: Path) -> None:
    proc = run("--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"imgfetch {imgfetch.__version__}"


def _check_demo(tmp_path: Path, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr
    records = list(read_manifest(tmp_path / "demo" / "manifest.jsonl"))
    assert sorted(r["row"] for r in records) == list(range(len(records)))
    assert sum(r["status"] == "ok" for r in records) == len(records) - 3


def test_demo(tmp_path: Path) -> None:
    _check_demo(tmp_path, run("demo", "-o", "demo", cwd=tmp_path))


def test_demo_ignores_proxy_variables(tmp_path: Path) -> None:
    proxy = "http://127.0.0.1:9"  # the discard port: nothing listens there
    env = {"http_proxy": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy, "HTTPS_PROXY": proxy}
    _check_demo(tmp_path, run("demo", "-o", "demo", cwd=tmp_path, env=env))


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--limit", "-1"], "--limit"),
        (["--folder-size", "-3"], "--folder-size"),
        (["--workers", "0"], "--workers"),
        (["--max-failure-rate", "3"], "--max-failure-rate"),
        (["--shard-size", "0", "--output-format", "webdataset"], "--shard-size"),
    ],
)
def test_bad_options_stop_before_anything_is_created_and_name_the_flag(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    listing = tmp_path / "l.txt"
    listing.write_text("http://127.0.0.1:9/a.jpg\n")
    proc = run(str(listing), "-o", "out", "--log-file", "out/run.log", *args, cwd=tmp_path)
    assert_one_line_error(proc)
    assert f"error[bad-option]: {flag} " in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.txt"], "nothing was created"


def test_a_log_file_inside_the_output_folder_works(tmp_path: Path) -> None:
    listing = tmp_path / "l.txt"
    listing.write_text("http://127.0.0.1:9/a.jpg\n")
    proc = run(str(listing), "-o", "lg", "--log-file", "lg/run.log", *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "row=0 status=failed" in (tmp_path / "lg" / "run.log").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": "5"}, "concurrency must be a number, not '5'"),
        ({"retries": True}, "retries must be a number, not True"),
        ({"insecure": "yes"}, "insecure must be true or false, not 'yes'"),
        ({"workers": 0}, "workers must be > 0"),
        ({"limit": -2}, "limit must be >= 0"),
    ],
)
def test_api_options_of_the_wrong_kind_are_config_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(imgfetch.ConfigError, match=message.replace("(", r"\(")):
        imgfetch.config("l.txt", "out", **options)


@pytest.mark.parametrize(
    ("listing", "args", "says"),
    [
        ("l.txt", ["--name", "column:id"], "--name column:id needs an input with columns"),
        ("l.txt", ["--caption-col", "caption"], "--caption-col caption needs an input with columns"),
        ("l.csv", ["--name", "column:nope"], "--name column:nope: input 'l.csv' has no column 'nope'"),
        ("l.csv", ["--caption-col", "capt"], "--caption-col capt: input 'l.csv' has no column 'capt'"),
    ],
)
def test_an_option_naming_a_column_the_input_lacks_is_refused(
    tmp_path: Path, listing: str, args: list[str], says: str
) -> None:
    (tmp_path / "l.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    (tmp_path / "l.csv").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a cat\n")
    proc = run(listing, "-o", "out", *args, cwd=tmp_path)
    assert_one_line_error(proc)
    assert says in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
