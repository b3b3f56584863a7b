"""Run configuration as small frozen value objects.

The CLI and the Python API both build these; nothing below the CLI ever sees
raw flags.  Defaults are documented in the README's option table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, get_args

from imgfetch._version import __version__

ResizeMode = Literal["fit", "exact", "crop", "pad", "none"]
OutputFormat = Literal["keep", "jpeg", "png", "webp"]
NamingKind = Literal["url", "index", "hash", "column", "random"]
EngineName = Literal["async", "threads", "processes", "loop"]
InputFormat = Literal["txt", "csv", "tsv", "parquet", "jsonl"]
SinkFormat = Literal["files", "webdataset", "parquet"]
KeyKind = Literal["index", "name"]

PROJECT_URL = "https://github.com/imgfetch/imgfetch"
DEFAULT_USER_AGENT = f"imgfetch/{__version__} (+{PROJECT_URL})"

#: Same threshold at which Pillow itself starts warning about decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclasses.dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """How to fetch: limits, deadlines, retries and politeness."""

    concurrency: int = 256
    per_host: int = 8
    retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    timeout: float = 60.0
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 10
    user_agent: str = DEFAULT_USER_AGENT
    headers: tuple[tuple[str, str], ...] = ()
    proxy: str | None = None
    trust_env: bool = True
    insecure: bool = False
    per_host_rate: float | None = None
    delay: tuple[float, float] | None = None
    block_private: bool = False
    honor_opt_out: bool = True
    #: Like curl's --resolve: (host, address, port or None) answered without DNS.
    resolve: tuple[tuple[str, str, int | None], ...] = ()

    def __post_init__(self) -> None:
        _positive("concurrency", self.concurrency)
        _positive("per_host", self.per_host)
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        for name in ("connect_timeout", "read_timeout", "timeout"):
            _positive(name, getattr(self, name))
        _positive("max_bytes", self.max_bytes)
        if self.max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        if self.per_host_rate is not None:
            _positive("per_host_rate", self.per_host_rate)
        if self.delay is not None:
            lo, hi = self.delay
            if lo < 0 or hi < lo:
                raise ValueError("delay must be MIN,MAX with 0 <= MIN <= MAX")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """What to accept and how to transform it (transforms run in a process pool)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    size: tuple[int, int] | None = None
    resize: ResizeMode = "none"
    upscale: bool = False
    pad_color: tuple[int, int, int] = (255, 255, 255)
    skip_small: bool = False
    min_size: int | None = None
    max_aspect_ratio: float | None = None
    format: OutputFormat = "keep"
    quality: int = 95
    verify: bool = False

    def __post_init__(self) -> None:
        _positive("max_pixels", self.max_pixels)
        if self.size is not None and (self.size[0] <= 0 or self.size[1] <= 0):
            raise ValueError("size must be positive")
        if self.resize != "none" and self.size is None:
            raise ValueError(f"--resize {self.resize} needs --size")
        if not 1 <= self.quality <= 100:
            raise ValueError("quality must be between 1 and 100")
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            raise ValueError("max_aspect_ratio must be >= 1")

    @property
    def transforms(self) -> bool:
        """True when bytes must be decoded and re-encoded (not just checked)."""
        return (self.size is not None and self.resize != "none") or self.format != "keep"

    @property
    def decodes(self) -> bool:
        """True when the full image must be decoded (in the process pool)."""
        return self.transforms or self.verify


@dataclasses.dataclass(frozen=True, kw_only=True)
class Naming:
    kind: NamingKind = "url"
    column: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "column") != (self.column is not None):
            raise ValueError("naming 'column' needs a column name (column:NAME)")

    @classmethod
    def parse(cls, text: str) -> Naming:
        if text.startswith("column:"):
            col = text.removeprefix("column:")
            if not col:
                raise ValueError("--name column:NAME needs a column name")
            return cls(kind="column", column=col)
        if text not in ("url", "index", "hash", "random"):
            raise ValueError(f"unknown naming {text!r}: use url, index, hash, column:NAME or random")
        return cls(kind=text)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"column:{self.column}" if self.kind == "column" else self.kind


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """Where and how files are laid out.

    ``folder_size`` images per numbered sub-folder (``00000/``, ``00001/`` ...).
    Rows go to folder ``folder_index + row // folder_size``, so a row's folder
    never depends on timing or on which other rows failed.  The default of
    10,000 keeps a 100-image list in one folder and gives a 10-million-image
    list 1,000 folders of a size every file system and file browser handles.
    ``folder_size=0`` writes every file directly into ``out``.

    ``format`` ``webdataset`` or ``parquet`` writes shards instead: shard ``k``
    holds rows ``[k*shard_size, (k+1)*shard_size)``, each sample keyed by shard
    and index (``key="index"``, img2dataset's 9-digit keys) or by its name
    (``key="name"``, from ``naming``, made dotless).  ``state_dir`` holds the
    ledger, the lock and the shards being built (default ``out/.imgfetch``).
    """

    out: Path
    naming: Naming = dataclasses.field(default_factory=Naming)
    folder_size: int = 10_000
    folder_index: int = 0
    manifest: str = "manifest.jsonl"
    format: SinkFormat = "files"
    shard_size: int = 10_000
    key: KeyKind = "index"
    caption_col: str | None = None
    write_metadata: bool = False
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.folder_size < 0:
            raise ValueError("folder_size must be >= 0")
        if self.folder_index < 0:
            raise ValueError("folder_index must be >= 0")
        if self.format not in get_args(SinkFormat):
            raise ValueError(f"unknown output format {self.format!r}: use files, webdataset or parquet")
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        if self.key not in get_args(KeyKind):
            raise ValueError(f"unknown key {self.key!r}: use index or name")
        if self.write_metadata and self.sharded:
            raise ValueError(
                "--write-metadata is for --output-format files: every sample of a shard carries its JSON"
            )
        if self.key == "name" and self.naming.kind == "random":
            raise ValueError("--key name needs names that are the same on every run: not --name random")

    @property
    def state(self) -> Path:
        """The state folder: ledger, lock and staging."""
        return self.state_dir if self.state_dir is not None else self.out / ".imgfetch"

    @property
    def sharded(self) -> bool:
        return self.format != "files"


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputConfig:
    source: str  # a path, or "-" for stdin
    format: InputFormat | None = None  # None: from the extension
    url_col: str = "url"
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, not {self.limit}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one run needs."""

    input: InputConfig
    output: OutputConfig
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)
    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    engine: EngineName = "async"
    workers: int | None = None  # processing pool size; None = os.cpu_count()
    loops: int | None = None  # event loops (processes) doing rows; None = auto, see imgfetch.loops
    overwrite: bool = False
    retry_failed: bool = False
    retry_all_failed: bool = False
    force: bool = False  # resume even though the input or output-shaping options changed
    max_failure_rate: float | None = None
    log_file: Path | None = None

    def __post_init__(self) -> None:
        if self.workers is not None:
            _positive("workers", self.workers)
        if self.max_failure_rate is not None and not 0 <= self.max_failure_rate <= 1:
            raise ValueError("max_failure_rate is a share between 0 and 1 (e.g. 0.05)")
        if self.loops is None or self.loops == 1:
            return
        _positive("loops", self.loops)
        if self.engine != "async":
            raise ValueError(f"loops={self.loops} needs the async engine (not {self.engine!r})")
        if self.image.decodes:
            raise ValueError(
                f"loops={self.loops} is for download-only runs: with size, format or verify"
                " the decode workers already use every core"
            )


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0")


_HTTP_FIELDS = {f.name for f in dataclasses.fields(HttpConfig)}
_IMAGE_FIELDS = {f.name for f in dataclasses.fields(ImageConfig)}
_RUN_FIELDS = {
    "engine",
    "workers",
    "loops",
    "overwrite",
    "retry_failed",
    "retry_all_failed",
    "force",
    "max_failure_rate",
}


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_path(value: object) -> Path | None:
    return None if value is None else Path(str(value))


def parse_size(value: int | str | tuple[int, int]) -> tuple[int, int]:
    """``256`` -> (256, 256); ``"640x480"`` -> (640, 480)."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, int):
        return (value, value)
    text = value.strip().lower()
    w, sep, h = text.partition("x")
    try:
        return (int(w), int(h)) if sep else (int(w), int(w))
    except ValueError:
        raise ValueError(f"bad size {value!r}: use N or WxH") from None


def default_out(source: str) -> Path:
    """The seed tool's convention: ``cats.txt`` downloads into ``./cats/``."""
    if source == "-":
        raise ValueError("reading the list from stdin needs -o/--out")
    return Path.cwd() / (Path(source).stem or "images")


#: What each numeric or boolean option must be (checked before any dataclass sees it, so that
#: ``download(..., concurrency="5")`` is a clear error, not a TypeError deep inside).
_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "int | None": (int, type(None)),
    "float": (int, float),
    "float | None": (int, float, type(None)),
    "bool": (bool,),
}


def _check_kinds(options: dict[str, object]) -> None:
    fields = {
        f.name: str(f.type)
        for cls in (HttpConfig, ImageConfig, InputConfig, OutputConfig, RunConfig)
        for f in dataclasses.fields(cls)
    }
    for name, value in options.items():
        kinds = _KINDS.get(fields.get(name, ""))
        if kinds is None:
            continue
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if wrong_bool or not isinstance(value, kinds):
            what = "true or false" if kinds == (bool,) else "a number"
            raise ValueError(f"{name} must be {what}, not {value!r}")


def build(source: str | Path, out: str | Path | None = None, **options: object) -> RunConfig:
    """Build a RunConfig from flat keyword options (the API's and the CLI's common path).

    Option names are the CLI's long flags with ``_`` for ``-`` (``per_host``,
    ``max_bytes``, ``size``, ``name``...).  Raises ValueError for unknown or bad options.
    """
    opts = dict(options)
    _check_kinds(opts)
    src = str(source)
    input_cfg = InputConfig(
        source=src,
        format=opts.pop("input_format", None),  # type: ignore[arg-type]
        url_col=str(opts.pop("url_col", "url")),
        limit=opts.pop("limit", None),  # type: ignore[arg-type]
    )
    naming = opts.pop("name", "url")
    output = OutputConfig(
        out=Path(out) if out is not None else default_out(src),
        naming=naming if isinstance(naming, Naming) else Naming.parse(str(naming)),
        folder_size=int(opts.pop("folder_size", 10_000)),  # type: ignore[call-overload]
        folder_index=int(opts.pop("folder_index", 0)),  # type: ignore[call-overload]
        format=opts.pop("output_format", "files"),  # type: ignore[arg-type]
        shard_size=int(opts.pop("shard_size", 10_000)),  # type: ignore[call-overload]
        key=opts.pop("key", "index"),  # type: ignore[arg-type]
        caption_col=_optional_str(opts.pop("caption_col", None)),
        write_metadata=bool(opts.pop("write_metadata", False)),
        state_dir=_optional_path(opts.pop("state_dir", None)),
    )
    http_kw = {k: opts.pop(k) for k in list(opts) if k in _HTTP_FIELDS}
    if "headers" in http_kw and isinstance(http_kw["headers"], dict):
        http_kw["headers"] = tuple(http_kw["headers"].items())
    image_kw = {k: opts.pop(k) for k in list(opts) if k in _IMAGE_FIELDS}
    if image_kw.get("size") is not None:
        image_kw["size"] = parse_size(image_kw["size"])  # type: ignore[arg-type]
        image_kw.setdefault("resize", "fit")
    run_kw = {k: opts.pop(k) for k in list(opts) if k in _RUN_FIELDS}
    log_file = opts.pop("log_file", None)
    if opts:
        raise ValueError(f"unknown option(s): {', '.join(sorted(opts))}")
    return RunConfig(
        input=input_cfg,
        output=output,
        http=HttpConfig(**http_kw),  # type: ignore[arg-type]
        image=ImageConfig(**image_kw),  # type: ignore[arg-type]
        log_file=Path(str(log_file)) if log_file is not None else None,
        **run_kw,  # type: ignore[arg-type]
    )
