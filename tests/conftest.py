"""Shared fixtures: the real CIFAR-10 ($MINNETS_DATA, else ../shared/data), a small thread count, and an
HTTP server on 127.0.0.1 for the download tests."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MINNETS_DATA") or REPO_ROOT.parent / "shared" / "data").expanduser()

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """Directory holding the real ``cifar-10-batches-py/``; skips when it is absent."""
    if not (SHARED_DATA / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"real CIFAR-10 not found in {SHARED_DATA} (expected cifar-10-batches-py/)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """For modules of tiny tensors, where one thread beats two (above all on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``: (base URL ending in /, directory)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
