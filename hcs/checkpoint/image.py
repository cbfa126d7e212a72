"""Turn a kubelet checkpoint archive into an OCI image containerd's CRI restores from.

containerd 2.3's ``CreateContainer`` restores instead of creating when the container's image is a
*checkpoint image*: an image whose manifest (read as the image target) carries the annotation
``org.criu.checkpoint.container.name`` and whose single layer holds the archive's files
(``config.dump``, ``spec.dump``, ``status.dump``, ``checkpoint/`` with CRIU's images, ``rootfs-diff.tar``,
``container.log``). The layer is the archive itself: the kubelet's archive is an uncompressed tar of those
files, which is a valid OCI layer as it is (``application/vnd.oci.image.layer.v1.tar``).

The image is written as an OCI image-layout tar (``ctr images import`` reads it) without reading the whole
archive into memory: the archive (1 GiB of simulated VRAM makes a ~1 GiB archive) is hashed and copied in
chunks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hcs.errors import HcsError

# checkpointctl lib (v1.5.0, vendored by containerd 2.3.7) CheckpointAnnotationName / ...Pod / ...RootfsImageName
CHECKPOINT_ANNOTATION = "org.criu.checkpoint.container.name"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
REQUIRED_MEMBERS = ("config.dump", "spec.dump")
CHUNK = 4 << 20


class CheckpointImageError(HcsError):
    """The archive is not a checkpoint archive, or the image could not be written."""


@dataclass(frozen=True)
class ArchiveInfo:
    container: str  # the checkpointed container's name (config.dump "name")
    rootfs_image: str  # the image it ran (the restore needs it present on the target node)
    size: int
    digest: str  # sha256:<hex> of the archive = the layer's digest and diff id


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def inspect_archive(archive: Path) -> ArchiveInfo:
    """Check that ``archive`` is a kubelet checkpoint archive and read what the image needs from it."""
    try:
        with tarfile.open(archive, mode="r:") as tf:
            names = {m.name.lstrip("./") for m in tf.getmembers()}
            missing = [m for m in REQUIRED_MEMBERS if m not in names]
            if missing or not any(n == "checkpoint" or n.startswith("checkpoint/") for n in names):
                raise CheckpointImageError(
                    f"{archive} is not a container checkpoint archive: missing "
                    f"{', '.join(missing) or 'checkpoint/'} (expected the kubelet's /checkpoint output)")
            member = tf.getmember("config.dump") if "config.dump" in tf.getnames() else tf.getmember("./config.dump")
            f = tf.extractfile(member)
            if f is None:
                raise CheckpointImageError(f"{archive}: config.dump is not a regular file")
            cfg = json.loads(f.read(1 << 20))
    except (tarfile.TarError, OSError) as e:
        raise CheckpointImageError(f"cannot read checkpoint archive {archive}: {e}") from e
    except json.JSONDecodeError as e:
        raise CheckpointImageError(f"{archive}: config.dump is not JSON: {e}") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str) or not cfg["name"]:
        raise CheckpointImageError(f"{archive}: config.dump has no container name")
    return ArchiveInfo(container=cfg["name"], rootfs_image=str(cfg.get("rootfsImageName") or ""),
                       size=archive.stat().st_size, digest=_sha256_file(archive))


def _add_bytes(out: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    out.addfile(ti, io.BytesIO(data))


def _add_dir(out: tarfile.TarFile, name: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
    out.addfile(ti)


def stream_image(archive: Path, out: IO[bytes], ref: str, info: ArchiveInfo, *, include_layer: bool = True) -> None:
    """Write the image-layout tar of ``archive`` to a stream (``ctr images import -`` reads it from a pipe):
    no image file on disk, one copy of the archive less than :func:`write_image`.

    ``include_layer=False`` leaves the layer blob (the archive itself) out: for a content store that already
    holds it (:meth:`hcs.checkpoint.migrate.Migrator.import_image` links it in), so only the index, the
    manifest and the config (a few KiB) cross the pipe."""
    _write_layout(archive, out, ref, info, include_layer=include_layer)


def _write_layout(archive: Path, out_f: IO[bytes], ref: str, info: ArchiveInfo, *,
                  include_layer: bool = True) -> None:
    cfg = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [info.digest]},
        "history": [{"created_by": f"hcs checkpoint image of container {info.container}"}],
    }, sort_keys=True).encode()
    cfg_digest = "sha256:" + hashlib.sha256(cfg).hexdigest()
    annotations = {CHECKPOINT_ANNOTATION: info.container,
                   "org.criu.checkpoint.rootfsImageName": info.rootfs_image,
                   "org.opencontainers.image.ref.name": ref}
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cfg_digest, "size": len(cfg)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": info.digest, "size": info.size}],
        "annotations": annotations,
    }, sort_keys=True).encode()
    man_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": man_digest,
                                       "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
                                       "annotations": {"io.containerd.image.name": ref,
                                                       "org.opencontainers.image.ref.name": ref}}]}).encode()
    with tarfile.open(fileobj=out_f, mode="w|", format=tarfile.PAX_FORMAT) as out:
        _add_dir(out, "blobs")
        _add_dir(out, "blobs/sha256")
        if include_layer:
            ti = tarfile.TarInfo("blobs/sha256/" + info.digest.split(":", 1)[1])
            ti.size, ti.mode, ti.mtime = info.size, 0o644, 0
            with archive.open("rb") as f:
                out.addfile(ti, f)
        _add_bytes(out, "blobs/sha256/" + cfg_digest.split(":", 1)[1], cfg)
        _add_bytes(out, "blobs/sha256/" + man_digest.split(":", 1)[1], manifest)
        _add_bytes(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(out, "index.json", index)
    if archive.stat().st_size != info.size:
        raise CheckpointImageError(f"{archive} changed while the image was written")


def write_image(archive: Path, out_path: Path, ref: str, *, info: ArchiveInfo | None = None) -> ArchiveInfo:
    """Write an OCI image-layout tar at ``out_path`` holding the checkpoint image ``ref`` (atomic)."""
    info = info or inspect_archive(archive)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            _write_layout(archive, f, ref, info)
        os.replace(tmp, out_path)
    except OSError as e:
        raise CheckpointImageError(f"writing checkpoint image {out_path}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return info
