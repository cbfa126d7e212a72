"""Checkpoint recovery pieces that need no cluster: the checkpoint image, annotations, the store, pod rewrite."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from hcs.checkpoint.image import (
    CHECKPOINT_ANNOTATION,
    CheckpointImageError,
    inspect_archive,
    stream_image,
    write_image,
)
from hcs.checkpoint.migrate import CheckpointError, Migrator, Store, mode_of, parse_interval


def _archive(path: Path, members: dict[str, bytes], dirs: tuple[str, ...] = ("checkpoint",)) -> Path:
    with tarfile.open(path, "w") as tf:
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def _good(tmp_path: Path) -> Path:
    return _archive(tmp_path / "ck.tar", {
        "config.dump": json.dumps({"id": "abc", "name": "counter_ck_default_uid_0",
                                   "rootfsImageName": "hcs.local/vram-counter:1"}).encode(),
        "spec.dump": b"{}", "status.dump": b"{}", "checkpoint/pages-1.img": b"\x00" * 4096})


def test_image_is_an_oci_layout_whose_layer_is_the_archive(tmp_path: Path) -> None:
    arch = _good(tmp_path)
    info = write_image(arch, tmp_path / "img.tar", "hcs.local/checkpoint/x:1")
    assert info.container == "counter_ck_default_uid_0" and info.rootfs_image == "hcs.local/vram-counter:1"
    with tarfile.open(tmp_path / "img.tar") as tf:
        def blob(digest: str) -> bytes:
            f = tf.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert f is not None
            return f.read()
        index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
        desc = index["manifests"][0]
        assert desc["annotations"]["io.containerd.image.name"] == "hcs.local/checkpoint/x:1"
        manifest = json.loads(blob(desc["digest"]))
        # containerd 2.3 reads the image target as an index and looks for this annotation
        assert manifest["annotations"][CHECKPOINT_ANNOTATION] == "counter_ck_default_uid_0"
        layer = manifest["layers"][0]
        assert blob(layer["digest"]) == arch.read_bytes()
        assert layer["digest"] == "sha256:" + hashlib.sha256(arch.read_bytes()).hexdigest()
        cfg = json.loads(blob(manifest["config"]["digest"]))
        assert cfg["rootfs"]["diff_ids"] == [layer["digest"]]


def test_image_without_layer_for_a_content_store_that_holds_it(tmp_path: Path) -> None:
    """The layer linked into containerd's content store: only index, manifest and config are streamed,
    and they name the same layer (digest and size of the archive) as the full image does."""
    arch = _good(tmp_path)
    info = inspect_archive(arch)
    full, small = io.BytesIO(), io.BytesIO()
    stream_image(arch, full, "hcs.local/checkpoint/x:1", info)
    stream_image(arch, small, "hcs.local/checkpoint/x:1", info, include_layer=False)
    layer_name = "blobs/sha256/" + info.digest.split(":", 1)[1]
    with tarfile.open(fileobj=io.BytesIO(full.getvalue())) as a, \
            tarfile.open(fileobj=io.BytesIO(small.getvalue())) as b:
        names_a, names_b = set(a.getnames()), set(b.getnames())
        assert layer_name in names_a and layer_name not in names_b
        assert names_a - {layer_name} == names_b
        for n in names_b:
            if b.getmember(n).isfile():
                assert a.extractfile(n).read() == b.extractfile(n).read()  # type: ignore[union-attr]
    assert len(full.getvalue()) - len(small.getvalue()) >= info.size  # the archive's bytes are not streamed


def test_a_tar_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    # an arbitrary image layer passed off as a checkpoint (no config.dump / checkpoint/) must not become an image
    bad = _archive(tmp_path / "bad.tar", {"etc/passwd": b"root:x:0:0::/:/bin/sh\n"}, dirs=())
    with pytest.raises(CheckpointImageError, match="not a container checkpoint archive"):
        write_image(bad, tmp_path / "img.tar", "hcs.local/checkpoint/bad:1")
    assert not (tmp_path / "img.tar").exists()


def test_garbage_and_nameless_archives_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00not a tar" * 100)
    with pytest.raises(CheckpointImageError):
        inspect_archive(junk)
    nameless = _archive(tmp_path / "n.tar", {"config.dump": b'{"id": "x"}', "spec.dump": b"{}"})
    with pytest.raises(CheckpointImageError, match="no container name"):
        inspect_archive(nameless)
    notjson = _archive(tmp_path / "j.tar", {"config.dump": b"{", "spec.dump": b"{}"})
    with pytest.raises(CheckpointImageError, match="not JSON"):
        inspect_archive(notjson)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("90", 90), ("1.5s", 1.5)])
def test_interval(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5s", "10x", "500ms"])
def test_bad_interval(text: str) -> None:
    with pytest.raises(CheckpointError, match="checkpoint-interval"):
        parse_interval(text)


def test_opt_in_defaults_to_never() -> None:
    assert mode_of({"metadata": {}}) == "never"
    assert mode_of({"metadata": {"annotations": {"hcs.io/checkpoint": "AUTO"}}}) == "auto"
    assert mode_of({"metadata": {"annotations": {"hcs.io/checkpoint": "always"}}}) == "never"


def test_store_keeps_the_newest(tmp_path: Path) -> None:
    st = Store(tmp_path, keep=2)
    d = st.pod_dir("ns", "p")
    for n in ("1", "2", "3"):
        (d / f"2026{n}.ckpt.tar").write_bytes(b"x")
    (d / "stale.oci.tar").write_bytes(b"x")
    st.prune("ns", "p")
    assert sorted(p.name for p in d.iterdir()) == ["20262.ckpt.tar", "20263.ckpt.tar"]
    assert st.latest("ns", "p") == d / "20263.ckpt.tar"
    assert st.latest("ns", "other") is None


def test_replacement_pod_gets_fresh_device_node_and_checkpoint_image(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "train-m1", "namespace": "ml", "uid": "u1", "labels": {"app": "t"},
                        "annotations": {"hcs.io/checkpoint": "auto", "hcs.io/device": "GPU-old",
                                        "hcs.io/migrations": "1", "hcs.io/last-checkpoint": "{}"}},
           "spec": {"nodeName": "a", "nodeSelector": {"kubernetes.io/hostname": "a", "zone": "z"},
                    "containers": [{"name": "main", "image": "repo/train:1", "imagePullPolicy": "Always"}]}}
    m = Migrator.__new__(Migrator)
    new = m.replacement(pod, "b", "GPU-new", "hcs.local/checkpoint/ml-train:x", tmp_path / "x.ckpt.tar")
    assert new["metadata"]["name"] == "train-m2"
    ann = new["metadata"]["annotations"]
    assert ann["hcs.io/device"] == "GPU-new" and ann["hcs.io/migrations"] == "2"
    assert "hcs.io/last-checkpoint" not in ann and ann["hcs.io/restored-from"].startswith("train-m1@u1:")
    assert "nodeName" not in new["spec"]
    assert new["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "b", "zone": "z"}
    c = new["spec"]["containers"][0]
    assert (c["image"], c["imagePullPolicy"]) == ("hcs.local/checkpoint/ml-train:x", "Never")
    assert pod["spec"]["nodeName"] == "a", "the original pod object must not be modified"


def _state(used_a: int, used_b: int, bad_b: int = 0) -> Any:
    from hcs.checkpoint.defrag import State

    devs = {n: [f"{n}-{i}" for i in range(8)] for n in ("a", "b")}
    used = {"a": set(devs["a"][:used_a]), "b": set(devs["b"][:used_b])}
    bad = {"a": set(), "b": set(devs["b"][8 - bad_b:])}
    movable = [("ns", f"pa{i}", "a") for i in range(used_a)] + [("ns", f"pb{i}", "b") for i in range(used_b)]
    return State(["a", "b"], devs, used, bad, movable)


def test_defrag_consolidates_single_pods_to_free_a_whole_node() -> None:
    from hcs.checkpoint.defrag import plan

    moves = plan(_state(1, 1))
    assert len(moves) == 1
    mv = moves[0]
    assert mv.fragmentation_after < mv.fragmentation_before
    assert {mv.from_node, mv.to_node} == {"a", "b"}


def test_defrag_never_plans_onto_a_full_or_failing_node() -> None:
    from hcs.checkpoint.defrag import plan

    # b: 7 pods + 1 failing device: no free device on b, so a's pod cannot go there; b's pods may go to a,
    # but moving them only spreads b's load (a would lose its whole-free block): no move lowers the measure
    moves = plan(_state(0, 7, bad_b=1))
    assert all(m.to_node != "b" for m in moves)
    assert plan(_state(0, 0)) == []
