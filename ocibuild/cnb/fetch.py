"""Buildpacks given as ``http(s)://`` URLs (``-b URL``, project.toml ``uri``): streamed to the scratch dir.

A download is hashed while it streams, capped in size (``OCIBUILD_MAX_DOWNLOAD`` bytes, default
512 MiB; refused from ``Content-Length`` before a byte is read, and cut off past the cap), and kept
as ``downloads/blobs/sha256/<hex><suffix>`` with ``downloads/urls/<sha256 of the URL>`` naming its
digest. A URL fetched once is not fetched again: the kept file is re-hashed and used. A failed or
oversized download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ocibuild.errors import OCIBuildError, UsageError
from ocibuild.fileutil import write_atomic

DEFAULT_MAX_DOWNLOAD = 512 << 20
CHUNK = 1 << 20
TIMEOUT = 60.0
SUFFIXES = (".tgz", ".tar.gz", ".tar", ".cnb")


class DownloadError(UsageError):
    """A buildpack URL that could not be fetched (HTTP error, too large, connection): bad input, exit 2."""


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def max_download() -> int:
    raw = os.environ.get("OCIBUILD_MAX_DOWNLOAD", "")
    if not raw:
        return DEFAULT_MAX_DOWNLOAD
    if not raw.isdigit() or int(raw) <= 0:
        raise UsageError(f"OCIBUILD_MAX_DOWNLOAD={raw!r}: expected a positive number of bytes")
    return int(raw)


def _suffix(url: str) -> str:
    path = urlsplit(url).path.lower()
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            return suffix
    return ".tgz"  # pack: a URL names a buildpack archive


def _safe_url(url: str) -> str:
    """The URL as it may appear in a message: no userinfo, no query (tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Downloads:
    """The download cache under the scratch directory's cache."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.urls = self.root / "urls"

    def _url_file(self, url: str) -> Path:
        return self.urls / hashlib.sha256(url.encode()).hexdigest()

    def cached(self, url: str) -> Path | None:
        """The kept file for ``url`` when it is there and still hashes to the digest recorded."""
        try:
            hexd = self._url_file(url).read_text().strip()
        except OSError:
            return None
        path = self.blobs / f"{hexd}{_suffix(url)}"
        if path.is_file() and _hash_file(path) == hexd:
            return path
        return None

    def forget(self, url: str, path: Path | None) -> None:
        """Drop a download that turned out not to be a buildpack, so nothing of it stays."""
        for p in (self._url_file(url), path):
            if p is not None:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass

    def fetch(self, url: str, *, ca_cert: str | None = None, limit: int | None = None) -> tuple[Path, bool]:
        """(path of the file, whether it was downloaded now)."""
        found = self.cached(url)
        if found is not None:
            return found, False
        return self._download(url, ca_cert, limit if limit is not None else max_download()), True

    def _download(self, url: str, ca_cert: str | None, limit: int) -> Path:
        import requests

        shown = _safe_url(url)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.urls.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=self.blobs)
        tmp = Path(tmp_name)
        try:
            try:
                with requests.get(url, stream=True, timeout=TIMEOUT, verify=ca_cert or True) as resp, \
                        os.fdopen(fd, "wb") as out:
                    if resp.status_code != 200:
                        raise DownloadError(f"buildpack {shown}: HTTP {resp.status_code} {resp.reason or ''}".rstrip())
                    announced = resp.headers.get("Content-Length", "")
                    if announced.isdigit() and int(announced) > limit:
                        raise DownloadError(f"buildpack {shown}: {announced} bytes, more than the {limit}-byte cap "
                                            "(OCIBUILD_MAX_DOWNLOAD)")
                    h, size = hashlib.sha256(), 0
                    for chunk in resp.iter_content(CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise DownloadError(f"buildpack {shown}: more than the {limit}-byte cap "
                                                "(OCIBUILD_MAX_DOWNLOAD)")
                        h.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            except requests.RequestException as exc:
                raise DownloadError(f"buildpack {shown}: {type(exc).__name__}") from None
            hexd = h.hexdigest()
            path = self.blobs / f"{hexd}{_suffix(url)}"
            os.replace(tmp, path)
            write_atomic(self._url_file(url), hexd.encode(), prefix=".url-")
            return path
        except BaseException:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            raise


def load_url_buildpacks(url: str, cache_root: Path, *, platform: Any = None, options: Any = None,
                        default_registry: str | None = None) -> list[Any]:
    """The buildpack(s) a URL serves (a ``.tgz`` archive or a ``.cnb`` buildpackage). A download that
    is not a buildpack is refused in one line and removed."""
    from ocibuild.cnb.buildpack import load_buildpacks

    downloads = Downloads(cache_root / "downloads")
    path, fresh = downloads.fetch(url, ca_cert=getattr(options, "ca_cert", None))
    try:
        return load_buildpacks(str(path), platform=platform, options=options, default_registry=default_registry)
    except OCIBuildError as err:
        if fresh:
            downloads.forget(url, path)
        reason = str(err).replace(f"{path}: ", "").replace(str(path), "the download")
        raise UsageError(f"buildpack {_safe_url(url)}: {reason}") from None
