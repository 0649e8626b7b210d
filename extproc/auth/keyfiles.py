"""Keys kept in files and read again when a file changes (a Kubernetes Secret volume is updated in place):
the Azure key file's provider and the client keys' files share this (extproc/auth/upstream.py, client.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class CredentialError(Exception):
    """A credential cannot be loaded (the message says where from, never what it holds)."""


def read_key_file(path: Path, label: str = "api_key_file") -> str | None:
    """The key in the file (surrounding whitespace removed), None when it is empty."""
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        raise CredentialError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{label}: {path} is not UTF-8 text") from None


def file_stamp(path: Path) -> tuple[int, ...]:
    """What changes when the file does (its identity, size or times); () when there is no file. The stat follows
    the ..data symlink a Secret volume swaps."""
    try:
        stat = os.stat(path)
    except OSError:
        return ()
    return (stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class KeyFile:
    """A key read from a file when built and again by `refresh()` when the file has changed. Once a key is
    loaded, a file that becomes missing, unreadable or empty keeps it (logged once per state of the file): a
    Secret being rewritten must not fail requests. `strict` (at start) raises CredentialError instead."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self.key: str | None = None
        self._stamp: tuple[int, ...] | None = None
        self.refresh(strict=True)

    def refresh(self, *, strict: bool = False) -> bool:
        """Re-read the file if it changed; True when that gave a new key."""
        stamp = file_stamp(self.path)  # a missing file: reported once, until it changes again
        if stamp == self._stamp:
            return False
        try:
            if not stamp:
                raise CredentialError(f"{self.label}: cannot read {self.path}: No such file or directory")
            key = read_key_file(self.path, self.label)
            if key is None:
                raise CredentialError(f"{self.label}: {self.path} is empty")
        except CredentialError as problem:
            if strict:
                raise
            log.error("%s; keeping the key read before", problem)
            self._stamp = stamp
            return False
        if self._stamp is not None:
            log.info("%s: %s changed; using the new key", self.label, self.path)
        self._stamp = stamp
        changed, self.key = key != self.key, key
        return changed
