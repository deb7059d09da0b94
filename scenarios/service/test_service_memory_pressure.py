"""Memory-pressure reclaim of a service-mode fuse4fs (seed 004, "fuse4fs: reclaim buffer cache
under memory pressure").

fuse4fs cannot open the pressure stall files from its sandbox, so it asks the mount helper to
open them (/proc/pressure/memory and its cgroup's memory.pressure), arms a PSI trigger on them
and, when it fires, shrinks its block cache and trims its heap.  Seen from the guest: the
server holds the pressure files, its cgroup stalls on memory once memory.high is squeezed
below what the server uses, and the server's resident memory then falls while the mount keeps
serving the same data.  When the memory does not come back, the test is an expected failure
carrying the figures (a finding about the stack, not a lab failure).
"""

from __future__ import annotations

import re
import time

import pytest

from pytest_fuselab.plugin.servicelab import make_source

MNT = "/mnt/psi"
FILE_MIB = 24


def rss_kib(service, pid):
    status = service.sh(f"cat /proc/{pid}/status").stdout
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


def stall_total(service, cgroup):
    """Microseconds some task of `cgroup` waited on memory, in all ("some ... total=")."""
    text = service.sh(f"cat {cgroup}/memory.pressure").stdout
    return int(re.search(r"^some .*total=(\d+)", text, re.M).group(1))


def read_back(service, seconds=240):
    """Drop the kernel's caches, then read the file: every block comes from the server."""
    return service.sh(f"echo 3 > /proc/sys/vm/drop_caches; timeout -s KILL {seconds} sha256sum {MNT}/big",
                      timeout=seconds + 30)


def test_memory_pressure_reclaim_is_observable(service, fuselab_disk):
    target = service.target()
    if target.unit != "fuse4fs":
        pytest.skip(f"PSI reclaim is fuse4fs's (seed 004); this stack serves with {target.unit}")
    if service.sh("test -r /proc/pressure/memory").exit_status != 0:
        pytest.skip("the guest kernel has no pressure stall information (CONFIG_PSI, or psi=1 to enable it)")
    service.start(target)
    source = make_source(service, target, fuselab_disk)
    service.sh(f"mkdir -p {MNT}")
    mount = service.sh(f"timeout 120 fuservicemount3 {source} {MNT} -t ext4", timeout=150)
    assert mount.exit_status == 0, f"{mount.stderr}\n{service.evidence('fuse4fs@*')}"
    pid = service.server_pid(target)
    why = lambda: service.evidence("fuse4fs@*")  # noqa: E731

    fds = service.sh(f"ls -l /proc/{pid}/fd").stdout
    watched = sorted(set(re.findall(r"-> (/proc/pressure/memory|/sys/fs/cgroup/\S*memory\.pressure)", fds)))
    assert watched, f"fuse4fs (pid {pid}) holds no memory pressure file:\n{fds}\n{why()}"
    cgroup = "/sys/fs/cgroup" + service.sh(f"cat /proc/{pid}/cgroup").stdout.strip().split("::", 1)[1]

    written = service.sh(f"dd if=/dev/urandom of={MNT}/big bs=1M count={FILE_MIB} conv=fsync status=none",
                         timeout=300)
    assert written.exit_status == 0, f"{written.stderr}\n{why()}"
    digest = read_back(service).stdout.split()[0]
    warm_rss, stalled = rss_kib(service, pid), stall_total(service, cgroup)
    current = int(service.sh(f"cat {cgroup}/memory.current").stdout)

    high = max(current * 2 // 3, 4 << 20)  # below what the instance holds now
    service.sh(f"echo {high} > {cgroup}/memory.high")
    squeezed = read_back(service, 60)  # the server must allocate again, squeezed under memory.high
    figures = []
    for _ in range(15):  # the trigger's window is 2 s: give the handler time to run
        figures.append((rss_kib(service, pid), stall_total(service, cgroup)))
        if figures[-1][0] < warm_rss * 3 // 4:
            break
        time.sleep(1)
    service.sh(f"echo max > {cgroup}/memory.high")
    again = read_back(service)
    read = "completed" if squeezed.exit_status == 0 else "did not complete in 60 s"
    report = (f"fuse4fs pid {pid} in {cgroup}, watching {watched}; before: VmRSS {warm_rss} KiB, "
              f"memory.current {current >> 10} KiB, stall total {stalled} us; memory.high {high >> 10} KiB: "
              f"a read of {FILE_MIB} MiB {read}; "
              f"then (VmRSS KiB, stall total us) each second: {figures}")
    print(report)
    assert again.exit_status == 0 and again.stdout.split()[0] == digest, (
        f"data changed or not served after the pressure: {again}\n{report}")
    assert figures[-1][1] > stalled, f"no memory stall in the instance's cgroup: {report}\n{why()}"
    if figures[-1][0] >= warm_rss * 3 // 4:
        service.sh(f"umount {MNT}")
        pytest.xfail(f"finding: fuse4fs kept its cache through {(figures[-1][1] - stalled) // 1000} ms of memory "
                     f"stall in its cgroup (PSI reclaim not seen): {report}")
    assert service.sh(f"umount {MNT}").exit_status == 0, why()
