"""The lab: from settings to ready guests (image, kernel, acceleration, snapshot), lazily."""

from __future__ import annotations

import functools
import itertools
import sys
import time
from pathlib import Path
from collections.abc import Callable

from qemu.qmp import QMPError

from pytest_fuselab import cache
from pytest_fuselab.vm import accel
from pytest_fuselab.build import image
from pytest_fuselab.build import initramfs
from pytest_fuselab.build.kernel import boot as kernel
from pytest_fuselab.build import recipe
from pytest_fuselab.vm import snapshot
from pytest_fuselab.vm.snapshot import Snapshot
from pytest_fuselab.build.stack import build as stack
from pytest_fuselab.cache import cache_dir
from pytest_fuselab.errors import BootError, FuselabError
from pytest_fuselab.guestconfig import configure_from
from pytest_fuselab.vm.guest import Guest
from pytest_fuselab.vm.qemu import MachineSpec, find_qemu
from pytest_fuselab.settings import Settings
from pytest_fuselab.text import printable

Progress = Callable[[str], None]
# How a snapshot that passed its digests can still fail to restore: QEMU rejects the state (QMP
# disconnects, the migration fails) or the guest does not answer after it (Guest.restore's BootError).
# Failures before the state is read (the overlay cannot be made, QEMU does not start: a full TMPDIR, a
# missing binary) are the host's: the snapshot is not blamed for them.
RESTORE_FAILURES = (BootError, QMPError, EOFError, ConnectionError)


def stderr_progress(message: str) -> None:
    """One progress line on stderr; names and titles in it may come from inputs, so escaped."""
    print(f"fuselab: {printable(message)}", file=sys.stderr, flush=True)


class Lab:
    """Builds what guests need once, then hands out guests restored from a snapshot."""

    def __init__(self, settings: Settings, workdir: Path, progress: Progress = stderr_progress) -> None:
        self.settings = settings
        self.workdir = workdir
        self.progress = progress
        self._count = itertools.count(1)  # next() is atomic: guests may be made from several threads

    @functools.cached_property
    def recipe(self) -> recipe.Recipe:
        return recipe.load(self.settings.image)

    @functools.cached_property
    def image(self) -> image.Image:
        find_qemu()
        base, layer = stack.image_inputs(self.recipe, self.settings.stack, self.progress)
        return image.ensure(base, self.progress, layer=layer)

    @functools.cached_property
    def foreign(self) -> kernel.Kernel | None:
        """The kernel the settings name, with its modules and checked config (None: the image's)."""
        found = kernel.locate(self.settings.kernel, self.settings.modules, self.progress)
        if found is not None:
            self.progress(found.describe())
        return found

    @property
    def kernel(self) -> Path:
        return self.foreign.bzimage if self.foreign else self.image.kernel

    @functools.cached_property
    def accel(self) -> accel.Choice:
        choice = accel.choose(self.settings.accel, self.kernel)
        self.progress(f"acceleration: {choice.accel} ({choice.reason})")
        return choice

    @functools.cached_property
    def initrd(self) -> Path:
        """The image's initramfs plus a layer with this lab's /init and guest programs."""
        base = kernel.base_initrd(self.foreign, self.recipe.initramfs_modules) if self.foreign else self.image.initrd
        return initramfs.lab_layer(base, recipe.guest_files(), cache_dir() / "initrd")

    @functools.cached_property
    def spec(self) -> MachineSpec:
        disk = self.foreign.disk if self.foreign else None
        return MachineSpec(kernel=self.kernel, initrd=self.initrd, accel=self.accel.accel,
                           memory_mb=self.settings.memory, cpus=self.settings.cpus, modules=disk,
                           cmdline=(f"fuselab_modules={kernel.MODULES_SERIAL}",) if disk else ())

    @functools.cached_property
    def snapshot(self) -> snapshot.Snapshot:
        return snapshot.ensure(self.spec, self.image.base, self.workdir, self.progress,
                               self.settings.boot_timeout, self.settings.watchdog)

    def rundir(self, name: str | None = None) -> Path:
        path = self.workdir / (name or f"guest{next(self._count)}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def guest(self, rundir: Path | None = None, ssh_port: int | None = None) -> Guest:
        """A guest restored from the booted snapshot (about a second under TCG); a snapshot that
        fails to restore is set aside and made again, once."""
        rundir = rundir or self.rundir()
        snap = self.snapshot
        identity = _identity(snap.directory)
        try:
            guest = self._restored(snap, rundir, ssh_port)
        except RESTORE_FAILURES as exc:
            why = f"restoring it failed: {_first_line(exc)}"
            if _identity(snap.directory) == identity:  # says so, and that it is made again
                cache.set_aside(snap.directory, why, self.progress)
            else:
                self.progress(f"snapshot {snap.directory.name}: {why}; another process has set it aside")
            self.__dict__.pop("snapshot", None)  # the cached_property: made again on next use
            guest = self._restored_again(self.snapshot, rundir, ssh_port)
        try:
            configure_from(guest, self.settings)
        except BaseException:
            guest.shutdown()
            raise
        return guest

    def _restored(self, snap: Snapshot, rundir: Path, ssh_port: int | None) -> Guest:
        guest = Guest(self.spec, rundir, ssh_port)
        try:
            guest.restore(snap.root, snap.state)
        except BaseException:
            guest.shutdown()
            raise
        return guest

    def _restored_again(self, snap: Snapshot, rundir: Path, ssh_port: int | None) -> Guest:
        """The second restore, from a fresh snapshot: its failure is the lab's error."""
        try:
            return self._restored(snap, rundir, ssh_port)
        except RESTORE_FAILURES as exc:
            if isinstance(exc, FuselabError):
                raise
            raise BootError(f"restoring a freshly made snapshot {snap.directory} failed too: "
                            f"{_first_line(exc)}") from exc

    def cold_guest(self, rundir: Path | None = None, ssh_port: int | None = None) -> Guest:
        """A guest booted from the base image, without the snapshot."""
        guest = Guest(self.spec, rundir or self.rundir(), ssh_port)
        start = time.monotonic()
        try:
            guest.boot(self.image.base, self.settings.boot_timeout, self.settings.watchdog)
        except BaseException:
            guest.shutdown()
            raise
        guest.boot_seconds = time.monotonic() - start
        return guest


def _identity(directory: Path) -> int | None:
    """Which directory sits at `directory` now (its inode: set aside, it keeps it elsewhere), or None."""
    try:
        return directory.stat().st_ino
    except OSError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
