"""The kernel's log as the judge reads it, from /dev/kmsg (runs in the guest, stdlib only)."""

from __future__ import annotations

import os
import re


def console_line(record: str) -> str:
    """A /dev/kmsg record ("6,123,4567890,-;text\\n KEY=value...") as the console shows it."""
    head, _, text = record.partition(";")
    fields = head.split(",")
    micros = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
    message = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text.split("\n")[0])
    return f"[{micros // 1000000:5d}.{micros % 1000000:06d}] {message}"


class KernelLog:
    """New records of /dev/kmsg, as console-style lines ("[   12.345678] text")."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def read(self) -> str:
        """Every record since the last read (or since we opened the log)."""
        lines = []
        while True:
            try:
                record = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten before we read it; go on with the next
                continue
            lines.append(console_line(record))
        return "\n".join(lines)
