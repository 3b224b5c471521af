"""One graph copy between any two stores (layout <-> registry, registry <-> registry, ...).

The walk reads every manifest first (small, verified), then moves all blobs in parallel, then
writes manifests children-first, and names the result (the tag) last: an interrupted copy never
leaves a tag pointing at something incomplete. Manifest bytes are copied verbatim, so digests are
preserved; a blob the destination already has is skipped, one on the same registry is mounted.
"""

from __future__ import annotations

from ocibuild.store.referrers import link_referrer, signature_tag

import contextlib
import io
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

from ocibuild.errors import ManifestError, NotFound, UsageError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor, Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import Index, Manifest, parse_manifest
from ocibuild.store.base import VerifyingReader, read_blob, verifier_of, verify_bytes
from ocibuild.transfer.progress import CountingProgress, ProgressSink

if TYPE_CHECKING:
    from ocibuild.store.base import Store


def plain(desc: Descriptor) -> Descriptor:
    """``desc`` without the index-entry decorations (platform, annotations): what names a manifest."""
    return Descriptor(desc.media_type, desc.digest, desc.size)


def select_platforms(
    src: "Store", desc: Descriptor, raw: bytes, platforms: list[Platform]
) -> tuple[Descriptor, bytes]:
    """Narrow an index to ``platforms``.

    One platform: the matching child manifest itself (as crane does); several: a new index of the
    matching entries (necessarily a new digest). A plain manifest is returned unchanged.
    """
    doc = parse_manifest(raw, desc.media_type)
    if not isinstance(doc, Index):
        return desc, raw
    available = ", ".join(str(e.platform) for e in doc.manifests if e.platform) or "none"
    if len(platforms) == 1:
        child = doc.select(platforms[0])
        if child is None:
            raise NotFound(f"{src.name}: no image for platform {platforms[0]} (available: {available})")
        child_raw = fetch_manifest(src, child)
        child_desc = Descriptor(_declared_type(child_raw, child.media_type), child.digest, child.size)
        return select_platforms(src, child_desc, child_raw, platforms)
    entries = [e for e in doc.manifests if e.platform and any(p.matches(e.platform) for p in platforms)]
    missing = [p for p in platforms if not any(e.platform and p.matches(e.platform) for e in entries)]
    if missing:
        wanted = ", ".join(str(p) for p in missing)
        raise NotFound(f"{src.name}: no image for platform {wanted} (available: {available})")
    index = Index.build(
        entries,
        media_type=doc.media_type,
        annotations=doc.annotations,
        artifact_type=doc.artifact_type,
        subject=doc.subject,
    )
    return index.descriptor(), index.raw


def fetch_manifest(src: "Store", desc: Descriptor) -> bytes:
    """Exact bytes of the manifest ``desc`` points at (inline ``data`` needs no fetch), verified."""
    if desc.data is not None:
        verify_bytes(desc, desc.data)
        return desc.data
    try:
        _, raw = src.get_manifest(str(desc.digest))
    except NotFound:
        if mt.is_manifest_like(desc.media_type):
            raise
        # an unknown kind of document: a layout keeps it as a plain blob
        return read_blob(src, plain(desc))
    verify_bytes(desc, raw)
    return raw


def _declared_type(raw: bytes, fallback: str) -> str:
    try:
        return parse_manifest(raw, fallback if mt.is_manifest_like(fallback) else None).media_type
    except ManifestError:
        return fallback


def _skippable(desc: Descriptor) -> bool:
    """Foreign / non-distributable layers that name where they live are not copied (crane does the same)."""
    return desc.media_type in mt.NON_DISTRIBUTABLE and bool(desc.urls)


@dataclass
class _Plan:
    """Everything a copy will write: manifests children-first, and the set of blobs."""

    manifests: list[tuple[Descriptor, bytes]] = field(default_factory=list)
    blobs: dict[Digest, Descriptor] = field(default_factory=dict)
    seen: set[Digest] = field(default_factory=set)


def _counted(stream: BinaryIO, desc: Descriptor, report: Callable[[int], None]) -> BinaryIO:
    """``stream`` reporting the bytes read, so progress never depends on the writer.

    A store's own verifying stream just gets the callback (no second wrapper, no copy, and the
    destination sees a verified stream it need not hash again); any other stream is wrapped in a
    ``VerifyingReader``, which both counts and verifies.
    """
    verifier = verifier_of(stream, desc)
    if verifier is not None:
        verifier.on_read = report
        return stream
    return VerifyingReader(stream, desc, on_read=report)  # type: ignore[return-value]


class _Reopening(io.RawIOBase):
    """A source blob that a destination may rewind (``seek``): rewinding re-opens it from the source.

    A registry destination resends a blob from its start when an upload session dies mid-way;
    the stores' own streams verify as they go and cannot seek, so a seek back closes the current
    one and opens the blob again (reading forward to the position), and every byte is still
    verified by the source store. ``current`` is that verifying stream (an uploader that trusts it
    need not hash again). Progress counts each byte once however often it is re-read.
    """

    def __init__(self, src: "Store", desc: Descriptor, report: Callable[[int], None]):
        super().__init__()
        self._src, self._desc, self._report = src, desc, report
        self._stack = contextlib.ExitStack()
        self._pos = self._high = 0
        self.current: BinaryIO = self._open()

    def _open(self) -> BinaryIO:
        stream = self._stack.enter_context(self._src.open_blob(self._desc))
        if verifier_of(stream, self._desc) is None:
            stream = VerifyingReader(stream, self._desc)  # type: ignore[assignment]
        return stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _advance(self, n: int) -> None:
        self._pos += n
        if self._pos > self._high:
            self._report(self._pos - self._high)
            self._high = self._pos

    def read(self, size: int | None = -1) -> bytes:
        data = self.current.read(size)
        self._advance(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self.current.readinto(buffer) or 0  # type: ignore[attr-defined]
        self._advance(n)
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a source blob seeks from its start only")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        if offset < self._pos:
            self._stack.close()
            self._stack = contextlib.ExitStack()
            self._pos = 0
            self.current = self._open()
        while self._pos < offset:
            data = self.current.read(min(offset - self._pos, 1 << 20))
            if not data:
                break
            self._advance(len(data))
        return self._pos

    def close(self) -> None:
        if not self.closed:
            try:
                self._stack.close()
            finally:
                super().close()


class GraphCopier:
    """Copies manifests and their blobs from ``src`` to ``dst``. One instance per copy."""

    def __init__(self, src: "Store", dst: "Store", *, jobs: int = 4, progress: ProgressSink | None = None):
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        self.src, self.dst, self.jobs = src, dst, jobs
        self.progress: ProgressSink = progress if progress is not None else CountingProgress()
        self._mount_from = self._mount_source()
        self._lock = threading.Lock()

    def _mount_source(self) -> str | None:
        """The source repository when both sides are repositories of the same registry."""
        src_registry, dst_registry = getattr(self.src, "registry", None), getattr(self.dst, "registry", None)
        src_repo, dst_repo = getattr(self.src, "repository", None), getattr(self.dst, "repository", None)
        if (
            src_registry is not None
            and src_registry == dst_registry
            and src_repo
            and src_repo != dst_repo
            and hasattr(self.dst, "mount_blob")
        ):
            return src_repo
        return None

    # -- planning -------------------------------------------------------------------------------
    def plan(self, desc: Descriptor, raw: bytes, plan: _Plan | None = None) -> _Plan:
        plan = plan if plan is not None else _Plan()
        self._visit(desc, raw, plan, ())
        return plan

    def _visit(self, desc: Descriptor, raw: bytes, plan: _Plan, path: tuple[Digest, ...]) -> None:
        if desc.digest in path:
            chain = " -> ".join(d.short() for d in (*path, desc.digest))
            raise ManifestError(f"{self.src.name}: index cycle {chain}")
        if desc.digest in plan.seen:
            return
        try:
            doc = parse_manifest(raw, desc.media_type if mt.is_manifest_like(desc.media_type) else None)
        except ManifestError:
            if mt.is_manifest_like(desc.media_type):
                raise
            doc = None  # an unknown kind of manifest: copied as an opaque document, no children
        media_type = doc.media_type if doc is not None else desc.media_type
        if isinstance(doc, Index):
            for child in doc.manifests:
                self._visit(child, fetch_manifest(self.src, child), plan, (*path, desc.digest))
        elif isinstance(doc, Manifest):
            for blob in doc.children():
                if not _skippable(blob):
                    plan.blobs.setdefault(blob.digest, blob)
        plan.seen.add(desc.digest)
        plan.manifests.append((Descriptor(media_type, desc.digest, desc.size), raw))

    # -- blobs ----------------------------------------------------------------------------------
    def copy_blob(self, desc: Descriptor) -> str:
        """Make ``dst`` hold ``desc``; returns how: copied, skipped or mounted."""
        sink = self.progress
        sink.start(desc)
        if self.dst.has_blob(desc):
            how = "skipped"
        elif self._mount_from is not None and self.dst.mount_blob(desc, self._mount_from):  # type: ignore[attr-defined]
            how = "mounted"
        elif desc.data is not None:
            verify_bytes(desc, desc.data)
            self.dst.put_blob(desc, io.BytesIO(desc.data))
            sink.advance(desc, desc.size)
            how = "copied"
        else:
            report: Callable[[int], None] = lambda n: sink.advance(desc, n)  # noqa: E731
            if getattr(self.dst, "resends_blobs", False):  # it may rewind: give it a stream that can
                with contextlib.closing(_Reopening(self.src, desc, report)) as stream:
                    self.dst.put_blob(desc, stream)  # type: ignore[arg-type]
            else:
                with self.src.open_blob(desc) as stream:
                    self.dst.put_blob(desc, _counted(stream, desc, report))
            how = "copied"
        sink.done(desc, how)  # type: ignore[arg-type]
        return how

    def copy_blobs(self, blobs: Iterable[Descriptor]) -> None:
        """All blobs, ``jobs`` at a time. The first failure cancels what has not started and is raised.

        Largest first: a small config queued ahead of a layer would otherwise delay that layer,
        and the whole copy finishes when its slowest job does.
        """
        blobs = sorted(blobs, key=lambda b: -b.size)
        if not blobs:
            return
        if self.jobs == 1 or len(blobs) == 1:
            for blob in blobs:
                self.copy_blob(blob)
            return
        pool = ThreadPoolExecutor(max_workers=min(self.jobs, len(blobs)), thread_name_prefix="ocibuild-copy")
        try:
            futures: list[Future[str]] = [pool.submit(self.copy_blob, b) for b in blobs]
            finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            wait(pending)
            for fut in futures:  # in submission order, so the error reported is deterministic
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- the whole graph ------------------------------------------------------------------------
    def copy(self, desc: Descriptor, raw: bytes, tag: str | None = None, *, referrers: bool = False) -> Descriptor:
        plan = self.plan(desc, raw)
        set_total = getattr(self.progress, "set_total", None)
        if set_total is not None:
            set_total(sum(b.size for b in plan.blobs.values()))
        with self._writing():
            self.copy_blobs(plan.blobs.values())
            top = plan.manifests[-1][0]
            for child, child_raw in plan.manifests[:-1]:
                self.dst.put_manifest(child, child_raw)
            if referrers:
                self._copy_referrers(plan)
            self.dst.put_manifest(top, plan.manifests[-1][1], tag=tag)
        return top

    def _copy_referrers(self, plan: _Plan) -> None:
        """Copy every manifest that refers to one already copied (signatures, SBOMs), transitively."""
        done = set(plan.seen)
        queue = [d for d, _ in plan.manifests]
        while queue:
            subject = queue.pop()
            for ref in self.src.referrers(subject):
                if ref.digest in done:
                    continue
                sub = self.plan(plain(ref), fetch_manifest(self.src, ref))
                self.copy_blobs(b for b in sub.blobs.values())
                for child, child_raw in sub.manifests:
                    self.dst.put_manifest(child, child_raw)
                    link_referrer(self.dst, child, child_raw)  # a layout lists it under the fallback tag
                    done.add(child.digest)
                    queue.append(child)
            self._copy_signature_tag(subject)

    def _copy_signature_tag(self, subject: Descriptor) -> None:
        """cosign's key-pair signatures: a manifest tagged ``sha256-<hex>.sig`` (no ``subject`` field)."""
        tag = signature_tag(subject.digest)
        try:
            desc, raw = self.src.get_manifest(tag)
        except NotFound:
            return
        sub = self.plan(Descriptor(desc.media_type, desc.digest, len(raw)), raw)
        self.copy_blobs(sub.blobs.values())
        self.dst.put_manifest(sub.manifests[-1][0], sub.manifests[-1][1], tag=tag)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the destination's writer lock (a layout's guard against a concurrent GC) if it has one."""
        lock = getattr(self.dst, "writer_lock", None)
        if lock is None:
            yield
            return
        with lock():
            yield


def copy_image(
    src: "Store",
    src_id: str,
    dst: "Store",
    dst_tag: str | None = None,
    *,
    platforms: list[Platform] | None = None,
    all_platforms: bool = False,
    jobs: int = 4,
    progress: ProgressSink | None = None,
    referrers: bool = False,
) -> Descriptor:
    """Copy the image (manifest or index) ``src_id`` names in ``src`` to ``dst``, tagging it ``dst_tag``.

    Without ``platforms`` an index is copied whole, byte for byte (``all_platforms`` says so
    explicitly). Returns the descriptor of what was written at the top.
    """
    if platforms and all_platforms:
        raise UsageError("--platform and --all-platforms exclude each other")
    desc, raw = src.get_manifest(src_id)
    desc = Descriptor(desc.media_type, desc.digest, len(raw))
    verify_bytes(desc, raw)
    if platforms:
        desc, raw = select_platforms(src, desc, raw, platforms)
    return GraphCopier(src, dst, jobs=jobs, progress=progress).copy(desc, raw, dst_tag, referrers=referrers)
