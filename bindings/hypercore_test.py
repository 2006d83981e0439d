"""The `hypercore` module: VM specs and their validation, placement, the N-1 check."""

import pytest

import hypercore

MIB = 1 << 20
GIB = 1 << 30


def web(**overrides):
    spec = hypercore.VmSpec(
        "web", 512 * MIB, vcpus=2,
        disks=[hypercore.VmDisk("root", 8 * GIB), hypercore.VmDisk("data", 1 * GIB, flash_priority=9, replication=3)],
        nics=[hypercore.VmNic(), hypercore.VmNic(vlan=42)],
        tags=["prod", "frontend"], description="the web server")
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


def test_a_valid_spec_validates_and_reads_back():
    spec = web()
    spec.validate()
    hypercore.validate_vm_spec(spec)
    assert spec.disks[1].replication == 3 and spec.disks[1].flash_priority == 9
    assert spec.nics[1].vlan == 42 and spec.nics[0].vlan is None and spec.nics[0].mac is None
    assert spec.cdrom_iso is None and spec.boot is None
    spec.boot = hypercore.VmBoot("/srv/vmlinuz", cmdline="console=ttyS0")
    spec.validate()
    assert (spec.boot.kernel_path, spec.boot.initrd_path, spec.boot.cmdline) == ("/srv/vmlinuz", "", "console=ttyS0")
    assert spec.matches_tags(["prod"]) and spec.matches_tags([]) and not spec.matches_tags(["prod", "db"])
    assert repr(spec.disks[0]) == "VmDisk(name='root', size_bytes=8589934592, flash_priority=4, replication=2)"


@pytest.mark.parametrize("overrides, field", [
    ({"name": "bad name"}, "name"),
    ({"vcpus": 0}, "vcpus"),
    ({"ram_bytes": 63 * MIB}, "ram_bytes"),
    ({"ram_bytes": 512 * MIB + 1}, "ram_bytes"),
    ({"tags": ["a", "a"]}, "tags[1]"),
    ({"cdrom_iso": ""}, "cdrom_iso"),
    ({"boot": hypercore.VmBoot("vmlinuz")}, "boot.kernel_path"),
    ({"boot": hypercore.VmBoot("/k", cmdline="a\nb")}, "boot.cmdline"),
    ({"disks": [hypercore.VmDisk("root", 4096), hypercore.VmDisk("root", 4096)]}, "disks[1].name"),
    ({"disks": [hypercore.VmDisk("root", 4096, replication=4)]}, "disks[0].replication"),
    ({"disks": [hypercore.VmDisk("root", 4096, flash_priority=12)]}, "disks[0].flash_priority"),
    ({"nics": [hypercore.VmNic(vlan=4095)]}, "nics[0].vlan"),
    ({"nics": [hypercore.VmNic(model="e1000")]}, "nics[0].model"),
    ({"nics": [hypercore.VmNic(mac="not-a-mac")]}, "nics[0].mac"),
])
def test_invalid_specs_name_the_field(overrides, field):
    with pytest.raises(hypercore.InvalidArgumentError) as e:
        web(**overrides).validate()
    assert str(e.value).startswith(field + ": "), str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, hypercore.Error)
    assert e.value.code == 3  # INVALID_ARGUMENT


def nodes():
    return [hypercore.PlacementNode("node1", 4 * GIB, 4), hypercore.PlacementNode("node2", 8 * GIB, 4),
            hypercore.PlacementNode("node3", 8 * GIB, 4)]


def test_placement_takes_the_most_free_ram_and_breaks_ties_by_name():
    choice = hypercore.place_vm(hypercore.VmDemand("web", 1 * GIB), nodes())
    assert (choice.node, choice.ram_free_bytes) == ("node2", 8 * GIB)
    placed = [hypercore.PlacedVm("a", "node2", 2 * GIB)]
    assert hypercore.place_vm(hypercore.VmDemand("web", 1 * GIB), nodes(), placed).node == "node3"
    ranked = hypercore.rank_nodes(nodes(), placed)
    assert [(r.node, r.ram_free_bytes // MIB) for r in ranked] == [("node3", 8192), ("node2", 6144), ("node1", 4096)]
    assert ranked[0].vcpus_max == 16
    # Dead nodes and nodes in maintenance take nothing.
    n = nodes()
    n[1].alive = False
    n[2].maintenance = True
    assert hypercore.place_vm(hypercore.VmDemand("web", 1 * GIB), n).node == "node1"
    # vCPU overcommit is an option.
    tight = hypercore.PlacementOptions(vcpu_overcommit_ratio=1.0)
    busy = [hypercore.PlacedVm("x", "node2", 1 * GIB, 4), hypercore.PlacedVm("y", "node3", 1 * GIB, 4)]
    assert hypercore.place_vm(hypercore.VmDemand("web", 1 * GIB, 2), nodes(), busy, tight).node == "node1"


def test_no_fit_raises_resource_exhausted_naming_the_vm():
    placed = [hypercore.PlacedVm("a", "node2", 5 * GIB), hypercore.PlacedVm("b", "node3", 5 * GIB)]
    with pytest.raises(hypercore.ResourceExhaustedError) as e:
        hypercore.place_vm(hypercore.VmDemand("db1", 6 * GIB, 2), nodes(), placed)
    assert str(e.value) == "no node can run vm db1 (6144 MiB RAM, 2 vCPUs): largest free RAM is 4096 MiB (node1)"
    assert e.value.code == 8
    with pytest.raises(hypercore.InvalidArgumentError):
        hypercore.place_vm(hypercore.VmDemand("x", GIB), nodes(), [], hypercore.PlacementOptions(0.5))


def test_n_minus_one_names_the_node_whose_vms_would_be_stranded():
    n = [hypercore.PlacementNode("node%d" % i, 8 * GIB, 8) for i in (1, 2, 3)]
    placed = [hypercore.PlacedVm("a1", "node1", 3 * GIB), hypercore.PlacedVm("a2", "node1", 3 * GIB),
              hypercore.PlacedVm("big", "node2", 7 * GIB), hypercore.PlacedVm("c", "node3", 2 * GIB)]
    conditions = hypercore.check_n_minus_one(n, placed)
    assert [(c.node, c.vms) for c in conditions] == [("node2", ["big"])]
    assert conditions[0].message == ("if node2 failed, 1 of its 1 VMs could not be restarted on the other nodes: "
                                     "big (7168 MiB, 1 vCPUs); largest free RAM left 6144 MiB (node3)")
    assert hypercore.check_n_minus_one(n, placed[:2]) == []
