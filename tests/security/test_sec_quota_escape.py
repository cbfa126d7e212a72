"""Issue 16, attack 5: a quota that an unprivileged container cannot leave.

Each test builds a container the way the node agent asks the runtime to (the mounts and env of
hcs/devices/injection.py's ``container_edits``, host files written by the agent's own helpers),
runs the attack as a real process inside it against the real interceptor and the simulated CUDA
driver, and asserts that the attack fails at the exact quota boundary while legitimate use works.
See sec_quota_container.py for how the container is emulated (mount namespace, no CAP_SYS_ADMIN).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "node"))

from node_helpers import device  # noqa: E402
from sec_quota_container import (  # noqa: E402
    BUILD,
    MIB,
    PROFILE,
    Bind,
    Container,
    base_env,
    build,
    library,
    prerequisites,
)

from hcs.devices.injection import (  # noqa: E402
    CONTAINER_LEDGER_DIR,
    CONTAINER_QUOTA_FILE,
    LEDGER_FILE,
    InjectionOptions,
    QuotaFiles,
    container_edits,
    create_ledger,
    ensure_preload_file,
    quota_file_text,
    shadows_managed_path,
)
from hcs.devices.model import Vendor  # noqa: E402

Q = 64 * MIB  # the container's quota (the numbers)
T_CUDA = str(BUILD / "tests" / "t_cuda")
LEDGER = f"{CONTAINER_LEDGER_DIR}/{LEDGER_FILE}"

pytestmark = pytest.mark.skipif(bool(prerequisites()), reason=prerequisites() or "ok")


@pytest.fixture(scope="module")
def built() -> None:
    build()


def make_container(root: Path, quota: int) -> Container:
    """A container with one simulated GPU limited to ``quota`` bytes, set up from the agent's edits."""
    host = root / "host"
    host.mkdir(parents=True)
    quota_file = host / "quota"
    quota_file.write_text(quota_file_text([quota]))
    ledger = host / "ledger"
    create_ledger(ledger)
    preload = host / "ld.so.preload"
    ensure_preload_file(preload)
    edits = container_edits(
        [device(Vendor.NVIDIA, 0, 1)], [quota],
        QuotaFiles(str(quota_file), CONTAINER_QUOTA_FILE, str(ledger), CONTAINER_LEDGER_DIR),
        InjectionOptions(interceptor_host_dir=str(library().parent), device_isolation=False,
                         preload_host_path=str(preload)),
    )
    mounts = {m.container_path: m for m in edits.mounts}
    assert mounts["/etc/ld.so.preload"].read_only and mounts[CONTAINER_LEDGER_DIR].read_only
    assert mounts[CONTAINER_QUOTA_FILE].read_only
    env = base_env(root)
    # the simulated driver sees the profile's card; the visible-devices variables name test UUIDs
    env.update({k: v for k, v in edits.env if k.startswith("HCS_") or k == "LD_PRELOAD"})
    return Container(root / "ctr", [Bind(m.host_path, m.container_path, m.read_only) for m in edits.mounts], env)


@pytest.fixture
def ctr(built: None, tmp_path: Path) -> Iterator[Container]:
    c = make_container(tmp_path, Q)
    try:
        yield c
    finally:
        c.close()


def refused_at_boundary(c: Container, **kw: object) -> None:
    """Q + 1 bytes refused with CUDA_ERROR_OUT_OF_MEMORY, exactly Q granted."""
    over = c.alloc(Q + 1, **kw)  # type: ignore[arg-type]
    assert over["rc"] == 2, over
    exact = c.alloc(Q, **kw)  # type: ignore[arg-type]
    assert exact == {"rc": 0, "free": 0, "total": Q}, exact


def test_baseline_container_is_held_to_its_quota(ctr: Container) -> None:
    refused_at_boundary(ctr)
    assert ctr.alloc(16 * MIB) == {"rc": 0, "free": Q - 16 * MIB, "total": Q}  # legitimate use


def test_unsetting_ld_preload_changes_nothing(ctr: Container) -> None:
    """/etc/ld.so.preload (read-only mount) loads the interceptor whatever the environment says."""
    refused_at_boundary(ctr, unset=["LD_PRELOAD"])
    # and the file can be neither rewritten nor removed from inside
    res = ctr.sh("(true > /etc/ld.so.preload) || rm -f /etc/ld.so.preload || mv /etc/ld.so.preload /etc/x; "
                 "cat /etc/ld.so.preload")
    assert "libhcs_interceptor.so" in res.out, res
    assert ctr.run("umount", "/etc/ld.so.preload").rc != 0  # no CAP_SYS_ADMIN


def test_unsetting_hcs_quota_file_changes_nothing(ctr: Container) -> None:
    """Without HCS_QUOTA_FILE (and with a huge HCS_VRAM_QUOTA) the fixed quota file still decides."""
    refused_at_boundary(ctr, unset=["HCS_QUOTA_FILE"], extra={"HCS_VRAM_QUOTA": "100Gi"})


def test_pointing_hcs_quota_file_elsewhere_changes_nothing(ctr: Container, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_text("* 100Gi\n")
    big.chmod(0o644)
    refused_at_boundary(ctr, extra={"HCS_QUOTA_FILE": str(big)})
    # the mounted file itself cannot be changed from inside
    res = ctr.sh(f"(echo '* 100Gi' > {CONTAINER_QUOTA_FILE}); cat {CONTAINER_QUOTA_FILE}")
    assert res.out.strip().endswith(f"0 {Q}"), res


def test_setenv_before_the_first_cuda_call_changes_nothing(ctr: Container, tmp_path: Path) -> None:
    """The interceptor reads its configuration at the first device call; variables set by the
    program before that (HCS_QUOTA_FILE, HCS_VRAM_QUOTA, HCS_SHM_DIR) are not read at all."""
    big = tmp_path / "big2"
    big.write_text("* 100Gi\n")
    big.chmod(0o644)
    own = tmp_path / "own-shm"
    own.mkdir()
    setenv = [f"HCS_QUOTA_FILE={big}", "HCS_VRAM_QUOTA=100Gi", f"HCS_SHM_DIR={own}"]
    over = ctr.run(T_CUDA, "setenv_alloc", str(Q + 1), *setenv).json()
    assert over["rc"] == 2, over
    exact = ctr.run(T_CUDA, "setenv_alloc", str(Q), *setenv).json()
    assert exact == {"rc": 0, "free": 0, "total": Q}, exact
    assert not list(own.iterdir()), "the redirected accounting dir must not even be created"


def test_a_private_hcs_shm_dir_per_process_still_shares_the_ledger(ctr: Container, tmp_path: Path) -> None:
    """Two processes with two different HCS_SHM_DIR still draw on one container quota."""
    a, b = tmp_path / "shm-a", tmp_path / "shm-b"
    a.mkdir()
    b.mkdir()
    ctr.hold(48 * MIB, extra={"HCS_SHM_DIR": str(a)})
    over = ctr.alloc(16 * MIB + 1, extra={"HCS_SHM_DIR": str(b)})
    assert over["rc"] == 2 and over["free"] == 16 * MIB, over
    assert ctr.alloc(16 * MIB, extra={"HCS_SHM_DIR": str(b)})["rc"] == 0
    assert not list(a.iterdir()) and not list(b.iterdir())


def test_zeroing_or_replacing_the_ledger_is_impossible_and_changes_nothing(ctr: Container) -> None:
    """The ledger is the kernel's lock table on a file in a read-only directory: there are no
    counters in it to zero, and it cannot be truncated, removed, replaced or made unreadable."""
    ctr.hold(48 * MIB)
    attacks = [
        f"truncate -s 0 {LEDGER}",
        f"dd if=/dev/zero of={LEDGER} bs=4096 count=81 conv=notrunc",
        f": > {LEDGER}",
        f"rm -f {LEDGER}",
        f"mv {LEDGER} {LEDGER}.old",
        f"chmod 000 {LEDGER}",
        f"touch {CONTAINER_LEDGER_DIR}/x",
        f"umount {CONTAINER_LEDGER_DIR}",
        f"mount -t tmpfs none {CONTAINER_LEDGER_DIR}",
    ]
    for attack in attacks:
        res = ctr.sh(attack)
        assert res.rc != 0, f"{attack!r} succeeded inside the container: {res}"
    # python's mmap write of the file (the old shared-memory design's weak point) cannot even map it
    res = ctr.sh(f"python3 -c \"import mmap; f=open('{LEDGER}','r+b')\"")
    assert res.rc != 0, res
    over = ctr.alloc(16 * MIB + 1)
    assert over["rc"] == 2 and over["free"] == 16 * MIB, over
    assert ctr.alloc(16 * MIB)["rc"] == 0


def test_moving_the_fixed_paths_away_fails_closed(ctr: Container) -> None:
    """/var/run/hcs itself is a directory of the container's rootfs, so it CAN be renamed; then the
    quota file is missing while /etc/ld.so.preload still names the interceptor: a managed container
    without its quota refuses every device allocation instead of running unlimited."""
    ctr.hold(48 * MIB)
    res = ctr.sh("mv /var/run/hcs /var/run/hcs.moved && mkdir -p /var/run/hcs/shm")
    assert res.rc == 0, res
    for nbytes in (1, 16 * MIB, Q + 1):
        r = ctr.run(T_CUDA, "alloc", str(nbytes), extra={"HCS_VRAM_QUOTA": "100Gi"})
        assert r.json()["rc"] == 2, r
        assert "every device allocation is refused" in r.err


def test_forged_quota_file_and_ledger_in_place_of_the_mounts_fail_closed(ctr: Container) -> None:
    """After renaming /var/run/hcs away, the container writes its own quota file ("* 100Gi") and an
    empty ledger at the fixed paths. They are not read-only mount points (only the runtime, or
    CAP_SYS_ADMIN, makes those), so the interceptor refuses every allocation."""
    ctr.hold(48 * MIB)
    res = ctr.sh("mv /var/run/hcs /var/run/hcs.moved && mkdir -p /var/run/hcs/shm && "
                 f"echo '* 100Gi' > {CONTAINER_QUOTA_FILE} && : > {LEDGER} && chmod -R a+rX /var/run/hcs")
    assert res.rc == 0, res
    for nbytes in (1, Q + 1):
        r = ctr.run(T_CUDA, "alloc", str(nbytes))
        assert r.json()["rc"] == 2, r
        assert "is not a read-only mount" in r.err, r.err
    # the same with the forged directory made read-only by a bind mount is impossible without
    # CAP_SYS_ADMIN
    assert ctr.sh("mount --bind -o ro /var/run/hcs /var/run/hcs").rc != 0


def test_dlmopen_into_a_new_namespace_is_refused(ctr: Container) -> None:
    """A library loaded with dlmopen(LM_ID_NEWLM) binds to a second copy of libcuda that no preload
    reaches; the interceptor refuses such loads while a quota is configured."""
    lib = str(BUILD / "tests" / "libt_ns.so")
    res = ctr.run(T_CUDA, "dlmopen_alloc", str(2 * Q), lib)
    assert res.json() == {"dlmopen": "refused", "rc": -1, "error_set": True}, res
    assert "dlmopen" in res.err and "refused" in res.err
    res = ctr.run(T_CUDA, "dlmopen_alloc", str(2 * Q), lib, unset=["LD_PRELOAD"])
    assert res.json()["dlmopen"] == "refused", res
    refused_at_boundary(ctr)  # ordinary use unaffected


@pytest.mark.parametrize("how", ["rtld_next", "dlvsym"])
def test_symbol_lookups_hand_out_only_limited_functions(ctr: Container, how: str) -> None:
    """dlsym(RTLD_NEXT, "cuMemAlloc_v2") gets the hook; dlvsym finds no unversioned driver symbol."""
    res = ctr.run(T_CUDA, "lookup_alloc", str(Q + 1), how).json()
    assert res["rc"] in (2, -1) and res["lookup"] in ("hook", "null"), res
    if how == "rtld_next":
        assert res == {"lookup": "hook", "rc": 2}


def test_forked_children_share_the_quota(ctr: Container) -> None:
    res = ctr.run(T_CUDA, "fork", extra={"HCS_TEST_QUOTA": str(Q)})
    assert res.rc == 0 and "ok fork" in res.out, res


def test_closing_every_fd_neither_frees_the_share_nor_opens_the_quota(ctr: Container) -> None:
    """A process that closes all its fds (the ledger's included) keeps its share counted (the
    ledger's open file description stays pinned by a read-only mapping) and is refused from then on."""
    holder = ctr.hold(48 * MIB, case="closefds_hold")
    first = json.loads(holder.first_lines[0])  # type: ignore[attr-defined]
    assert first == {"first": 0, "second": 2}, first
    over = ctr.alloc(16 * MIB + 1)
    assert over["rc"] == 2 and over["free"] == 16 * MIB, over
    assert ctr.alloc(16 * MIB)["rc"] == 0


def test_thread_and_process_races_never_exceed_the_quota(ctr: Container) -> None:
    """2 processes x 8 threads allocate/free at random far above the quota; an observer in the same
    container reads every lease under the ledger lock: never above the quota, nothing left after."""
    stop = ctr.root / "stop"
    t_stress = str(BUILD / "tests" / "t_stress")
    workers = [ctr.popen(t_stress, "worker", "8", "1500", str(8 * MIB), str(seed)) for seed in (1, 2)]
    observer = ctr.popen(t_stress, "observer", CONTAINER_LEDGER_DIR, str(Q), str(stop))
    try:
        results = []
        for w in workers:
            out, err = w.communicate(timeout=300)
            assert w.returncode == 0, f"{out}\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.touch()
    out, err = observer.communicate(timeout=120)
    seen = json.loads(out.strip().splitlines()[-1])
    assert sum(r["oom"] for r in results) > 10, "the quota was never the limit: the test proves nothing"
    assert seen["violations"] == 0 and seen["max"] <= Q and seen["errors"] == 0, seen
    assert seen["final"] == 0, seen


GPU_UUIDS = ["GPU-5f0c2f3c-0000-4000-8000-00000000000a", "GPU-5f0c2f3c-0000-4000-8000-00000000000b",
             "GPU-5f0c2f3c-0000-4000-8000-00000000000c"]


@pytest.fixture
def multi(built: None, tmp_path: Path) -> Iterator[tuple[Container, list[str]]]:
    """A container given GPUs a (64Mi) and b (32Mi) of a node with three; c belongs to someone else."""
    profile = {**PROFILE, "devices": [
        {**PROFILE["devices"][0], "uuid": u, "pci_bus_id": f"0000:0{i + 1}:00.0"}  # type: ignore[dict-item]
        for i, u in enumerate(GPU_UUIDS)]}
    host = tmp_path / "host"
    host.mkdir()
    quotas = [64 * MIB, 32 * MIB]
    (host / "quota").write_text(quota_file_text(quotas))
    devs = [replace(device(Vendor.NVIDIA, i, 1), uuid=GPU_UUIDS[i]) for i in range(2)]
    create_ledger(host / "ledger", [d.uuid for d in devs])
    ensure_preload_file(host / "ld.so.preload")
    edits = container_edits(
        devs, quotas, QuotaFiles(str(host / "quota"), CONTAINER_QUOTA_FILE, str(host / "ledger"), CONTAINER_LEDGER_DIR),
        InjectionOptions(interceptor_host_dir=str(library().parent), device_isolation=False,
                         preload_host_path=str(host / "ld.so.preload")))
    env = base_env(tmp_path, profile)
    env.update({k: v for k, v in edits.env if k.startswith("HCS_") or k == "LD_PRELOAD"})
    # the agent's selection (a, b); the simulated driver sees all three cards, like a node without
    # device-node isolation, so "someone else's card" is reachable by name here
    env["CUDA_VISIBLE_DEVICES"] = ",".join(GPU_UUIDS[:2])
    c = Container(tmp_path / "ctr", [Bind(m.host_path, m.container_path, m.read_only) for m in edits.mounts], env)
    try:
        yield c, GPU_UUIDS
    finally:
        c.close()


def _on(c: Container, ordinal: int, nbytes: int, visible: str) -> dict[str, object]:
    return c.run(T_CUDA, "alloc_on", str(ordinal), str(nbytes), extra={"CUDA_VISIBLE_DEVICES": visible}).json()


def test_reordering_cuda_visible_devices_moves_no_gpu_to_another_quota(multi: tuple[Container, list[str]]) -> None:
    """CUDA_VISIBLE_DEVICES is the container's to set (launchers give each rank one GPU), and it
    renumbers CUDA ordinals. The interceptor maps each ordinal to the agent's device by UUID (the
    device list in the read-only ledger dir), so a GPU keeps its own quota line and ledger whatever
    its ordinal: reordering gains nothing, and a card the agent did not give is refused."""
    c, (a, b, other) = multi
    c.hold(64 * MIB, case="hold_on", ordinal=0)  # GPU a full, in the agent's order
    swapped = f"{b},{a}"
    got = _on(c, 1, 1, swapped)  # GPU a again, now as ordinal 1 (which was b's quota line and ledger)
    assert got["rc"] == 2 and got["total"] == 64 * MIB and got["free"] == 0, got
    got = _on(c, 0, 32 * MIB + 1, swapped)  # GPU b as ordinal 0 keeps b's 32Mi, not a's 64Mi
    assert got["rc"] == 2 and got["total"] == 32 * MIB, got
    assert _on(c, 0, 32 * MIB, swapped) == {"rc": 0, "free": 0, "total": 32 * MIB}
    # one GPU per rank (legitimate): b alone is ordinal 0 and is held to b's quota
    assert _on(c, 0, 32 * MIB, b) == {"rc": 0, "free": 0, "total": 32 * MIB}
    got = _on(c, 0, 32 * MIB + 1, b)
    assert got["rc"] == 2, got
    # a card the agent did not give this container: nothing of it
    got = _on(c, 0, 1, other)
    assert got["rc"] == 2 and got["free"] == 0, got


def test_mount_paths_admission_must_deny() -> None:
    """A pod's own volumeMount at (or below) an agent mount path shadows it (verified on the local
    cluster: a read-only ConfigMap subPath at /var/run/hcs/quota replaced the quota). The rule the
    admission webhook applies to quota'd pods; ancestors are mounted first and are harmless."""
    for bad in ("/etc/ld.so.preload", "/var/run/hcs/quota", "/var/run/hcs", "/var/run/hcs/shm/hcs-vram.ledger",
                "/run/hcs/quota", "/usr/local/hcs/lib", "/usr/local/hcs/lib/libhcs_interceptor.so",
                "//var/run//hcs/./quota"):
        assert shadows_managed_path(bad), bad
    for ok in ("/etc", "/var/run", "/run", "/usr/local", "/data", "/etc/ld.so.preload.d", "/var/run/hcs2",
               "/etc/myapp"):
        assert not shadows_managed_path(ok), ok
