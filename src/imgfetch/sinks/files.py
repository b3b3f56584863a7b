"""``--output-format files``: images written atomically into numbered folders.

Every file is written to a hidden temporary name in its final folder and
renamed into place only once complete, so a final name never holds a partial
file; a killed run leaves at most ``.imgfetch-*.part`` files, which
:meth:`FileSink.remove_temporaries` deletes on the next start.  Paths are
checked to stay inside the output folder and folders that are symlinks are
refused, so nothing is ever written outside it.

Ownership.  imgfetch only ever deletes files it can prove it wrote.  A fetch
writer's sink (:meth:`FilesOutput.fetch_writer`, one per event loop) appends
one line, ``<inode of the temporary> <relative path>``, to its intent log
``STATE/intents/<writer>.log`` before putting a file in place (opened once
with ``O_APPEND``; one small write per file, no fsync: a kill -9 keeps the
page cache).  On start :func:`imgfetch.records.ledger.reconcile` deletes a
file the ledger does not know only if an intent log claims its path with the
inode it still has; then the logs are emptied (the rows recorded since are in
the ledger).  Any other file is left alone.

The final name is taken with ``link(temporary, final)`` then ``unlink
(temporary)``, which never replaces an existing file (where hard links are
not supported: a check then ``rename``).  A row whose name is already taken
by a file imgfetch did not write (reconcile has removed a killed run's
leftovers, and a done row is only redone once its file has gone, so an
existing file is someone else's) does not overwrite it: the row is recorded
as failed, reason ``write-error``, detail ``a file imgfetch did not write
already has this name: FOLDER/NAME``; ``--retry-failed`` tries it again and
fails the same way while that file is there.  With ``--name hash`` a name is
the content's hash, so an existing file holding exactly the row's bytes is
shared (identical images share one file, as they always have).

Sidecars (``--caption-col``, ``--write-metadata``) and the shard index are
written by sinks without an intent log and replace their target as before.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import secrets
import stat
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from imgfetch.errors import OutputError
from imgfetch.records import ledger as ledgers
from imgfetch.records import shard_records
from imgfetch.sinks.base import Placed

if TYPE_CHECKING:
    from collections.abc import Iterator

    from imgfetch.config import RunConfig
    from imgfetch.outcome import Outcome
    from imgfetch.records.ledger import Ledger

log = logging.getLogger("imgfetch")

TEMP_PREFIX = ".imgfetch-"
TEMP_SUFFIX = ".part"
#: Errors after which no later write can succeed either: stop the run instead of failing every row.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
#: ``link`` errors meaning "this file system has no hard links": fall back to check-then-rename.
_NO_LINKS = frozenset(
    {errno.EPERM, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
)


class NameTaken(FileExistsError):
    """A row's final name is held by a file imgfetch did not write; it is never replaced."""

    def __str__(self) -> str:
        return f"a file imgfetch did not write already has this name: {self.filename}"


def _same_bytes(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(len(data) + 1) == data
    finally:
        os.close(fd)


class FileSink:
    """Writes files atomically below ``root``.

    With an ``intents`` log (the fetch writers) every file is claimed there
    before it is put in place and never replaces an existing file; with
    ``share_identical`` (hash naming) an existing file holding the same bytes
    is shared.  Without one (sidecars, the shard index) the target is replaced.
    """

    def __init__(self, root: Path, intents: Path | None = None, *, share_identical: bool = False) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.root = root.resolve(strict=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder '{root}': {exc.strerror or exc}") from None
        if not self.root.is_dir():
            raise OutputError(f"output path '{root}' is not a folder")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise OutputError(f"output folder '{root}' is not writable")
        #: folder name -> its checked absolute path (as str: cheaper per file than Path).
        self._folders: dict[str, str] = {"": str(self.root)}
        self._tag = secrets.token_hex(4)
        self._counter = itertools.count()
        self._share = share_identical
        self._intents: int | None = None
        if intents is not None:
            try:
                intents.parent.mkdir(parents=True, exist_ok=True)
                self._intents = fd = os.open(intents, _APPEND_FLAGS, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot open the intent log '{intents}': {exc.strerror or exc}") from None
            weakref.finalize(self, os.close, fd)

    def _folder(self, folder: str) -> str:
        known = self._folders.get(folder)
        if known is not None:
            return known
        if "/" in folder or "\\" in folder or folder in (".", "..") or folder.startswith("."):
            raise ValueError(f"unsafe folder name {folder!r}")
        path = self.root / folder if folder else self.root
        with contextlib.suppress(FileExistsError):
            path.mkdir(exist_ok=True)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):  # a symlink or file planted where a folder goes
            raise OutputError(f"'{path}' exists and is not a plain folder")
        self._folders[folder] = known = str(path)
        return known

    def write(self, folder: str, name: str, data: bytes) -> str:
        """Write ``data`` atomically to ``folder/name``; returns the POSIX relative path."""
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
            raise ValueError(f"unsafe file name {name!r}")
        directory = self._folder(folder)
        final = os.path.join(directory, name)
        # Unique without a random draw per file: this sink's random tag and a counter.
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{self._tag}-{next(self._counter)}{TEMP_SUFFIX}")
        rel = f"{folder}/{name}" if folder else name
        intents = self._intents
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                ino = os.fstat(fd).st_ino if intents is not None else 0
            finally:
                os.close(fd)
            if intents is None:
                os.replace(tmp, final)
                return rel
            # The claim comes first: a file in place under this name with this inode is ours.
            os.write(intents, f"{ino} {rel}\n".encode("utf-8", "surrogateescape"))
            try:
                self._place(tmp, final, rel, data)
            except NameTaken:
                os.write(intents, f"-{ino} {rel}\n".encode("utf-8", "surrogateescape"))
                raise
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return rel

    def _place(self, tmp: str, final: str, rel: str, data: bytes) -> None:
        """Give ``tmp`` the name ``final`` unless that name is taken (then :class:`NameTaken`)."""
        try:
            os.link(tmp, final)
        except FileExistsError:
            if not (self._share and _same_bytes(final, data)):
                raise NameTaken(errno.EEXIST, os.strerror(errno.EEXIST), rel) from None
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if os.path.lexists(final):
                if not (self._share and _same_bytes(final, data)):
                    raise NameTaken(errno.EEXIST, os.strerror(errno.EEXIST), rel) from None
            else:
                os.rename(tmp, final)
                return
        os.unlink(tmp)

    def remove(self, rel: str) -> None:
        path = self.resolve(rel)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def resolve(self, rel: str) -> Path | None:
        """The absolute path of a relative path recorded earlier, or None if it would escape."""
        path = (self.root / rel).resolve()
        return path if path.is_relative_to(self.root) and path != self.root else None

    def temporaries(self) -> Iterator[Path]:
        with os.scandir(self.root) as top:
            entries = list(top)
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
                yield Path(entry.path)
            elif entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                with os.scandir(entry.path) as sub:
                    for child in sub:
                        if child.name.startswith(TEMP_PREFIX) and child.name.endswith(TEMP_SUFFIX):
                            yield Path(child.path)

    def remove_temporaries(self) -> int:
        """Delete temporary files a killed run left behind; returns how many."""
        count = 0
        for path in list(self.temporaries()):
            try:
                path.unlink()
                count += 1
            except FileNotFoundError:
                pass
        return count


class FilesOutput:
    """``--output-format files`` on the recording side: images are written by the fetchers
    (:class:`FileSink`, in whichever process fetched them); this adds the sidecars
    (``--caption-col`` -> ``name.txt``, ``--write-metadata`` -> ``name.json``) and, on
    start, reconciles the numbered folders with the ledger."""

    name: ClassVar[str] = "files"

    def __init__(self, cfg: RunConfig, root: Path, state: Path) -> None:
        self.cfg = cfg
        self.files = FileSink(root)
        self.root = self.files.root
        self._caption = cfg.output.caption_col
        self._metadata = cfg.output.write_metadata

    @classmethod
    def fetch_writer(cls, cfg: RunConfig, root: Path, writer: int) -> FileSink:
        """Event loop ``writer``'s sink: it claims each file in its intent log first."""
        state = cfg.output.state
        return FileSink(
            root, ledgers.intent_log(state, writer), share_identical=cfg.output.naming.kind == "hash"
        )

    def locate(self, index: int, folder: str, stem: str | None) -> tuple[str, str | None]:
        return folder, stem

    def open(self, ledger: Ledger) -> None:
        """Delete leftovers of a killed run (files its intent logs claim, unrecorded), forget
        ok rows whose file has gone, then empty the intent logs."""
        self.files.remove_temporaries()
        state = ledger.state
        if ledger.is_empty() and not ledgers.has_intents(state):
            return
        include_root = self.cfg.output.folder_size == 0 or root_layout(ledger)
        done = ledgers.reconcile(ledger, include_root=include_root)
        ledgers.clear_intents(state)
        if done.removed or done.forgotten:
            log.warning(
                "resume: deleted %d files an interrupted run had written but not recorded; "
                "%d done rows lost their file and will be done again",
                done.removed,
                done.forgotten,
            )
        if done.kept:
            log.info(
                "resume: left %d files in the image folders alone: the ledger does not know them "
                "and imgfetch did not write them",
                done.kept,
            )

    def add(self, outcome: Outcome) -> Placed:
        if outcome.path is not None and (self._caption is not None or self._metadata):
            folder, _, name = outcome.path.rpartition("/")
            stem = name.rpartition(".")[0] or name
            if self._caption is not None:
                self.files.write(
                    folder,
                    stem + ".txt",
                    shard_records.caption(outcome, self._caption).encode("utf-8", "surrogateescape"),
                )
            if self._metadata:
                meta = json.dumps(shard_records.sample_metadata(outcome), ensure_ascii=False)
                self.files.write(folder, stem + ".json", meta.encode("utf-8"))
        return Placed(outcome)

    def skipped(self, index: int) -> None:
        pass

    def end_of_input(self, rows: int) -> None:
        pass

    def ready(self) -> list[int]:
        return []

    def finish(self) -> list[int]:
        return []

    async def commit(self, shard: int, ledger: Ledger) -> None:
        raise AssertionError("the files format has no shards")

    def close(self) -> None:
        pass


def root_layout(ledger: Ledger) -> bool:
    """True when the ledger's last run wrote images straight into the output folder."""
    old = ledger.get_json("options")
    return isinstance(old, dict) and old.get("folder-size") == 0
