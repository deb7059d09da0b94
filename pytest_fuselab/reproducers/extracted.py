"""What the extractor returns for each image, and the size limit it holds every image to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pytest_fuselab.errors import ImageError


DEFAULT_SIZE_LIMIT = 512 << 20


@dataclass(frozen=True, repr=False)
class Extracted:
    """One filesystem image found in `source` (the `index`-th of that file) and how to mount it."""

    source: Path
    index: int
    fstype: str
    image: bytes
    mount_options: str
    mount_flags: int
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"Extracted(source={str(self.source)!r}, index={self.index}, fstype={self.fstype!r}, "
                f"image=<{len(self.image)} bytes>, mount_options={self.mount_options!r}, "
                f"mount_flags={self.mount_flags:#x}, notes={self.notes!r})")


@dataclass
class Found:
    """An image as one parser found it, before it gets its source and index."""

    fstype: str
    image: bytes
    raw_options: bytes = b""
    flags: int = 0
    notes: list[str] = field(default_factory=list)
    from_program: bool = True


def over_limit(where: str, size: int | None, limit: int) -> NoReturn:
    """Refuse an image of `size` bytes (None: of more bytes than the limit, how many is not known)."""
    what = f"is {size} bytes, over" if size is not None else "is larger than"
    raise ImageError(f"{where}: the image {what} the size limit of {limit} bytes; if you trust this input, "
                     f"raise the limit (the size_limit argument, {limit} now)")
