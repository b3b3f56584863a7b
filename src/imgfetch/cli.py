"""Command line: flags -> options -> run -> summary and exit code.  Nothing else.

Exit codes: 0 the run completed (per-URL failures included), 1 it could not
run (bad arguments, unreadable input, unwritable output), 2 the failure rate
exceeded ``--max-failure-rate``, 130 interrupted (Ctrl-C / SIGTERM) before the
end; rows left undone are done by running the same command again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from imgfetch import api
from imgfetch._version import __version__
from imgfetch.config import DEFAULT_MAX_PIXELS, DEFAULT_USER_AGENT
from imgfetch.errors import ConfigError, ImgfetchError
from imgfetch.fetch.engines import ENGINES
from imgfetch.report import Progress, format_summary

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_OK, EXIT_ERROR, EXIT_FAILURE_RATE, EXIT_INTERRUPTED = 0, 1, 2, 130
SUBCOMMANDS = ("demo", "bench")

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def byte_size(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 50M, 200k or 1048576") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return int(value)


def header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"bad header {text!r}: use 'Name: value'")
    return name.strip(), value.strip()


def delay(text: str) -> tuple[float, float]:
    lo, sep, hi = text.replace("(", "").replace(")", "").partition(",")
    try:
        return (float(lo), float(hi)) if sep else (float(lo), float(lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad delay {text!r}: use MIN,MAX seconds") from None


def loops_arg(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"bad --loops {text!r}: use a number of loops (1, 2...) or auto")
    return value


def resolve(text: str) -> tuple[str, str, int | None]:
    host, sep, target = text.partition("=")
    if not sep or not host or not target:
        raise argparse.ArgumentTypeError(f"bad --resolve {text!r}: use HOST=ADDRESS[:PORT]")
    port: int | None = None
    if target.startswith("["):
        addr, _, rest = target[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif target.count(":") == 1:
        addr, _, p = target.partition(":")
        port = int(p)
    else:
        addr = target
    return host.lower(), addr, port


def rgb(text: str) -> tuple[int, int, int]:
    named = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "gray": (128, 128, 128)}
    if text.lower() in named:
        return named[text.lower()]
    t = text.lstrip("#")
    try:
        if len(t) == 6:
            return (int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16))
        r, g, b = (int(x) for x in text.split(","))
        return (r, g, b)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"bad colour {text!r}: use white, black, #RRGGBB or R,G,B")


class _Parser(argparse.ArgumentParser):
    """Usage errors are "could not run" (exit 1) in one line, not argparse's exit 2 and usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"imgfetch: error[bad-option]: {message} (see imgfetch --help)\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="imgfetch",
        description="Download every image listed in INPUT into a folder, verified, with a per-row manifest.",
        epilog="Also: 'imgfetch demo' (an offline demonstration), 'imgfetch bench' (the speed comparison). "
        "Exit codes: 0 done, 1 could not run, 2 failure rate exceeded, 130 interrupted.",
    )
    ap.add_argument("input", help="URL list: .txt, .csv, .tsv, .parquet, .jsonl, or - for stdin")
    ap.add_argument("-o", "--out", help="output folder (default: ./<input stem>/)")
    ap.add_argument("--version", action="version", version=f"imgfetch {__version__}")

    g = ap.add_argument_group("input")
    g.add_argument("--input-format", choices=["txt", "csv", "tsv", "parquet", "jsonl"])
    g.add_argument("--url-col", default="url", help="URL column of tabular inputs (default: url)")
    g.add_argument("--limit", type=int, help="only the first N rows")

    g = ap.add_argument_group("fetching")
    g.add_argument("-j", "--concurrency", type=int, default=256, help="requests in flight (default: 256)")
    g.add_argument("--per-host", type=int, default=8, help="requests in flight per host (default: 8)")
    g.add_argument("--engine", choices=sorted(ENGINES), default="async", help="default: async")
    g.add_argument(
        "--loops",
        type=loops_arg,
        default=None,
        metavar="N|auto",
        help="event loops (one process each) sharing download-only rows; default auto: one per 128"
        " of -j, at most one per core and 4, when they can be forked (Linux)",
    )
    g.add_argument("--retries", type=int, default=3, help="retries of transient failures (default: 3)")
    g.add_argument("--connect-timeout", type=float, default=10.0, help="seconds (default: 10)")
    g.add_argument("--read-timeout", type=float, default=20.0, help="seconds between bytes (default: 20)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds for a whole download (default: 60)")
    g.add_argument("--max-bytes", type=byte_size, default=50 << 20, help="largest body (default: 50M)")
    g.add_argument("--max-redirects", type=int, default=10, help="default: 10")
    g.add_argument(
        "--max-retry-after", type=float, default=60.0, help="cap on Retry-After waits (default: 60 s)"
    )
    g.add_argument("--user-agent", default=DEFAULT_USER_AGENT, help=f"default: {DEFAULT_USER_AGENT}")
    g.add_argument(
        "-H",
        "--header",
        type=header,
        action="append",
        default=[],
        help="extra header 'Name: value' (repeatable)",
    )
    g.add_argument("--proxy", help="proxy URL (the standard *_proxy variables are honoured too)")
    g.add_argument("--no-proxy-env", action="store_true", help="ignore http_proxy/https_proxy variables")
    g.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    g.add_argument("--per-host-rate", type=float, help="requests per second per host")
    g.add_argument("--delay", type=delay, help="random MIN,MAX seconds between requests to the same host")
    g.add_argument(
        "--block-private", action="store_true", help="refuse private, loopback and link-local addresses"
    )
    g.add_argument("--ignore-opt-out", action="store_true", help="do not honour X-Robots-Tag noai/noindex")
    g.add_argument(
        "--resolve",
        type=resolve,
        action="append",
        default=[],
        help="HOST=ADDRESS[:PORT], like curl's --resolve",
    )

    g = ap.add_argument_group("images")
    g.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images undecoded"
    )
    g.add_argument("--size", help="target size N or WxH")
    g.add_argument(
        "--resize", choices=["fit", "exact", "crop", "pad", "none"], help="default: fit with --size"
    )
    g.add_argument("--upscale", action="store_true", help="let fit/pad enlarge small images")
    g.add_argument("--pad-color", type=rgb, default=(255, 255, 255), help="default: white")
    g.add_argument("--skip-small", action="store_true", help="skip images smaller than --size")
    g.add_argument("--min-size", type=int, help="skip images whose shorter side is below N")
    g.add_argument("--max-aspect-ratio", type=float, help="skip images longer than R times their width")
    g.add_argument("--format", choices=["keep", "jpeg", "png", "webp"], default="keep", help="default: keep")
    g.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default: 95)")
    g.add_argument("--verify", action="store_true", help="fully decode every image (slower)")
    g.add_argument("--workers", type=int, help="image processes (default: number of cores)")

    g = ap.add_argument_group("output")
    g.add_argument("--name", default="url", help="url (default), index, hash, column:NAME or random")
    g.add_argument(
        "--folder-size", type=int, default=10_000, help="images per sub-folder, 0 for none (default: 10000)"
    )
    g.add_argument("--folder-index", type=int, default=0, help="number of the first sub-folder (default: 0)")
    g.add_argument(
        "--output-format",
        choices=["files", "webdataset", "parquet"],
        default="files",
        help="files (default: numbered folders), webdataset (.tar shards) or parquet (shards with the"
        " image bytes in a column)",
    )
    g.add_argument(
        "--shard-size", type=int, default=10_000, help="rows per shard of the shard formats (default: 10000)"
    )
    g.add_argument(
        "--key",
        choices=["index", "name"],
        default="index",
        help="sample keys of the shard formats: index (default: shard then row, 000010005) or name (--name,"
        " without dots)",
    )
    g.add_argument("--caption-col", metavar="NAME", help="input column written as each caption (.txt)")
    g.add_argument(
        "--write-metadata", action="store_true", help="files format: write NAME.json beside each image"
    )
    g.add_argument(
        "--state-dir",
        type=Path,
        help="where the resume ledger, lock and shards being built live (default: OUT/.imgfetch)",
    )

    g = ap.add_argument_group("run")
    g.add_argument("--overwrite", action="store_true", help="start afresh, forgetting an earlier run in OUT")
    g.add_argument(
        "--retry-failed", action="store_true", help="also retry rows that failed transiently before"
    )
    g.add_argument("--retry-all-failed", action="store_true", help="also retry every row that failed before")
    g.add_argument("--force", action="store_true", help="resume even though input or options changed")
    g.add_argument("--max-failure-rate", type=float, help="exit 2 when more than this share of rows failed")
    g.add_argument("--log-file", type=Path, help="one line per event")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary")
    g.add_argument("-v", "--verbose", action="store_true", help="log every row to stderr")
    g.add_argument("--no-progress", action="store_true", help="no progress line")
    return ap


def options(args: argparse.Namespace) -> dict[str, object]:
    opts: dict[str, object] = {
        "input_format": args.input_format,
        "url_col": args.url_col,
        "limit": args.limit,
        "concurrency": args.concurrency,
        "per_host": args.per_host,
        "engine": args.engine,
        "retries": args.retries,
        "connect_timeout": args.connect_timeout,
        "read_timeout": args.read_timeout,
        "timeout": args.timeout,
        "max_bytes": args.max_bytes,
        "max_redirects": args.max_redirects,
        "max_retry_after": args.max_retry_after,
        "user_agent": args.user_agent,
        "headers": tuple(args.header),
        "proxy": args.proxy,
        "trust_env": not args.no_proxy_env,
        "insecure": args.insecure,
        "per_host_rate": args.per_host_rate,
        "delay": args.delay,
        "block_private": args.block_private,
        "honor_opt_out": not args.ignore_opt_out,
        "resolve": tuple(args.resolve),
        "max_pixels": args.max_pixels,
        "upscale": args.upscale,
        "pad_color": args.pad_color,
        "skip_small": args.skip_small,
        "min_size": args.min_size,
        "max_aspect_ratio": args.max_aspect_ratio,
        "format": args.format,
        "quality": args.quality,
        "verify": args.verify,
        "workers": args.workers,
        "loops": args.loops,
        "name": args.name,
        "folder_size": args.folder_size,
        "folder_index": args.folder_index,
        "output_format": args.output_format,
        "shard_size": args.shard_size,
        "key": args.key,
        "caption_col": args.caption_col,
        "write_metadata": args.write_metadata,
        "state_dir": args.state_dir,
        "overwrite": args.overwrite,
        "retry_failed": args.retry_failed or args.retry_all_failed,
        "retry_all_failed": args.retry_all_failed,
        "force": args.force,
        "max_failure_rate": args.max_failure_rate,
        "log_file": args.log_file,
    }
    if args.size is not None:
        opts["size"] = args.size
    if args.resize is not None:
        opts["resize"] = args.resize
    return opts


#: Fields whose flag is not their name with dashes.
_FLAG_OF = {"trust_env": "--no-proxy-env", "honor_opt_out": "--ignore-opt-out", "naming": "--name"}


def _as_flags(message: str, ap: argparse.ArgumentParser) -> str:
    """``folder_size must be >= 0`` -> ``--folder-size must be >= 0``: errors name the flag."""
    flags = {a.dest: max(a.option_strings, key=len) for a in ap._actions if a.option_strings}
    first, sep, rest = message.partition(" ")
    flag = _FLAG_OF.get(first) or flags.get(first)
    return f"{flag}{sep}{rest}" if flag else message


def _setup_logging(args: argparse.Namespace, out: Path) -> None:
    log = logging.getLogger("imgfetch")
    log.setLevel(logging.INFO if (args.log_file or args.verbose) else logging.WARNING)
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if args.verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("imgfetch: %(message)s"))
    log.addHandler(console)
    if args.log_file:
        log_file = Path(args.log_file).absolute()
        # A log inside the output folder is the natural place: make that folder first.
        if log_file.is_relative_to(out.absolute()) and not log_file.parent.exists():
            log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fh = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise ImgfetchError(f"cannot open --log-file '{args.log_file}': {exc.strerror or exc}") from None
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0], argv[1:])
    ap = parser()
    args = ap.parse_args(argv)
    try:
        # Every option is checked before anything is created (the log file included).
        try:
            cfg = api.config(args.input, args.out, **options(args))
        except ConfigError as exc:
            raise ConfigError(_as_flags(str(exc), ap), hint=exc.hint) from None
        _setup_logging(args, cfg.output.out)
        show_progress = not (args.quiet or args.no_progress) and sys.stderr.isatty()
        run = api.prepare(cfg, stdin=sys.stdin.buffer if args.input == "-" else None)
        progress = Progress(sys.stderr, run.summary, enabled=show_progress)
        run.on_outcome = progress
        try:
            summary = api.execute(run, handle_signals=True)
        finally:
            progress.close()
    except KeyboardInterrupt:  # Ctrl-C before the run's own handlers took over: nothing was recorded yet
        print("\nimgfetch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImgfetchError as exc:
        print(f"imgfetch: error[{exc.code}]: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # e.g. the log file cannot be opened
        print(f"imgfetch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        print(format_summary(summary, cfg.output.out, cfg.output.out / cfg.output.manifest), file=sys.stderr)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if args.max_failure_rate is not None and summary.failure_rate > args.max_failure_rate:
        print(
            f"imgfetch: failure rate {summary.failure_rate:.1%}"
            f" exceeds --max-failure-rate {args.max_failure_rate:.1%}",
            file=sys.stderr,
        )
        return EXIT_FAILURE_RATE
    return EXIT_OK


def _subcommand(name: str, argv: list[str]) -> int:
    if name == "demo":
        from imgfetch import demo

        return demo.main(argv)
    from imgfetch import bench

    return bench.main(argv)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
