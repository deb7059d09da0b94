"""Per-run settings applied in a running guest: /etc/fuse.conf and the mount-service sockets' SocketMode=.

The one owner of both files' text: the lab applies the run's settings to every guest it hands
out (`configure_from`), and scenarios that change them mid-test call `configure`.
"""

from __future__ import annotations

from pytest_fuselab.settings import Settings
from pytest_fuselab.vm.guest import Guest

FUSE_CONF = "/etc/fuse.conf"
DROPIN = "fuselab-socket-mode.conf"
# Socket units of the mount service: the ones listening on a SOCK_SEQPACKET socket.
SERVICE_SOCKETS = ("grep -l '^ListenSequentialPacket' /etc/systemd/system/*.socket "
                   "/usr/lib/systemd/system/*.socket 2>/dev/null | xargs -rn1 basename | sort -u")
RESTART_ACTIVE = 'for u in "$@"; do systemctl -q is-active "$u" && systemctl restart "$u"; done; true'


def fuse_conf_text(options: str) -> str:
    """/etc/fuse.conf from `user_allow_other,mount_max=3`."""
    lines = ["# written by pytest-fuselab (--fuselab-fuse-conf)"]
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, _, value = item.partition("=")
        lines.append(f"{key.strip()} = {value.strip()}" if value else key.strip())
    return "\n".join(lines) + "\n"


def socket_dropin(mode: str) -> str:
    """A systemd drop-in setting SocketMode= on a socket unit."""
    return f"# written by pytest-fuselab (--fuselab-socket-mode)\n[Socket]\nSocketMode={mode}\n"


def configure(guest: Guest, socket_mode: str = "", fuse_conf: str | None = None) -> list[str]:
    """Write fuse.conf (unless None) and a SocketMode= drop-in per mount-service socket; return what changed."""
    changed = []
    if fuse_conf is not None:
        guest.put(FUSE_CONF, fuse_conf_text(fuse_conf))
        changed.append(f"{FUSE_CONF}: {fuse_conf or 'no options'}")
    if socket_mode:
        units = guest.run(SERVICE_SOCKETS, check=False).stdout.split()
        for unit in units:
            guest.put(f"/etc/systemd/system/{unit}.d/{DROPIN}", socket_dropin(socket_mode))
            changed.append(f"{unit}: SocketMode={socket_mode}")
        if units:  # a listening socket keeps its old mode until it is restarted
            guest.run("systemctl daemon-reload")
            guest.run(["sh", "-c", RESTART_ACTIVE, "-", *units])
    return changed


def configure_from(guest: Guest, settings: Settings) -> list[str]:
    """`configure` with the run's --fuselab-socket-mode and --fuselab-fuse-conf (nothing when unset)."""
    return configure(guest, settings.socket_mode, settings.fuse_conf)
