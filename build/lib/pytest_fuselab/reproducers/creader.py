"""C reproducers read token by token: string literals, and the stores they make replayed into a sparse memory.

One pass, in linear time: tokens come from a generator (block comments found with str.find, literals that never
end cut at the end of their line), the memory is an interval map, and each syz_mount_image call is handed over
as it comes, while the memory holds what the stores before it wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from pytest_fuselab.errors import InputError
from .executor import format_int
from .sparse import Extents


_C_TOKEN = re.compile(r"""
    (?P<skip>\s+|//[^\n]*|\#(?:\\\n|[^\n])*)
  | (?P<str>"(?:[^"\\\n]|\\.)*(?P<strend>"?))
  | (?P<chr>'(?:[^'\\\n]|\\.)*'?)
  | (?P<num>0[xX][0-9a-fA-F]+[uUlL]*|[0-9]+[uUlL]*)
  | (?P<id>[A-Za-z_]\w*)
  | (?P<punct>.)
""", re.S | re.X | re.A)
_C_SIMPLE = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "e": 27, "\\": 92, "'": 39, '"': 34,
             "?": 63}
_C_STORE_TYPE = re.compile(r"u?int(8|16|32|64)(_t)?$")
_C_FORMATS = {'"0x%016llx"': "hex", '"%020llu"': "dec", '"%023llo"': "oct"}
_MASK = (1 << 64) - 1
CSTRING_MAX = 4096

_Token = tuple[str, str, int]


def _c_tokens(text: str) -> Iterator[_Token]:
    pos, end = 0, len(text)
    while pos < end:
        if text.startswith("/*", pos):
            close = text.find("*/", pos + 2)
            pos = end if close < 0 else close + 2
            continue
        match = _C_TOKEN.match(text, pos)
        assert match is not None  # the last alternative takes any character
        pos = match.end()
        kind = match.lastgroup or ""
        if kind == "str" and not match.group("strend"):
            kind = "bad"
        if kind != "skip":
            yield kind, match.group(0), match.start()


def c_number(token: str) -> int | None:
    """The value of a C integer constant, or None if it is not one that fits in 64 bits."""
    digits = token.rstrip("uUlL")
    base = 16 if digits[:2] in ("0x", "0X") else 8 if len(digits) > 1 and digits[0] == "0" else 10
    body = digits[2:] if base == 16 else digits
    if base == 8 and any(d in "89" for d in body) or len(body.lstrip("0")) > 22:
        return None
    value = int(body, base)
    return None if value >> 64 else value


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
            out += plain.encode("utf-8", "surrogateescape")
        elif hexa is not None or octal is not None:
            if hexa is not None and len(hexa.lstrip("0")) > 2:
                raise ValueError(f"the C escape {match.group(0)[:12]} is out of range for a byte")
            value = int(hexa, 16) if hexa is not None else int(octal or "0", 8)
            if value > 0xFF:
                raise ValueError(f"the C escape {match.group(0)} is out of range for a byte")
            out.append(value)
        elif simple in _C_SIMPLE:
            out.append(_C_SIMPLE[simple])
        else:
            raise ValueError(f"unknown C escape {match.group(0)!r} in a string")
    return bytes(out)


def cstring(memory: Extents, addr: int) -> bytes:
    """The string at `addr` (at most CSTRING_MAX bytes), without its zero; nothing for address 0."""
    return bytes(memory.read(addr, CSTRING_MAX).split(b"\0", 1)[0]) if addr else b""


class Lines:
    """Line numbers of positions in a text; asked in order, they cost one pass over the text in all."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        if pos >= self.pos:
            self.line += self.text.count("\n", self.pos, pos)
        else:
            self.line -= self.text.count("\n", pos, self.pos)
        self.pos = pos
        return self.line


OnCall = Callable[["CReader", list[int], int], None]


class CReader:
    """Walks a C reproducer's tokens, replaying its stores and handing each syz_mount_image call to `on_call`."""

    def __init__(self, path: Path, text: str, on_call: OnCall) -> None:
        self.path, self.text, self.on_call = path, text, on_call
        self.source = _c_tokens(text)
        self.window: list[_Token] = []  # tokens base, base + 1, ... read so far and not yet dropped
        self.base = 0
        self.memory = Extents()
        self.lines = Lines(text)
        self.calls = 0

    def where(self, pos: int) -> str:
        return f"{self.path}: line {self.lines.at(pos)}"

    def tok(self, i: int) -> _Token | None:
        while i - self.base >= len(self.window):
            token = next(self.source, None)
            if token is None:
                return None
            self.window.append(token)
        return self.window[i - self.base]

    def is_(self, i: int, *texts: str) -> bool:
        for k, text in enumerate(texts):
            token = self.tok(i + k)
            if token is None or token[1] != text:
                return False
        return True

    def number(self, i: int) -> tuple[int, int] | None:
        """A possibly negative number at token i, and the index after it."""
        negative = self.is_(i, "-")
        i += negative
        token = self.tok(i)
        if token is None or token[0] != "num":
            return None
        value = c_number(token[1])
        if value is None:
            raise InputError(f"{self.where(token[2])}: {token[1][:40]!r}{'...' if len(token[1]) > 40 else ''} is "
                             "not a C integer constant of at most 64 bits; the reproducer is damaged, get it again")
        return (-value if negative else value) & _MASK, i + 1

    def run(self) -> None:
        handlers: dict[str, Callable[[int], None]] = {
            "memcpy": self.memcpy, "memset": self.memset, "sprintf": self.sprintf,
            "syz_mount_image": self.syz_mount_image}
        i = 0
        while (token := self.tok(i)) is not None:
            kind, text, _pos = token
            if kind == "id" and text in handlers:
                handlers[text](i + 1)
            elif text == "*" and self.is_(i + 1, "("):
                self.store(i + 2)
            i += 1
            if i - self.base > 4096:
                del self.window[:i - self.base]
                self.base = i

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
        while (token := self.tok(i)) is not None and token[0] in ("str", "bad"):
            try:
                if token[0] == "bad":
                    raise ValueError("a string that never ends")
                parts.append(c_unescape(token[1]))
            except ValueError as exc:
                raise InputError(f"{self.where(token[2])}: {exc}; the reproducer is damaged, get it again") from exc
            i += 1
        return b"".join(parts), i

    def memcpy(self, i: int) -> None:
        got = self.address(i, "void")
        if got is None:
            return
        data, j = self.strings(got[1])
        size = self.number(j + 1) if self.is_(j, ",") else None
        if size is not None and j > got[1]:
            self.memory.write(got[0], (data + b"\0")[:size[0]])  # bytes past the literal are left as they are

    def memset(self, i: int) -> None:
        got = self.address(i, "void")
        value = self.number(got[1]) if got else None
        size = self.number(value[1] + 1) if value and self.is_(value[1], ",") else None
        if got and value and size:
            self.memory.fill(got[0], size[0], value[0])

    def sprintf(self, i: int) -> None:
        got = self.address(i, "char")
        token = self.tok(got[1]) if got else None
        if got is None or token is None or token[1] not in _C_FORMATS:
            return
        style = _C_FORMATS[token[1]]
        if self.is_(got[1] + 1, ",", "(", "long", "long", ")"):
            value = self.number(got[1] + 6)
            if value is not None:
                self.memory.write(got[0], format_int(value[0], style).encode() + b"\0")

    def store(self, i: int) -> None:
        token = self.tok(i)
        match = _C_STORE_TYPE.match(token[1]) if token else None
        if not match or not self.is_(i + 1, "*", ")"):
            return
        addr = self.number(i + 3)
        value = self.number(addr[1] + 1) if addr and self.is_(addr[1], "=") else None
        if addr and value:
            width = int(match.group(1)) // 8
            self.memory.write(addr[0], (value[0] & ((1 << (8 * width)) - 1)).to_bytes(width, "little"))

    def syz_mount_image(self, i: int) -> None:
        start = self.tok(i - 1)
        if not self.is_(i, "(") or start is None:
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
        self.calls += 1
        self.on_call(self, args, start[2])
