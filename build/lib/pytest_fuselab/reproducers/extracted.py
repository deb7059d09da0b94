"""What the extractor returns for each image, and the budget of bytes every input is held to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pytest_fuselab.errors import InputError
from .sparse import SparseImage


DEFAULT_SIZE_LIMIT = 512 << 20
NOTE_MAX = 300  # characters of one note
NOTES_MAX = 50  # notes kept for one image


@dataclass(frozen=True, repr=False)
class Extracted:
    """One filesystem image found in `source` (the `index`-th of that file) and how to mount it."""

    source: Path
    index: int
    fstype: str
    sparse: SparseImage
    mount_options: str
    mount_flags: int
    notes: list[str] = field(default_factory=list)

    @property
    def image(self) -> bytes:
        """All the image's bytes, made on each call: write `sparse.write_to` a file to keep its holes."""
        return self.sparse.tobytes()

    @property
    def size(self) -> int:
        return self.sparse.size

    def __repr__(self) -> str:
        return (f"Extracted(source={str(self.source)!r}, index={self.index}, fstype={self.fstype!r}, "
                f"image=<{self.sparse.size} bytes>, mount_options={self.mount_options!r}, "
                f"mount_flags={self.mount_flags:#x}, notes={self.notes!r})")


@dataclass
class Found:
    """An image as one parser found it, before it gets its source and index."""

    fstype: str
    image: SparseImage
    raw_options: bytes = b""
    flags: int = 0
    notes: list[str] = field(default_factory=list)
    from_program: bool = True


class Budget:
    """The bytes of image (zero fills included) one input may make the host hold: the size limit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    @property
    def left(self) -> int:
        return max(self.limit - self.used, 0)

    def take(self, size: int, where: str) -> None:
        """Count an image of `size` bytes, or refuse it when it does not fit in what is left."""
        if size > self.left:
            over_limit(where, size, self.limit, self.used)
        self.used += size


def over_limit(where: str, size: int | None, limit: int, used: int = 0) -> NoReturn:
    """Refuse an image of `size` bytes (None: of more bytes than what is left, how many is not known)."""
    what = f"is {size} bytes, over" if size is not None else "is larger than"
    if used:
        what = (f"is {size} bytes; with the {used} bytes of images before it in this input, that is over"
                if size is not None else f"is, with the {used} bytes of images before it in this input, over")
    raise InputError(f"{where}: the image {what} the size limit of {limit} bytes; {limit_hint(limit)}")


def limit_hint(limit: int) -> str:
    return (f"if you trust this input, raise the limit (`fuselab repro --size-limit MIB`, or the size_limit "
            f"argument: {limit} bytes now)")


def short(text: str, size: int = NOTE_MAX) -> str:
    """`text` cut to `size` characters, saying how long it was."""
    return text if len(text) <= size else f"{text[:size]}… ({len(text)} characters)"


def bounded_notes(notes: list[str]) -> list[str]:
    """Notes cut to NOTE_MAX characters each and NOTES_MAX in all."""
    kept = [short(note) for note in notes[:NOTES_MAX]]
    if len(notes) > NOTES_MAX:
        kept.append(f"… and {len(notes) - NOTES_MAX} more notes")
    return kept
