"""Real servers on localhost for the remote-data tests: the standard library's ``http.server`` over a
folder, and moto's standalone S3 server (credentials set only while it runs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(cmd: list[str], url: str, cwd: str | Path | None = None) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` until ``url`` answers (any HTTP status counts), yield it, then stop it."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError as e:
                if getattr(e, "code", None):  # the server answered (even with an HTTP error)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server {cmd} did not come up at {url}") from e
                time.sleep(0.1)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def http_server(root: str | Path) -> Iterator[str]:
    """``http.server`` over ``root``; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], url + "/", cwd=root):
        yield url


@contextmanager
def s3_server(files: Mapping[str, Path | bytes] | None = None) -> Iterator[dict[str, str]]:
    """moto's S3 server with test credentials in the environment, holding ``files`` (``"bucket/key"`` ->
    a local file or bytes); yields fsspec ``storage_options``."""
    port = free_port()
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        with serving(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/"
        ):
            options = {"endpoint_url": f"http://127.0.0.1:{port}"}
            _upload(options, files or {})
            yield options
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _upload(options: dict[str, str], files: Mapping[str, Path | bytes]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    for bucket in sorted({key.split("/")[0] for key in files}):
        fs.mkdir(bucket)
    for key, value in files.items():
        fs.pipe_file(key, value) if isinstance(value, bytes) else fs.put_file(str(value), key)
