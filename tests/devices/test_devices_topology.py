from hcs.devices.catalog import default_catalog
from hcs.devices.model import Device, Link, LinkType, Vendor
from hcs.devices.topology import bandwidth_matrix, find_islands


def dev(i, links=(), vendor=Vendor.NVIDIA):
    return Device(vendor=vendor, model="a100-80g", name="A100", uuid=f"u{vendor}{i}", index=i,
                  pci_bus_id=f"0000:{i:02x}:00.0", numa_node=0, vram_total_bytes=80 << 30, vram_used_bytes=0,
                  compute=default_catalog().compute(default_catalog().by_id("a100-80g")),
                  links=tuple(Link(t, p, g) for t, p, g in links))


def ring(n, base=0, gbps=100.0):
    return [dev(base + i, [(LinkType.NVLINK, base + (i + 1) % n, gbps), (LinkType.NVLINK, base + (i - 1) % n, gbps)])
            for i in range(n)]


def test_two_rings_are_two_islands():
    devices, islands = find_islands(ring(4) + ring(4, base=4))
    assert sorted(i.members for i in islands) == [("nvidia-0", "nvidia-1", "nvidia-2", "nvidia-3"),
                                                  ("nvidia-4", "nvidia-5", "nvidia-6", "nvidia-7")]
    assert devices[0].island == devices[3].island != devices[4].island
    assert all(i.link_type == LinkType.NVLINK for i in islands)
    # a ring is not a full mesh: the weakest pair has no direct link
    assert all(i.min_gbps == 0.0 for i in islands)


def test_pcie_only_devices_are_singleton_islands():
    devices, islands = find_islands([dev(0), dev(1, [(LinkType.PCIE, 0, 16.0)])])
    assert len(islands) == 2 and all(i.link_type == LinkType.PCIE for i in islands)
    assert devices[0].island != devices[1].island


def test_vendors_never_share_an_island():
    devices = [dev(0, [(LinkType.NVLINK, 1, 600)]), dev(1, [(LinkType.NVLINK, 0, 600)]),
               dev(0, [(LinkType.HCCS, 1, 56)], vendor=Vendor.ASCEND),
               dev(1, [(LinkType.HCCS, 0, 56)], vendor=Vendor.ASCEND)]
    _, islands = find_islands(devices)
    assert {(i.vendor, i.members) for i in islands} == {(Vendor.NVIDIA, ("nvidia-0", "nvidia-1")),
                                                         (Vendor.ASCEND, ("ascend-0", "ascend-1"))}
    assert all(i.min_gbps > 0 for i in islands)


def test_bandwidth_matrix_sums_parallel_links():
    m = bandwidth_matrix([dev(0, [(LinkType.NVLINK, 1, 50), (LinkType.NVLINK, 1, 50)]), dev(1)])
    assert m[("nvidia-0", "nvidia-1")] == 100
    assert m[("nvidia-1", "nvidia-0")] == 0


def test_ascend_numa_from_affinity_cpus(tmp_path):
    from hcs.devices.ascend import numa_of_cpus

    for n, cpus in ((0, "0-3"), (1, "4-7")):
        (tmp_path / f"node{n}").mkdir()
        (tmp_path / f"node{n}" / "cpulist").write_text(cpus + "\n")
    assert numa_of_cpus("4-5", tmp_path) == 1
    assert numa_of_cpus("0,2", tmp_path) == 0
    assert numa_of_cpus("0-47", tmp_path) == -1  # not this host's layout: unknown, not a guess
    assert numa_of_cpus("garbage", tmp_path) == -1
