"""The lab's exception tree: every error says what failed and what to do about it.

    FuselabError
    ├── SettingError        a bad option, environment variable or ini value
    ├── HostError           the host lacks something (QEMU, disk space, root, KVM)
    ├── ImageError          building or loading a guest image failed
    │   └── InputError      an input file (image, program, reproducer) is unreadable or malformed
    ├── MachineError        QEMU could not be started or died
    │   └── BootError       the guest did not come up (watchdog, timeout)
    └── GuestError          talking to a running guest failed
        ├── GuestLost       the guest went away (panic, QEMU exit)
        ├── GuestTimeout    a command or the guest did not answer in time
        └── CommandFailed   a command exited non-zero with check=True
"""

from __future__ import annotations

import shlex


class FuselabError(Exception):
    """Base of all errors raised by pytest-fuselab."""


class SettingError(FuselabError):
    """A setting has a value the lab cannot use; the message names its source."""


class HostError(FuselabError):
    """The host is missing something the lab needs."""


class ImageError(FuselabError):
    """A guest image could not be built, found or verified."""


class InputError(ImageError):
    """An input given to the lab cannot be read or is malformed; the message names it (and its line)."""


class MachineError(FuselabError):
    """QEMU failed; carries the command line and the end of its output."""

    def __init__(self, message: str, argv: list[str] | None = None, log_tail: str = "") -> None:
        self.argv = argv or []
        self.log_tail = log_tail
        parts = [message]
        if argv:
            parts.append("QEMU command: " + shlex.join(argv))  # runnable as shown, spaces and all
        if log_tail:
            parts.append("last output:\n" + log_tail)
        super().__init__("\n".join(parts))


class BootError(MachineError):
    """The guest did not finish booting."""


class GuestError(FuselabError):
    """Talking to a guest failed."""


class GuestLost(GuestError):
    """The guest is gone: QEMU exited or the channel closed."""


class GuestTimeout(GuestError):
    """The guest did not answer within the deadline."""


class CommandFailed(GuestError):
    """A guest command exited with a non-zero status and check=True."""

    def __init__(self, result: object) -> None:
        self.result = result
        super().__init__(str(result))
