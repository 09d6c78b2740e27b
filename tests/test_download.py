"""Downloads against a real HTTP server on 127.0.0.1: no mocks, real sockets and headers."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cd4ml.data.download import DownloadError, cache_path, fetch, is_url

# Several 1 MiB chunks plus a remainder, so streaming crosses chunk boundaries.
BODY = os.urandom(3 * 2**20 + 123)
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


@dataclass
class Server:
    base_url: str
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture
def server() -> Iterator[Server]:
    """Serve /data.csv, /boom (500), /truncated (Content-Length larger than the body); 404 else."""
    state = Server(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path == "/data.csv":
                self._reply(200, BODY, declared_length=len(BODY))
            elif self.path == "/boom":
                self._reply(500, b"boom", declared_length=4)
            elif self.path == "/truncated":
                # HTTP/1.0: the connection closes after the short body.
                self._reply(200, BODY[:1000], declared_length=5000)
            else:
                self.send_error(404)

        def _reply(self, status: int, body: bytes, declared_length: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(declared_length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_fetch_downloads_once_then_reuses_the_cache_without_network(server: Server, tmp_path: Path) -> None:
    url = server.url("/data.csv")
    first = fetch(url, tmp_path, progress=False)

    assert first.read_bytes() == BODY
    assert first.name.endswith("-data.csv")
    sidecar = first.with_name(first.name + ".sha256")
    assert sidecar.read_text().split()[0] == BODY_SHA256
    assert server.requests == ["/data.csv"]

    assert fetch(url, tmp_path, progress=False) == first
    assert fetch(url, tmp_path, sha256=BODY_SHA256, progress=False) == first
    assert server.requests == ["/data.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, sidecar.name]


def test_corrupted_cached_copy_is_downloaded_again(server: Server, tmp_path: Path) -> None:
    url = server.url("/data.csv")
    path = fetch(url, tmp_path, progress=False)
    path.write_bytes(b"corrupted")

    assert fetch(url, tmp_path, progress=False).read_bytes() == BODY
    assert len(server.requests) == 2


def test_matching_checksum_is_accepted_in_any_case(server: Server, tmp_path: Path) -> None:
    path = fetch(server.url("/data.csv"), tmp_path, sha256=BODY_SHA256.upper(), progress=False)
    assert path.read_bytes() == BODY


def test_checksum_mismatch_names_both_hashes_and_leaves_no_file(server: Server, tmp_path: Path) -> None:
    url = server.url("/data.csv")
    wrong = "0" * 64
    with pytest.raises(DownloadError, match="checksum mismatch") as caught:
        fetch(url, tmp_path, sha256=wrong, progress=False)

    message = str(caught.value)
    assert url in message
    assert f"expected sha256 {wrong}" in message
    assert f"got {BODY_SHA256}" in message
    assert list(tmp_path.iterdir()) == []


def test_malformed_expected_checksum_is_rejected_before_any_request(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal"):
        fetch(server.url("/data.csv"), tmp_path, sha256="abc", progress=False)
    assert server.requests == []


@pytest.mark.parametrize(("path", "status"), [("/missing.csv", "HTTP 404 Not Found"), ("/boom", "HTTP 500")])
def test_http_error_names_url_and_status(server: Server, tmp_path: Path, path: str, status: str) -> None:
    url = server.url(path)
    with pytest.raises(DownloadError, match=status) as caught:
        fetch(url, tmp_path, progress=False)
    assert caught.value.url == url
    assert url in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_names_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.csv"  # nothing listens: the socket is closed

    with pytest.raises(DownloadError, match="connection error") as caught:
        fetch(url, tmp_path, progress=False, timeout=5)
    assert url in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_reports_received_and_expected_bytes(server: Server, tmp_path: Path) -> None:
    url = server.url("/truncated")
    with pytest.raises(DownloadError, match=r"truncated: got 1000 of 5000 bytes") as caught:
        fetch(url, tmp_path, progress=False, timeout=5)
    assert url in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_does_not_alter_the_download(server: Server, tmp_path: Path) -> None:
    assert fetch(server.url("/data.csv"), tmp_path, progress=True).read_bytes() == BODY


def test_cache_names_keep_the_basename_and_never_collide(tmp_path: Path) -> None:
    a = cache_path("https://a.example/v1/train.csv", tmp_path)
    b = cache_path("https://b.example/v1/train.csv", tmp_path)
    odd = cache_path("https://a.example/dir/my%20file.csv?x=1", tmp_path)

    assert a != b
    assert a.name.endswith("-train.csv") and b.name.endswith("-train.csv")
    assert odd.name.endswith("-my_file.csv")
    assert cache_path("https://a.example/", tmp_path).name.endswith("-download")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("http://example.com/data.csv", True),
        ("HTTPS://example.com/data.csv", True),
        ("ftp://example.com/data.csv", False),
        ("file:///tmp/data.csv", False),
        ("s3://bucket/data.csv", False),
        ("/tmp/data.csv", False),
        ("data/train.csv", False),
        ("http://", False),
    ],
)
def test_is_url_accepts_only_http_and_https(source: str, expected: bool) -> None:
    assert is_url(source) is expected


def test_fetch_rejects_non_http_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an http"):
        fetch("ftp://example.com/data.csv", tmp_path, progress=False)
