"""Streaming http(s) downloads into a local cache, verified by SHA-256.

Datasets are large, so bodies are streamed to a temporary file and renamed into place only
once complete and verified: a crash or a bad transfer never leaves a file that looks valid.
A `<file>.sha256` sidecar records the hash so later runs can trust the cache offline.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import requests
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

CHUNK_SIZE = 1 << 20
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class DownloadError(RuntimeError):
    """Names the URL and the reason (HTTP status, connection, checksum, truncation).

    Pipelines log only the message, so it alone must say what to fix.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"download of {url} failed: {reason}")
        self.url = url
        self.reason = reason


def is_url(source: str) -> bool:
    """Tell remote sources from local paths; only http(s) is supported for downloading."""
    parsed = urlparse(source)
    return parsed.scheme.lower() in {"http", "https"} and bool(parsed.netloc)


def cache_path(url: str, cache_dir: Path) -> Path:
    """Prefix the readable basename with a URL hash so different URLs never share a file."""
    basename = _UNSAFE_NAME_CHARS.sub("_", unquote(Path(urlparse(url).path).name))[-100:]
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"{digest}-{basename or 'download'}"


def fetch(
    url: str,
    cache_dir: Path,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return a local copy of url, downloading only when the cache lacks a verified one.

    The cached copy is re-hashed on every call, so corruption or a changed `sha256`
    triggers a fresh download instead of silently feeding bad data downstream.
    """
    if not is_url(url):
        raise ValueError(f"not an http(s) URL: {url!r}")
    expected = sha256.strip().lower() if sha256 is not None else None
    if expected is not None and not _SHA256_PATTERN.fullmatch(expected):
        raise ValueError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}")

    target = cache_path(url, Path(cache_dir))
    sidecar = target.with_name(target.name + ".sha256")
    if _cached_copy_is_valid(target, sidecar, expected):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    partial = Path(partial_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            actual = _stream(url, handle, timeout, progress, label=target.name)
        if expected is not None and actual != expected:
            raise DownloadError(url, f"checksum mismatch: expected sha256 {expected}, got {actual}")
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _write_atomically(sidecar, f"{actual}  {target.name}\n")
    return target


def _cached_copy_is_valid(target: Path, sidecar: Path, expected: str | None) -> bool:
    """Re-hash the cached file: a sidecar alone cannot reveal later corruption or truncation."""
    if not (target.is_file() and sidecar.is_file()):
        return False
    fields = sidecar.read_text(encoding="utf-8").split()
    recorded = fields[0].lower() if fields else ""
    if expected is not None and recorded != expected:
        return False
    return _file_sha256(target) == recorded


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(url: str, handle: BinaryIO, timeout: float, progress: bool, label: str) -> str:
    """Write the body to handle chunk by chunk and return its SHA-256 hex digest."""
    try:
        # identity encoding keeps Content-Length comparable with the bytes we receive.
        response = requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"})
    except requests.RequestException as error:
        raise DownloadError(url, f"connection error: {error}") from error

    with response:
        if not response.ok:
            raise DownloadError(url, f"HTTP {response.status_code} {response.reason}")
        length_header = response.headers.get("Content-Length")
        expected_bytes = (
            int(length_header)
            if length_header and length_header.isdigit() and "Content-Encoding" not in response.headers
            else None
        )
        # urllib3 would raise on a short body but drop its last partial chunk; counting
        # ourselves gives the exact "got X of Y" that helps diagnose a flaky mirror.
        response.raw.enforce_content_length = False
        digest = hashlib.sha256()
        received = 0
        with _progress_bar(progress, label, expected_bytes) as advance:
            try:
                for chunk in response.iter_content(chunk_size=CHUNK_SIZE):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            except requests.RequestException as error:
                raise DownloadError(url, f"connection error after {received} bytes: {error}") from error
    if expected_bytes is not None and received < expected_bytes:
        raise DownloadError(url, f"truncated: got {received} of {expected_bytes} bytes")
    return digest.hexdigest()


@contextmanager
def _progress_bar(enabled: bool, label: str, total: int | None) -> Iterator[Callable[[int], object]]:
    """Yield a callback advancing a Rich bar by n bytes (a no-op when disabled)."""
    if not enabled:
        yield lambda _n: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task: TaskID = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
