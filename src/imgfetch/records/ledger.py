"""The resume ledger: each input row's final outcome, in SQLite, mirrored to the manifest.

The only module that imports :mod:`sqlite3`.  ``OUT/.imgfetch/ledger.sqlite``
(WAL, ``synchronous=NORMAL``: a killed process loses nothing committed, a
power cut at most the last moments) holds

* ``outcomes(row PRIMARY KEY, status, reason, folder, name, record, shard, writer,
  sample_end, image_offset)``: one row per finished input row; ``record`` is the
  manifest line (JSON), ``folder`` and ``name`` locate the saved file of the
  ``files`` format (NULL when there is none); ``shard`` is the shard a row of a
  shard format belongs to, and for a row with a sample ``writer`` is the event
  loop whose staging log holds it, ``sample_end`` where the sample ends in that
  log (how a resume cuts a log back to the samples the ledger knows) and
  ``image_offset`` where the image's bytes start in it (:mod:`imgfetch.sinks.shards`);
* ``shards(shard PRIMARY KEY, kind, state, started, finished, nsamples, filesize)``:
  the shards of a shard format, ``open`` (being filled in staging), ``sealed``
  (complete in staging, being published) or ``committed`` (in the output);
* ``meta(key PRIMARY KEY, value)``: the input fingerprint and output-shaping
  options of the last run, and what the manifest should hold.

The ledger lives in the *state folder* (``--state-dir``, by default
``OUT/.imgfetch``), apart from the destination: a destination may be shared or
remote, the state is this machine's.

The index ``outcomes_status(row, status, reason)`` covers the resume scan and
``count(*)``, which would otherwise walk every stored JSON record (about half
a gigabyte per million rows); ``outcomes_file(folder, name)`` serves the
reconciliation, one folder at a time.

Write order, and what a crash can leave behind:

1. an image is written to a temporary and renamed into place when complete;
2. its outcome joins an in-memory batch; a batch is committed in one
   transaction, which also advances ``manifest_bytes`` / ``manifest_lines`` in
   ``meta`` to what the manifest will hold once the batch is appended;
3. the batch's lines are appended to ``manifest.jsonl``.

Step 1 is preceded by a claim in the writer's intent log
(``STATE/intents/<writer>.log``: the temporary's inode and the final path),
and the rename never replaces an existing file.

So after a kill there may be (a) temporaries, (b) final files whose rows are
not in the ledger (renamed, not yet committed), (c) committed rows missing from
the manifest.  On start the run deletes (a), :func:`reconcile` deletes (b),
the files an intent log claims with their inode (any other file is left
alone), and
forgets ok rows whose file has gone, and :meth:`Ledger.manifest_consistent`
spots (c) in O(1) (size and line count against ``meta``) so the manifest is
rewritten from the ledger, in row order, atomically.

Everything is streamed or paged: the resume scan reads the ledger one block
of rows at a time (:meth:`Ledger.final_rows`), listings and the manifest
rewrite page through it :data:`PAGE` rows at a time, files are reconciled
folder by folder, so memory stays bounded by the folder size however long the
list is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from imgfetch.errors import InputError, OutputError
from imgfetch.naming import EXTENSIONS, UNKNOWN_EXTENSION
from imgfetch.records.manifest import Manifest

if TYPE_CHECKING:
    from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
    from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, one run per folder is the user's job
    fcntl = None  # type: ignore[assignment]

LEDGER_DIR = ".imgfetch"
LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = "lock"
SCHEMA = "2"
#: Older schemas this version upgrades in place (columns added, nothing rewritten).
_UPGRADES = {
    "1": (
        "ALTER TABLE outcomes ADD COLUMN shard INTEGER",
        "ALTER TABLE outcomes ADD COLUMN writer INTEGER",
        "ALTER TABLE outcomes ADD COLUMN sample_end INTEGER",
        "ALTER TABLE outcomes ADD COLUMN image_offset INTEGER",
    )
}
#: Rows per keyset page when streaming the ledger.
PAGE = 10_000
_CHUNK = 1 << 20
#: File names imgfetch writes; only such files are ever deleted as leftovers.
IMAGE_SUFFIXES = frozenset(EXTENSIONS.values()) | {UNKNOWN_EXTENSION}

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS outcomes(
    row INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    reason TEXT,
    folder TEXT,
    name TEXT,
    record TEXT NOT NULL,
    shard INTEGER,
    writer INTEGER,
    sample_end INTEGER,
    image_offset INTEGER
);
CREATE INDEX IF NOT EXISTS outcomes_file ON outcomes(folder, name) WHERE name IS NOT NULL;
CREATE INDEX IF NOT EXISTS outcomes_status ON outcomes(row, status, reason);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards(
    shard INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL,
    finished REAL,
    nsamples INTEGER,
    filesize INTEGER
);
"""
# Created after an upgrade has added the column it covers.
_SHARD_INDEX_SQL = "CREATE INDEX IF NOT EXISTS outcomes_shard ON outcomes(shard, row) WHERE shard IS NOT NULL"


_UPSERT = (
    "INSERT OR REPLACE INTO outcomes(row, status, reason, folder, name, record, shard, writer, sample_end,"
    " image_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class Redo(NamedTuple):
    """Which failed rows a run does again: all of them, or those failed for one of ``reasons``."""

    all_failed: bool = False
    reasons: tuple[str | None, ...] = ()

    def condition(self) -> tuple[str, tuple[str | None, ...]]:
        """An SQL condition true for the rows that stay final, and its parameters."""
        if self.all_failed:
            return "status != 'failed'", ()
        if not self.reasons:
            return "1", ()
        marks = ", ".join("?" * len(self.reasons))
        return f"NOT (status = 'failed' AND reason IN ({marks}))", self.reasons


class Entry(NamedTuple):
    """One row's final outcome as the ledger stores it; ``line`` is the manifest line."""

    row: int
    status: str
    reason: str | None
    folder: str | None
    name: str | None
    line: str
    shard: int | None = None
    writer: int | None = None
    end: int | None = None
    offset: int | None = None


class Sample(NamedTuple):
    """Where a row's sample is in its shard's staging logs."""

    row: int
    writer: int
    end: int
    offset: int


class ShardState(NamedTuple):
    """One shard as the ledger knows it (see the ``shards`` table)."""

    shard: int
    kind: str  # "base": rows [k*N, (k+1)*N); "patch": rows redone after their shard was committed
    state: str  # "open", "sealed" or "committed"
    started: float | None
    finished: float | None
    nsamples: int | None
    filesize: int | None


def ledger_path(state: Path) -> Path:
    """The ledger file of the state folder ``state``."""
    return state / LEDGER_FILE


def exists(state: Path) -> bool:
    return ledger_path(state).is_file()


def _output_error(what: str, exc: BaseException) -> OutputError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return OutputError(f"cannot {what}: {why}")


class Ledger:
    """An open ledger plus its manifest mirror.  Single-threaded: use it from the event loop only.

    Opening takes an exclusive lock on ``STATE/lock`` (released by the OS even
    when the process is killed), so two runs never share a state folder.
    ``root`` is the output folder, ``state`` the state folder (made if missing).
    """

    def __init__(self, root: Path, manifest: Path, state: Path | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self._mirror = Manifest(manifest)
        self.state = state = root / LEDGER_DIR if state is None else state
        folder = state
        self._lock: IO[bytes] | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._take_lock(folder / LOCK_FILE)
            self._db = sqlite3.connect(ledger_path(state), isolation_level=None, check_same_thread=True)
        except (OSError, sqlite3.Error) as exc:
            self._release_lock()
            raise _output_error(f"open the resume ledger in '{folder}'", exc) from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA_SQL)
            schema = self.get("schema")
            if schema in _UPGRADES:
                with self._transaction():
                    for statement in _UPGRADES[schema]:
                        self._db.execute(statement)
                schema = None
            if schema is None:
                self.put({"schema": SCHEMA})
            elif schema != SCHEMA:
                raise OutputError(
                    f"the resume ledger in '{folder}' has schema {schema}, this imgfetch reads {SCHEMA}",
                    hint="use --overwrite to start afresh",
                )
            self._db.execute(_SHARD_INDEX_SQL)
        except sqlite3.Error as exc:
            self.close()
            raise _output_error(f"use the resume ledger in '{folder}'", exc) from None
        except OutputError:
            self.close()
            raise

    def _take_lock(self, path: Path) -> None:
        if fcntl is None:
            return
        self._lock = open(path, "ab")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._release_lock()
            raise OutputError(
                f"another imgfetch is writing to '{self.root}'", hint="wait for it or use another -o/--out"
            ) from None

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def close(self) -> None:
        self._mirror.close()
        with contextlib.suppress(sqlite3.Error, AttributeError):
            self._db.close()
        self._release_lock()

    # ---- meta -------------------------------------------------------------
    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def get_json(self, key: str) -> Any:
        text = self.get(key)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def put(self, items: Mapping[str, str]) -> None:
        try:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", items.items())
        except sqlite3.Error as exc:
            raise _output_error("write the resume ledger", exc) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- rows -------------------------------------------------------------
    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outcomes INDEXED BY outcomes_status").fetchone()[0])

    def is_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM outcomes LIMIT 1").fetchone() is None

    def record(self, entries: Sequence[Entry]) -> None:
        """Commit ``entries`` (replacing earlier outcomes of the same rows), then append them
        to the manifest.  Raises :class:`OutputError` when either cannot be written."""
        if not entries:
            return
        data = ("\n".join(e.line for e in entries) + "\n").encode("utf-8")
        try:
            with self._transaction():
                self._db.executemany(_UPSERT, entries)
                self._advance_manifest(len(data), len(entries))
        except sqlite3.Error as exc:
            raise _output_error("write the resume ledger", exc) from None
        try:
            self._mirror.append(data)
        except OSError as exc:
            # The ledger has the rows; the next start sees the size mismatch and rewrites the manifest.
            raise _output_error(f"write the manifest '{self.manifest}'", exc) from None

    def _advance_manifest(self, nbytes: int, nlines: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES ('manifest_bytes', ?), ('manifest_lines', ?)"
            " ON CONFLICT(key) DO UPDATE"
            " SET value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)",
            (str(nbytes), str(nlines)),
        )

    def insert_only(self, entries: Sequence[Entry]) -> None:
        """Store ``entries`` without touching the manifest (importing a manifest)."""
        try:
            with self._transaction():
                self._db.executemany(_UPSERT, entries)
        except sqlite3.Error as exc:
            raise _output_error("write the resume ledger", exc) from None

    def forget(self, rows: Sequence[int]) -> None:
        """Drop the outcomes of ``rows`` so the next pass does them again."""
        if not rows:
            return
        try:
            with self._transaction():
                self._db.executemany("DELETE FROM outcomes WHERE row = ?", ((r,) for r in rows))
        except sqlite3.Error as exc:
            raise _output_error("write the resume ledger", exc) from None

    def statuses(self, start: int = 0) -> Iterator[tuple[int, str, str | None]]:
        """``(row, status, reason)`` in row order from ``start``, one short query per page.

        Keyset pages (not one long cursor) so that the run can commit between
        pages and the WAL can be checkpointed; rows committed meanwhile behind
        the reader's position are simply not seen, which is what the reader wants.
        """
        last = start - 1
        while True:
            page = self._db.execute(
                "SELECT row, status, reason FROM outcomes INDEXED BY outcomes_status"
                " WHERE row > ? ORDER BY row LIMIT ?",
                (last, PAGE),
            ).fetchall()
            yield from page
            if len(page) < PAGE:
                return
            last = page[-1][0]

    def failed_reasons(self) -> list[str | None]:
        """The distinct reasons of failed rows (a handful; one scan of the status index)."""
        sql = "SELECT DISTINCT reason FROM outcomes INDEXED BY outcomes_status WHERE status = 'failed'"
        return [reason for (reason,) in self._db.execute(sql)]

    def final_rows(self, lo: int, hi: int, redo: Redo) -> set[int] | None:
        """The rows in ``[lo, hi)`` held as final, i.e. not to be done again under ``redo``;
        None when all of them are (a finished block, answered by one count on the index)."""
        cond, params = redo.condition()
        sql = f"FROM outcomes INDEXED BY outcomes_status WHERE row >= ? AND row < ? AND {cond}"
        (count,) = self._db.execute(f"SELECT count(*) {sql}", (lo, hi, *params)).fetchone()
        if count == hi - lo:
            return None
        if count == 0:
            return set()
        return {row for (row,) in self._db.execute(f"SELECT row {sql}", (lo, hi, *params))}

    def lines(self) -> Iterator[str]:
        """Every stored manifest line, in row order (paged)."""
        last = -1
        while True:
            page = self._db.execute(
                "SELECT row, record FROM outcomes WHERE row > ? ORDER BY row LIMIT ?", (last, PAGE)
            ).fetchall()
            for _row, line in page:
                yield line
            if len(page) < PAGE:
                return
            last = page[-1][0]

    def folders(self) -> Iterator[str]:
        """Folders holding at least one recorded file (``""`` is the output folder itself)."""
        found = self._db.execute("SELECT min(folder) FROM outcomes WHERE name IS NOT NULL").fetchone()[0]
        while found is not None:
            yield str(found)
            found = self._db.execute(
                "SELECT min(folder) FROM outcomes WHERE name IS NOT NULL AND folder > ?", (found,)
            ).fetchone()[0]

    def names_in(self, folder: str) -> set[str]:
        """The recorded file names of ``folder``."""
        cursor = self._db.execute(
            "SELECT name FROM outcomes WHERE folder = ? AND name IS NOT NULL", (folder,)
        )
        return {name for (name,) in cursor}

    def rows_of(self, folder: str, names: Iterable[str]) -> list[int]:
        """The rows whose file is ``folder/name`` for one of ``names`` (hash naming may share one)."""
        rows: list[int] = []
        for name in names:
            cursor = self._db.execute(
                "SELECT row FROM outcomes WHERE folder = ? AND name = ? AND name IS NOT NULL", (folder, name)
            )
            rows.extend(row for (row,) in cursor)
        return rows

    # ---- shards -------------------------------------------------------------
    def shards(self) -> list[ShardState]:
        """Every shard the ledger knows, by number (a few per 10,000 rows)."""
        cursor = self._db.execute(
            "SELECT shard, kind, state, started, finished, nsamples, filesize FROM shards ORDER BY shard"
        )
        return [ShardState(*row) for row in cursor]

    def put_shard(self, shard: ShardState) -> None:
        try:
            with self._transaction():
                self._db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?)", shard)
        except sqlite3.Error as exc:
            raise _output_error("write the resume ledger", exc) from None

    def drop_shard(self, shard: int) -> None:
        try:
            with self._transaction():
                self._db.execute("DELETE FROM shards WHERE shard = ?", (shard,))
        except sqlite3.Error as exc:
            raise _output_error("write the resume ledger", exc) from None

    def samples(self, shard: int) -> list[Sample]:
        """The samples of ``shard`` in its staging logs, by writer and end."""
        cursor = self._db.execute(
            "SELECT row, writer, sample_end, image_offset FROM outcomes INDEXED BY outcomes_shard"
            " WHERE shard = ? AND sample_end IS NOT NULL ORDER BY writer, sample_end",
            (shard,),
        )
        return [Sample(*row) for row in cursor]

    def shard_lines(self, shard: int) -> list[str]:
        """The manifest lines of the rows of ``shard``, in row order (one shard: bounded)."""
        cursor = self._db.execute(
            "SELECT record FROM outcomes INDEXED BY outcomes_shard WHERE shard = ? ORDER BY row", (shard,)
        )
        return [line for (line,) in cursor]

    def shard_rows(self, shard: int) -> list[tuple[str, Sample | None]]:
        """Each row of ``shard`` in row order: its manifest line and where its sample is."""
        cursor = self._db.execute(
            "SELECT record, row, writer, sample_end, image_offset FROM outcomes INDEXED BY outcomes_shard"
            " WHERE shard = ? ORDER BY row",
            (shard,),
        )
        return [
            (line, None if end is None else Sample(row, w, end, off)) for line, row, w, end, off in cursor
        ]

    def max_row(self) -> int:
        """The highest row the ledger holds, or -1."""
        (top,) = self._db.execute("SELECT max(row) FROM outcomes").fetchone()
        return -1 if top is None else int(top)

    # ---- manifest ---------------------------------------------------------
    def manifest_consistent(self) -> bool:
        """True when the manifest holds exactly the ledger's rows, once each.

        Byte size and line count are checked against what ``meta`` says was
        appended, and the line count against the ledger: a kill between commit
        and append, a cut line, a deleted manifest or records replaced by a
        retry (which leave the older line behind) all make this False.
        """
        size = self._mirror.size()
        expected = int(self.get("manifest_bytes") or 0)
        lines = int(self.get("manifest_lines") or 0)
        return size == expected and lines == self.count()

    def rewrite_manifest(self) -> None:
        """Write the manifest afresh from the ledger, in row order, atomically."""
        try:
            nbytes, nlines = self._mirror.rewrite(self.lines())
        except OSError as exc:
            raise _output_error(f"rewrite the manifest '{self.manifest}'", exc) from None
        self.put({"manifest_bytes": str(nbytes), "manifest_lines": str(nlines)})


# ---- files on disk ---------------------------------------------------------


def is_image_folder_name(name: str) -> bool:
    """Numbered sub-folders (``00000``, ``00001`` ...) are imgfetch's own."""
    return len(name) >= 5 and name.isascii() and name.isdigit()


def _listdir(directory: Path) -> set[str]:
    try:
        return set(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _ours(directory: Path, name: str) -> bool:
    """True if ``name`` could be a file imgfetch wrote: not hidden, an image extension, a regular file."""
    if name.startswith("."):
        return False
    dot = name.rfind(".")
    if dot <= 0 or name[dot:] not in IMAGE_SUFFIXES:
        return False
    try:
        return stat.S_ISREG(os.lstat(directory / name).st_mode)
    except OSError:
        return False


def _numbered_folders(root: Path) -> list[str]:
    with os.scandir(root) as it:
        return sorted(e.name for e in it if is_image_folder_name(e.name) and e.is_dir(follow_symlinks=False))


class Reconciled(NamedTuple):
    removed: int  # files a killed run renamed into place (claimed in an intent log) but never recorded
    forgotten: int  # ok rows whose file had gone, dropped from the ledger
    kept: int = 0  # files in the image folders the ledger does not know and no run claimed: left alone


# ---- intent logs: which files imgfetch wrote ---------------------------------------
#: ``STATE/intents/<writer>.log``: one line ``<inode> <relative path>`` per image a fetch
#: writer is about to put in place (written before the rename; see :mod:`imgfetch.sinks.files`),
#: and ``-<inode> <relative path>`` when that name turned out to be taken (the claim is withdrawn,
#: so a later file that happens to reuse the inode number is not mistaken for ours).
INTENTS_DIR = "intents"


def intent_log(state: Path, writer: int) -> Path:
    """The intent log of event loop ``writer`` (0: the pipeline's own)."""
    return state / INTENTS_DIR / f"{writer}.log"


def _intent_logs(state: Path) -> list[Path]:
    folder = state / INTENTS_DIR
    return sorted(folder / n for n in _listdir(folder) if n.endswith(".log"))


def has_intents(state: Path) -> bool:
    """True when some intent log holds a claim."""
    for path in _intent_logs(state):
        with contextlib.suppress(OSError):
            if path.stat().st_size:
                return True
    return False


class Claim(NamedTuple):
    """One intent-log line: ``ino rel`` claims a file, ``-ino rel`` withdraws that claim."""

    ino: int
    rel: str
    withdrawn: bool = False


def claims(state: Path) -> Iterator[Claim]:
    """Every line of the intent logs (streamed; a line cut by a kill is skipped)."""
    for path in _intent_logs(state):
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            continue
        with fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    continue  # cut by a kill mid-write: that file was not renamed yet
                ino, _, rel = line[:-1].partition(b" ")
                withdrawn = ino.startswith(b"-")
                ino = ino[1:] if withdrawn else ino
                if ino.isdigit() and rel:
                    yield Claim(int(ino), rel.decode("utf-8", "surrogateescape"), withdrawn)


def proven(state: Path, paths: Container[str]) -> dict[str, set[int]]:
    """Of ``paths``, those the intent logs claim: path -> the inodes claimed and not withdrawn."""
    claimed: dict[str, set[int]] = {}
    withdrawn: set[tuple[str, int]] = set()
    for claim in claims(state):
        if claim.rel in paths:
            if claim.withdrawn:
                withdrawn.add((claim.rel, claim.ino))
            else:
                claimed.setdefault(claim.rel, set()).add(claim.ino)
    for rel, ino in withdrawn:
        claimed.get(rel, set()).discard(ino)
    return claimed


def clear_intents(state: Path) -> None:
    """Empty the intent logs once :func:`reconcile` has used them (in place: loop processes
    already hold them open for appending)."""
    for path in _intent_logs(state):
        with contextlib.suppress(OSError):
            os.truncate(path, 0)


def reconcile(ledger: Ledger, *, include_root: bool) -> Reconciled:
    """Make the files on disk and the ledger agree, one folder at a time.

    A file the ledger does not know is deleted only when imgfetch can prove it
    wrote it: its path is claimed in an intent log (``STATE/intents``) with the
    inode the file still has.  That is a file a run killed before it could
    commit the row renamed into place; the row is not done, so it is fetched
    again under the same deterministic name.  Every other unknown file (the
    user's own, or anything no run claimed) is left alone and counted as
    ``kept``.  An ok row whose file has gone is forgotten, so it is fetched again.

    Only regular, non-hidden files with an image extension imgfetch uses, in
    its numbered sub-folders (and in the output folder itself only when
    ``include_root``, i.e. with ``--folder-size 0``, or when the ledger records
    files there) are considered at all.  Memory: one folder's names at a time,
    plus the unknown files (normally none or a handful) while the intent logs
    are streamed.
    """
    root = ledger.root
    forgotten = 0
    unknown: dict[str, tuple[Path, str]] = {}

    def collect(folder: str, directory: Path, names: Iterable[str]) -> None:
        for name in names:
            if _ours(directory, name):
                unknown[f"{folder}/{name}" if folder else name] = (directory, name)

    seen: set[str] = set()
    for folder in ledger.folders():
        seen.add(folder)
        if folder and not is_image_folder_name(folder):
            continue  # a layout this version does not write: leave it alone
        directory = root / folder if folder else root
        known = ledger.names_in(folder)
        # Set differences first: the per-file checks only run on the (few) differences.
        present = _listdir(directory)
        collect(folder, directory, present - known)
        missing = ledger.rows_of(folder, known - present)
        ledger.forget(missing)
        forgotten += len(missing)
    folders = [f for f in _numbered_folders(root) if f not in seen]
    if include_root and "" not in seen:
        folders.append("")
    for folder in folders:
        directory = root / folder if folder else root
        collect(folder, directory, _listdir(directory))
    removed = 0
    for rel, inodes in (proven(ledger.state, unknown) if unknown else {}).items():
        directory, name = unknown[rel]
        path = directory / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_ino not in inodes or not stat.S_ISREG(st.st_mode):
            continue  # another file has the name now (e.g. the user's): not ours
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
        del unknown[rel]
    return Reconciled(removed, forgotten, len(unknown))


def _delete(root: Path, folder: str, names: Iterable[str]) -> int:
    directory = root / folder if folder else root
    count = 0
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
            count += 1
    return count


def wipe(root: Path, manifest: Path, ledger: Ledger | None, *, include_root: bool) -> int:
    """``--overwrite``: delete what the previous run in ``root`` made; returns the files deleted.

    With the previous run's ``ledger`` (closed here): every file it records
    (and the ``.txt`` / ``.json`` sidecars beside them when that run wrote
    them: ``--caption-col``, ``--write-metadata``), the leftovers
    :func:`reconcile` would delete (files an intent log proves a killed run
    wrote), numbered folders left empty, and the ledger itself; the intent logs
    are emptied.  Always: the manifest and ``summary.json``.  Nothing else: a
    file imgfetch did not write stays (a row never replaces such a file, see
    :mod:`imgfetch.sinks.files`, so it is never recorded either).
    """
    removed = 0
    if ledger is not None:
        try:
            old = ledger.get_json("options")
            sidecars = [
                suffix
                for option, suffix in (("caption-col", ".txt"), ("write-metadata", ".json"))
                if isinstance(old, dict) and old.get(option)
            ]
            removed += reconcile(ledger, include_root=include_root).removed
            clear_intents(ledger.state)
            for folder in list(ledger.folders()):
                names = ledger.names_in(folder)
                removed += _delete(root, folder, names)
                stems = {name.rpartition(".")[0] or name for name in names}
                removed += _delete(root, folder, [stem + s for stem in stems for s in sidecars])
        finally:
            ledger.close()
        for folder in _numbered_folders(root):
            with contextlib.suppress(OSError):
                (root / folder).rmdir()  # only succeeds when empty
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                ledger_path(ledger.state).with_name(LEDGER_FILE + suffix).unlink()
    for path in (manifest, root / "summary.json"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


# ---- what the previous run was ------------------------------------------------


class Fingerprint(NamedTuple):
    """The input's identity: where it was, its size and SHA-256 (``source`` ``stdin``: unknown)."""

    source: str
    size: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps(self._asdict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, value: Any) -> Fingerprint | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(str(value["source"]), int(value["size"]), str(value["sha256"]))
        except (KeyError, TypeError, ValueError):
            return None


UNKNOWN_SOURCE = Fingerprint("stdin", -1, "")


def compare_input(path: Path, old: Fingerprint | None) -> tuple[Fingerprint, str | None]:
    """Hash the input at ``path``; return its fingerprint and why it differs from ``old`` (or None).

    A list that only grew (the old bytes are a prefix of the new ones, and
    the old last row was not extended) resumes fine: row indexes of the old
    rows are unchanged.
    One streaming pass; the old prefix's digest is taken on the way.
    """
    sha = hashlib.sha256()
    prefix: str | None = None
    last = following = b""  # the old content's last byte, and the byte after it now
    size = 0
    old_size = old.size if old is not None else -1
    try:
        with open(path, "rb") as fh:
            if old is not None and old_size >= 0:
                remaining = old_size
                while remaining > 0 and (block := fh.read(min(_CHUNK, remaining))):
                    sha.update(block)
                    size += len(block)
                    remaining -= len(block)
                    last = block[-1:]
                if remaining == 0:
                    prefix = sha.hexdigest()
            while block := fh.read(_CHUNK):
                if size == old_size:
                    following = block[:1]
                sha.update(block)
                size += len(block)
    except OSError as exc:
        raise InputError(f"cannot read input '{path}': {exc.strerror or exc}") from None
    now = Fingerprint(str(path.resolve()), size, sha.hexdigest())
    if old is None or old.source == UNKNOWN_SOURCE.source:
        return now, None
    if old.size == now.size and old.sha256 == now.sha256:
        return now, None
    name = path.name
    if old.size > now.size:
        why = f"the input list changed since the last run ({name} is shorter than before)"
    elif prefix != old.sha256:
        why = f"the input list changed since the last run ({name} differs in its first {old.size:,} bytes)"
    elif old.size > 0 and last != b"\n" and following not in (b"\n", b"\r"):
        why = f"the input list changed since the last run (its last row, in {name}, was extended)"
    else:
        return now, None
    if old.source != now.source:
        why += f"; the last run read {old.source}"
    return now, why


def compare_options(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str | None:
    """A one-line account of the output-shaping options that differ, or None."""
    if old is None:
        return None
    changes = [
        f"{key} {_show(old.get(key))} -> {_show(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if not changes:
        return None
    return "options that shape the output changed since the last run: " + ", ".join(changes)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
