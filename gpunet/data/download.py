"""Downloads that verify before they land: fetch to a temporary file in the
target folder, check, then rename atomically, so a file in the cache is whole."""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.request

from .. import config
from .errors import DatasetError


def _progress(total: int | None, desc: str):
    """A tqdm bar when tqdm is installed, else a silent stand-in."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not sys.stderr.isatty() and not config.get("progress"):
        class Silent:
            def update(self, n):
                pass

            def close(self):
                pass
        return Silent()
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def download(url: str, dest: str, md5: str | None = None, timeout: float = 60.0,
             sha256: str | None = None) -> str:
    """Fetch ``url`` to ``dest`` (atomically); with ``md5`` or ``sha256`` the
    downloaded bytes must match it, else nothing lands at ``dest``. Returns ``dest``.
    Network and checksum failures raise DatasetError."""
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    expected = sha256 if sha256 is not None else md5
    digest = hashlib.sha256() if sha256 is not None else hashlib.md5(usedforsecurity=False)
    algorithm = "SHA-256" if sha256 is not None else "MD5"
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    size = response.headers.get("Content-Length")
                    bar = _progress(int(size) if size else None, os.path.basename(dest))
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                    bar.close()
            except OSError as exc:  # URLError, HTTPError, timeouts
                raise DatasetError(f"{dest}: download from {url} failed: {exc}") from None
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and digest.hexdigest() != expected:
            raise DatasetError(f"{dest}: checksum mismatch for {url}: {algorithm} "
                               f"{digest.hexdigest()}, expected {expected}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
