"""End to end with real VMs (issue 5): etcd + 3 scribed + 3 hypercored on loopback, each
hypercored with a private libvirtd running QEMU under TCG, driven through hc3. The
guest is tests/guest in loop mode: it writes (or verifies) a stamped pattern, then
appends records "tag, boot id, seq" to a log on its disk, one O_DIRECT write at a time,
continuing where the log it sees ends. Reading that log back from scribed shows which
instance wrote what, in which order: each boot must form one contiguous run (never two
writers), and a clone, a revert or a restarted VM must continue exactly where its data
ends.

Stories, in order (they share one cluster; the later ones lose nodes):
  A: create -> boot -> guest writes -> snapshot -> guest writes more -> clone boots and
     sees the snapshot's data, not the later writes -> revert -> boots at the snapshot.
  B: the VM's node, which also owns the storage pool, dies (QEMU, libvirtd, hypercored,
     scribed SIGKILLed) -> the VM runs on another node with its data; kill-to-first-record time
     printed ("failover ... s").
  C: the VM's hypercored freezes (SIGSTOP: lease lost, QEMU and scribed keep running) ->
     the VM restarts on the last node at a new epoch; the old instance, still running,
     is shut out by the storage fence (its writes fail) and, once its hypercored wakes,
     is forced off.
  D: the node killed in B comes back (scribed, libvirtd and hypercored restarted): nothing runs
     there by itself; the VM, restarted there, reads its data through that node's
     caught-up storage and continues its log.
  E: the storage pool's owner, on another node, is SIGKILLed: the VM keeps running with
     the same boot (its node's NBD relay follows the pool to the next owner).
"""

import os
import signal
import time

import pytest

import guest
from vmstack import VmStack

# A restart on a survivor: lease TTL (3 s) + a boot under TCG (~10 s) + slack for 2 busy cores.
FAILOVER_TIMEOUT_S = 90
# What README and RELIABILITY.md claim from a node's death to the restarted guest's first
# record (measured ~10 s): asserted, not just waited for.
FAILOVER_CLAIM_S = 30
BOOT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def stack(request):
    s = VmStack(nodes=3)
    try:
        s.start()
    except Exception as e:
        s.cleanup()
        pytest.fail("the VM stack could not start (needs root, libvirt, QEMU): %s" % e, pytrace=False)
    try:
        yield s
    finally:
        if request.session.testsfailed:
            print(s.logs())
        s.cleanup()


def force_off(stack, name):
    stack.hc3("vm", "force-off", name, "--wait", "--timeout", "60")


def test_a_boot_snapshot_clone_revert_with_a_real_guest(stack):
    t0 = time.monotonic()
    vm = stack.create_loop_vm("app", "app")
    assert vm["spec"]["boot"]["kernel_path"] == stack.image.kernel, vm
    vm = stack.wait_running("app")
    node = stack.nodes[vm["node"]]
    boot_a, pattern, head, t = guest.wait_new_boot(node.console("app"), set(), BOOT_TIMEOUT_S,
                                                   "the first boot of app", min_seq=10)
    assert (pattern, head) == ("written", 0)
    print("story A: vm app booted on %s and wrote 10 records %.1f s after create" % (node.name, t - t0))

    stack.hc3("vm", "snapshot", "app", "s1")
    seen_at_snapshot = guest.LoopConsole(node.console("app")).last_seq[boot_a]
    guest.wait_seq(node.console("app"), boot_a, seen_at_snapshot + 40)  # the guest writes more

    stack.hc3("vm", "clone", "app", "app-s1", "--snapshot", "s1")
    stack.hc3("vm", "start", "app-s1")
    clone_node = stack.nodes[stack.wait_running("app-s1")["node"]]
    boot_c, pattern, k, _ = guest.wait_new_boot(clone_node.console("app-s1"), {boot_a}, BOOT_TIMEOUT_S,
                                                "the clone's boot")
    # The clone sees the pattern and the log as the snapshot holds them: it continues
    # after the records written before the snapshot, not after the later ones.
    assert pattern == "verified"
    assert seen_at_snapshot < k <= seen_at_snapshot + 20, (seen_at_snapshot, k)
    force_off(stack, "app-s1")
    force_off(stack, "app")

    original = guest.log_runs(guest.read_log(stack.uri("app-root"), k + 200))
    clone = guest.log_runs(guest.read_log(stack.uri("app-s1-root"), k + 200))
    assert len(original) == 1 and original[0][0] == boot_a and original[0][2] >= k + 20, original
    assert clone[0] == (boot_a, 0, k - 1), clone
    assert len(clone) == 2 and clone[1][0] == boot_c and clone[1][1] == k, clone
    print("story A: snapshot at log slot %d; original went on to slot %d, the clone wrote its own from %d"
          % (k, original[0][2], k))

    stack.hc3("vm", "revert", "app", "s1")
    assert guest.log_runs(guest.read_log(stack.uri("app-root"), k + 200)) == [(boot_a, 0, k - 1)]
    blocks = guest.read_blocks(stack.uri("app-root"))
    for b in range(guest.BLOCK_COUNT):
        assert blocks[b] == guest.expected_block("app", 0, b), "pattern block %d after revert" % b

    # Booted again, the reverted VM verifies the pattern and continues at the snapshot.
    stack.hc3("vm", "start", "app")
    node = stack.nodes[stack.wait_running("app")["node"]]
    _, pattern, head, _ = guest.wait_new_boot(node.console("app"), {boot_a}, BOOT_TIMEOUT_S,
                                              "app's boot after the revert")
    assert (pattern, head) == ("verified", k)
    force_off(stack, "app")
    stack.hc3("vm", "delete", "app-s1")


def test_b_node_death_restarts_the_vm_elsewhere_with_its_data(stack):
    stack.create_loop_vm("ha", "ha")
    vm = stack.wait_running("ha")
    x = stack.nodes[vm["node"]]
    epoch = vm["epoch"]
    boot_1, pattern, _, _ = guest.wait_new_boot(x.console("ha"), set(), BOOT_TIMEOUT_S, "ha's first boot",
                                                min_seq=20)
    assert pattern == "written"
    pool_owner = stack.cluster.owner().id
    # The stack puts the first VMs on the pool owner's node: the node death costs the
    # pool its owner too, and the restart waits for the storage to fail over as well.
    assert pool_owner == x.scribed.id, (pool_owner, x.name)

    t_kill = stack.kill_node(x)
    stack.killed = x
    last_1 = guest.LoopConsole(x.console("ha")).last_seq[boot_1]
    vm = stack.wait_running("ha", timeout_s=FAILOVER_TIMEOUT_S, not_on=x.name)
    t_running = time.monotonic()
    y = stack.nodes[vm["node"]]
    boot_2, pattern, head, t_record = guest.wait_new_boot(y.console("ha"), {boot_1}, FAILOVER_TIMEOUT_S,
                                                          "ha's restart")
    print("failover (node %s killed%s): vm ha running on %s at epoch %d after %.1f s, its first record %.1f s "
          "after the kill" % (x.name, ", it owned the storage pool" if pool_owner == x.scribed.id else "",
                              y.name, vm["epoch"], t_running - t_kill, t_record - t_kill))
    assert vm["epoch"] > epoch
    # The data came along: the pattern verified, and the log continues after every record
    # the dead instance reported written.
    assert pattern == "verified"
    assert head > last_1, (head, last_1)
    guest.wait_seq(y.console("ha"), boot_2, head + 10)
    runs = guest.log_runs(guest.read_log(stack.uri("ha-root"), head + 300))
    assert [r[0] for r in runs] == [boot_1, boot_2], runs
    assert runs[0] == (boot_1, 0, head - 1) and runs[1][1] == head, runs
    assert t_record - t_kill < FAILOVER_CLAIM_S, t_record - t_kill


def test_c_frozen_node_is_fenced_by_storage_and_forces_its_vm_off(stack):
    vm = stack.vm("ha")
    y = stack.nodes[vm["node"]]
    boot_y = guest.LoopConsole(y.console("ha")).starts[-1][0]
    others = [n for n in stack.nodes.values() if n is not y and n.alive()]
    assert len(others) == 1, "story B must leave two nodes"
    z = others[0]

    t_freeze = stack.freeze_hypercored(y)
    vm = stack.wait_running("ha", timeout_s=FAILOVER_TIMEOUT_S, not_on=y.name)
    assert vm["node"] == z.name
    known = {s[0] for s in guest.LoopConsole(y.console("ha")).starts}
    boot_z, pattern, head, t_record = guest.wait_new_boot(z.console("ha"), known, FAILOVER_TIMEOUT_S,
                                                          "ha's restart on z")
    print("failover (hypercored of %s frozen): vm ha's first record on %s %.1f s after the freeze"
          % (y.name, z.name, t_record - t_freeze))
    assert pattern == "verified"
    # The old instance still runs on y, but scribed refuses its epoch: it only fails.
    assert y.qemu_pid("ha") is not None, "the frozen node's QEMU should still run"
    guest.wait_console(y.console("ha"), lambda c: any("boot=%s" % boot_y in f for f in c.failures), 60,
                       "a refused write of the old instance")
    guest.wait_seq(z.console("ha"), boot_z, head + 20)
    runs = guest.log_runs(guest.read_log(stack.uri("ha-root"), head + 300))
    assert runs[-2][0] == boot_y and runs[-1][0] == boot_z and runs[-1][1] == head, runs

    # Awake again, y finds its lease gone and forces its copy off.
    stack.freeze_hypercored(y, frozen=False)
    deadline = time.time() + 60
    while "ha" in y.domains():
        assert time.time() < deadline, "the old instance still runs on %s" % y.name
        time.sleep(0.5)
    assert stack.vm("ha")["node"] == z.name
    runs = guest.log_runs(guest.read_log(stack.uri("ha-root"), head + 300))
    assert runs[-1][0] == boot_z, runs


def test_d_the_dead_node_returns_and_runs_the_vm_on_its_caught_up_storage(stack):
    x = stack.killed
    stack.restart_node(x)
    assert x.domains() == [], "nothing of the dead node's may run again by itself"

    force_off(stack, "ha")
    end = guest.log_runs(guest.read_log(stack.uri("ha-root"), 1000))[-1][2]
    known = {s[0] for n in stack.nodes.values() for s in guest.LoopConsole(n.console("ha")).starts}
    stack.hc3("vm", "start", "ha")
    vm = stack.wait_running("ha")
    assert vm["node"] == x.name, "placement should prefer the returned node (most free RAM): %s" % vm
    boot, pattern, head, _ = guest.wait_new_boot(x.console("ha"), known, BOOT_TIMEOUT_S,
                                                 "ha's boot on the returned node")
    # Through the returned node's scribed (its copies were stale, caught up since): the
    # pattern and every record, continuing right after the last one.
    assert (pattern, head) == ("verified", end + 1)
    guest.wait_seq(x.console("ha"), boot, head + 5)
    runs = guest.log_runs(guest.read_log(x.scribed.uri("ha-root"), head + 100))
    assert runs[-1][0] == boot and runs[-1][1] == head and len(runs) == 4, runs
    print("story D: %s returned; vm ha (epoch %d) runs there and continued the log at record %d"
          % (x.name, vm["epoch"], head))


def test_e_a_vm_keeps_running_while_the_pool_owner_elsewhere_dies(stack):
    """E: the storage pool's owner (scribed, on another node) is SIGKILLed under the
    running VM: its node's relay follows the pool to the next owner, and the guest goes
    on with the same boot, no write failing, its log contiguous."""
    vm = stack.vm("ha")
    x = stack.nodes[vm["node"]]
    owner = stack.cluster.owner()
    assert owner.id != x.scribed.id, "story D leaves the VM on a node that does not own the pool"
    boot = guest.LoopConsole(x.console("ha")).starts[-1][0]
    before = guest.LoopConsole(x.console("ha")).last_seq[boot]
    t_kill = time.monotonic()
    owner.kill(signal.SIGKILL)
    _, t_on = guest.wait_console(x.console("ha"), lambda c: c.last_seq.get(boot, -1) >= before + 20,
                                 FAILOVER_TIMEOUT_S, "20 more records of the same boot")
    after = guest.LoopConsole(x.console("ha"))
    assert after.starts[-1][0] == boot and not after.failures, after.tail()
    assert "reconnected after" in x.scribed.log_text(), x.scribed.log_text()[-3000:]
    print("story E: pool owner (scribed %d) SIGKILLed; vm ha on %s wrote on with the same boot, "
          "20 records later %.1f s after the kill" % (owner.id, x.name, t_on - t_kill))
    owner.start()
    stack.cluster.wait_redundant()
    head = after.last_seq[boot]
    runs = guest.log_runs(guest.read_log(stack.uri("ha-root"), head + 300))
    assert runs[-1][0] == boot and runs[-1][2] >= head, runs


def test_the_log_check_catches_two_writers_and_holes():
    """guest.log_runs on made-up logs: what the stories rely on must be able to fail."""
    def rec(boot, seq):
        return ("t", boot, seq)

    good = [rec("aaaaaaaa", 0), rec("aaaaaaaa", 1), rec("bbbbbbbb", 2), rec("bbbbbbbb", 3), None, None]
    assert guest.log_runs(good) == [("aaaaaaaa", 0, 1), ("bbbbbbbb", 2, 3)]
    # The old instance wrote again after the new one had started.
    interleaved = [rec("aaaaaaaa", 0), rec("bbbbbbbb", 1), rec("aaaaaaaa", 2), rec("bbbbbbbb", 3)]
    with pytest.raises(AssertionError, match="wrote again after another instance had started"):
        guest.log_runs(interleaved)
    # Two instances that both started at slot 2: the later one's records land on top of
    # the earlier's, and a slot holds a seq the writer numbered differently.
    with pytest.raises(AssertionError, match="out of place"):
        guest.log_runs([rec("aaaaaaaa", 0), rec("bbbbbbbb", 1), rec("cccccccc", 1)])
    with pytest.raises(AssertionError, match="empty slots"):
        guest.log_runs([rec("aaaaaaaa", 0), None, rec("aaaaaaaa", 2)])
