"""C reproducers read token by token: string literals, and the stores they make replayed into a sparse memory."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

from pytest_fuselab.errors import ImageError
from .executor import OLD_IMAGE_MAX_SIZE, format_int


_C_TOKEN = re.compile(r"""
    (?P<skip>\s+|//[^\n]*|/\*.*?\*/|\#(?:\\\n|[^\n])*)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<chr>'(?:[^'\\\n]|\\.)*')
  | (?P<num>0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*)
  | (?P<id>[A-Za-z_]\w*)
  | (?P<punct>.)
""", re.S | re.X)
_C_SIMPLE = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "e": 27, "\\": 92, "'": 39, '"': 34,
             "?": 63}
_C_STORE_TYPE = re.compile(r"u?int(8|16|32|64)(_t)?$")
_C_FORMATS = {'"0x%016llx"': "hex", '"%020llu"': "dec", '"%023llo"': "oct"}

_Token = tuple[str, str, int]


def _c_tokens(text: str) -> list[_Token]:
    return [(m.lastgroup or "", m.group(0), m.start()) for m in _C_TOKEN.finditer(text) if m.lastgroup != "skip"]


def _c_number(token: str) -> int:
    digits = token.rstrip("uUlL")
    if digits[:2] in ("0x", "0X"):
        return int(digits, 16)
    return int(digits, 8) if len(digits) > 1 and digits[0] == "0" else int(digits)


def c_unescape(literal: str) -> bytes:
    """The bytes of one C string literal (quotes included), decoded exactly as a C compiler would;
    ValueError for an escape a compiler would refuse."""
    body = literal[1:-1].replace("\\\n", "")  # line splicing comes before escapes
    if re.fullmatch(r"(?:\\x[0-9a-fA-F]{2})+", body):
        return bytes.fromhex(body.replace("\\x", ""))
    out = bytearray()
    for match in re.finditer(r"\\(?:x([0-9a-fA-F]+)|([0-7]{1,3})|(.))|([^\\]+)", body, re.S):
        hexa, octal, simple, plain = match.groups()
        if plain is not None:
            out += plain.encode()
        elif hexa is not None or octal is not None:
            value = int(hexa, 16) if hexa is not None else int(octal or "0", 8)
            if value > 0xFF:
                raise ValueError(f"the C escape {match.group(0)} is out of range for a byte")
            out.append(value)
        elif simple in _C_SIMPLE:
            out.append(_C_SIMPLE[simple])
        else:
            raise ValueError(f"unknown C escape {match.group(0)!r} in a string")
    return bytes(out)


class Memory:
    """The stores a C reproducer makes, replayed in order; unwritten bytes read as zero."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []

    def write(self, addr: int, data: bytes) -> None:
        self.writes.append((addr, data))

    def read(self, addr: int, size: int, upto: int) -> tuple[bytes, bool]:
        """`size` bytes at `addr` as the first `upto` stores left them, and whether any store touched them."""
        out, end, touched = bytearray(size), addr + size, False
        for start, data in itertools.islice(self.writes, upto):
            low, high = max(start, addr), min(start + len(data), end)
            if low < high:
                out[low - addr:high - addr] = data[low - start:high - start]
                touched = True
        return bytes(out), touched

    def cstring(self, addr: int, upto: int, limit: int = 4096) -> bytes:
        return self.read(addr, limit, upto)[0].split(b"\0", 1)[0] if addr else b""


class CReader:
    """Walks a C reproducer's tokens, replaying its stores and collecting its syz_mount_image calls."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self.toks = _c_tokens(text)
        self.memory = Memory()
        self.calls: list[tuple[list[int], int, int]] = []  # (arguments, stores before the call, position)

    def where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        return f"{self.path}: line {line}"

    def is_(self, i: int, *texts: str) -> bool:
        return all(i + k < len(self.toks) and self.toks[i + k][1] == t for k, t in enumerate(texts))

    def number(self, i: int) -> tuple[int, int] | None:
        """A possibly negative number at token i, and the index after it."""
        negative = self.is_(i, "-")
        i += negative
        if i < len(self.toks) and self.toks[i][0] == "num":
            value = _c_number(self.toks[i][1])
            return (-value if negative else value) & ((1 << 64) - 1), i + 1
        return None

    def run(self) -> None:
        handlers: dict[str, Callable[[int], None]] = {
            "memcpy": self.memcpy, "memset": self.memset, "sprintf": self.sprintf,
            "syz_mount_image": self.syz_mount_image}
        for i, (kind, text, _pos) in enumerate(self.toks):
            if kind == "id" and text in handlers:
                handlers[text](i + 1)
            elif text == "*" and self.is_(i + 1, "(") and i + 2 < len(self.toks):
                self.store(i + 2)

    def address(self, i: int, cast: str) -> tuple[int, int] | None:
        """`((cast*)0xADDR,` starting at the '(' of a call; the address and the index after the comma."""
        if not self.is_(i, "(", "(", cast, "*", ")"):
            return None
        got = self.number(i + 5)
        if got is None or not self.is_(got[1], ","):
            return None
        return got[0], got[1] + 1

    def strings(self, i: int) -> tuple[bytes, int]:
        """Adjacent string literals from token i, concatenated, and the index after them."""
        parts = []
        while i < len(self.toks) and self.toks[i][0] == "str":
            try:
                parts.append(c_unescape(self.toks[i][1]))
            except ValueError as exc:
                raise ImageError(f"{self.where(self.toks[i][2])}: {exc}; the reproducer is damaged, get it "
                                 "again") from exc
            i += 1
        return b"".join(parts), i

    def memcpy(self, i: int) -> None:
        got = self.address(i, "void")
        if got is None:
            return
        data, j = self.strings(got[1])
        size = self.number(j + 1) if self.is_(j, ",") else None
        if size is not None and j > got[1]:
            self.memory.write(got[0], (data + b"\0")[:size[0]])  # bytes past the literal read as zero

    def memset(self, i: int) -> None:
        got = self.address(i, "void")
        value = self.number(got[1]) if got else None
        size = self.number(value[1] + 1) if value and self.is_(value[1], ",") else None
        if got and value and size and size[0] <= OLD_IMAGE_MAX_SIZE:
            self.memory.write(got[0], bytes([value[0] & 0xFF]) * size[0])

    def sprintf(self, i: int) -> None:
        got = self.address(i, "char")
        if got is None or got[1] >= len(self.toks) or self.toks[got[1]][1] not in _C_FORMATS:
            return
        style = _C_FORMATS[self.toks[got[1]][1]]
        if self.is_(got[1] + 1, ",", "(", "long", "long", ")"):
            value = self.number(got[1] + 6)
            if value is not None:
                self.memory.write(got[0], format_int(value[0], style).encode() + b"\0")

    def store(self, i: int) -> None:
        match = _C_STORE_TYPE.match(self.toks[i][1])
        if not match or not self.is_(i + 1, "*", ")"):
            return
        addr = self.number(i + 3)
        value = self.number(addr[1] + 1) if addr and self.is_(addr[1], "=") else None
        if addr and value:
            width = int(match.group(1)) // 8
            self.memory.write(addr[0], (value[0] & ((1 << (8 * width)) - 1)).to_bytes(width, "little"))

    def syz_mount_image(self, i: int) -> None:
        if not self.is_(i, "("):
            return
        args, j = [], i + 1
        while True:
            got = self.number(j)
            if got is None:
                return  # the definition or a declaration, not a call with constant arguments
            args.append(got[0])
            j = got[1] + 1
            if self.is_(got[1], ")"):
                break
            if not self.is_(got[1], ","):
                return
        self.calls.append((args, len(self.memory.writes), self.toks[i][2]))
