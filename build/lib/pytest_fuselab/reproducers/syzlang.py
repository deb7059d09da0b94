"""Syzkaller's program notation: the values of one call's arguments, read and shown back."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pytest_fuselab.errors import InputError
from .executor import OLD_IMAGE_MAX_SIZE


@dataclass(frozen=True)
class Int:
    """An integer: 0x10, 16."""

    value: int


@dataclass(frozen=True)
class Data:
    """A string ('text', "hex") and the `extra` zero bytes its /size adds; with `compressed`, a zlib image."""

    data: bytes
    compressed: bool = False
    extra: int = 0

    @property
    def size(self) -> int:
        return len(self.data) + self.extra

    def cstring(self) -> bytes:
        """The bytes up to the first zero byte, that zero included if there is one (as in options)."""
        head = self.data.split(b"\0", 1)[0]
        return head + b"\0" if len(head) < self.size else head


@dataclass(frozen=True)
class Ptr:
    """&(address)=value or &AUTO=value; `any` for &(address)=ANY=[...]."""

    target: Value | None
    any: bool = False


@dataclass(frozen=True)
class Group:
    """A struct {a, b} or, with `array`, an array [a, b]."""

    items: tuple[Value, ...]
    array: bool


@dataclass(frozen=True)
class Union:
    """@name or @name=value."""

    name: str
    value: Value | None


@dataclass(frozen=True)
class Other:
    """Anything else (a resource name, a flag name), kept as text."""

    text: str


Value = Int | Data | Ptr | Group | Union | Other

_SYZ_INT = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")
_SYZ_IDENT = re.compile(r"[A-Za-z_][\w]*(?:[/+](?:0[xX][0-9a-fA-F]+|[0-9]+))*", re.A)
_SYZ_SIZE = re.compile(r"/(0[xX][0-9a-fA-F]+|[0-9]+)")
_SYZ_NAME = re.compile(r"[\w$]+")
_SYZ_RESULT = re.compile(r"<r\d+=>")
_SYZ_AUTO = re.compile(r"AUTO\b")
_SYZ_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'", re.S)
MAX_DEPTH = 100  # nesting of brackets, pointers and unions; syzkaller's own programs stay far below
_SYZ_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "'": 39, '"': 34, "\\": 92}


class SyzParser:
    """Reads the argument values of one call of a syzkaller program."""

    def __init__(self, text: str, pos: int, path: Path, call: str) -> None:
        self.text, self.pos, self.path, self.call = text, pos, path, call
        self.depth = 0

    def fail(self, problem: str) -> NoReturn:
        line = self.text.count("\n", 0, self.pos) + 1
        raise InputError(f"{self.path}: line {line}: cannot read {self.call}: {problem}; the program is damaged "
                         "or cut short, get it again")

    def skip(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1
        return self.text[self.pos:self.pos + 1]

    def take(self, pattern: re.Pattern[str]) -> str | None:
        match = pattern.match(self.text, self.pos)
        if not match:
            return None
        self.pos = match.end()
        return match.group(0)

    def items(self, close: str) -> list[Value]:
        """Values separated by commas up to `close`, the opening bracket already read."""
        values: list[Value] = []
        if self.skip() == close:
            self.pos += 1
            return values
        while True:
            values.append(self.value())
            char = self.skip()
            self.pos += 1
            if char == close:
                return values
            if char != ",":
                self.fail(f"expected ',' or '{close}', found {char or 'the end of the file'!r}")

    def value(self) -> Value:
        if self.depth >= MAX_DEPTH:
            self.fail(f"values nested deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            return self.value_here()
        finally:
            self.depth -= 1

    def value_here(self) -> Value:
        char = self.skip()
        if char == "&":
            return self.pointer()
        if char in ("'", '"'):
            return self.data()
        if char in ("{", "["):
            self.pos += 1
            return Group(tuple(self.items("}" if char == "{" else "]")), char == "[")
        if char == "@":
            self.pos += 1
            name = self.take(_SYZ_NAME) or self.fail("a union without a name")
            if not self.text.startswith("=", self.pos):
                return Union(name, None)
            self.pos += 1
            return Union(name, self.value())
        if char == "<":
            self.take(_SYZ_RESULT) or self.fail("a malformed resource")
            return self.value()
        number = self.take(_SYZ_INT)
        if number is not None:
            return Int(self.number(number))
        ident = self.take(_SYZ_IDENT)
        if ident is not None:
            return Other(ident)
        self.fail(f"unexpected {char or 'end of the file'!r}")

    def number(self, text: str) -> int:
        """A number as syzkaller reads it (Go's base prefixes: 0x hex, 0 octal), at most 64 bits."""
        base = 16 if text[:2] in ("0x", "0X") else 8 if len(text) > 1 and text[0] == "0" else 10
        digits = text[2:] if base == 16 else text
        if base == 8 and any(d in "89" for d in digits):
            self.fail(f"{text!r} is not a number (a leading 0 makes it octal, and 8 and 9 are no octal digits)")
        if len(digits.lstrip("0")) > 22 or int(digits, base) >> 64:
            self.fail(f"the number {text[:30]!r}{'...' if len(text) > 30 else ''} does not fit in 64 bits")
        return int(digits, base)

    def pointer(self) -> Ptr:
        self.pos += 1
        if self.text.startswith("(", self.pos):
            end = self.text.find(")", self.pos)
            if end < 0:
                self.fail("an address without ')'")
            self.pos = end + 1
        elif not self.take(_SYZ_AUTO):
            self.fail("a pointer that is neither &(address) nor &AUTO")
        if not self.text.startswith("=", self.pos):
            return Ptr(None)
        self.pos += 1
        is_any = self.text.startswith("ANY=", self.pos)
        self.pos += 4 if is_any else 0
        return Ptr(self.value(), is_any)

    def data(self) -> Data:
        quote = self.text[self.pos]
        end = self.text.find(quote, self.pos + 1) if quote == '"' else self.quoted_end()
        if end < 0:
            self.fail("a string that never ends")
        body, start = self.text[self.pos + 1:end], self.pos
        self.pos = end + 1
        if quote == '"' and body.startswith("$"):
            return Data(self.base64(body[1:], start), compressed=True)
        data = self.unhex(body) if quote == '"' else self.unescape(body)
        size = self.take(_SYZ_SIZE)
        length = self.number(size[1:]) if size is not None else len(data)
        if length > OLD_IMAGE_MAX_SIZE:
            self.fail(f"a data size of {size[1:] if size else length} bytes, more than syzkaller ever used")
        return Data(data, extra=max(length - len(data), 0))

    def quoted_end(self) -> int:
        match = _SYZ_QUOTED.match(self.text, self.pos)
        return match.end() - 1 if match else -1

    def base64(self, body: str, start: int) -> bytes:
        try:
            return base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            self.pos = start
            self.fail(f"the image is not valid base64 ({exc})")

    def unhex(self, body: str) -> bytes:
        try:
            return bytes.fromhex(body)
        except ValueError:
            self.fail(f"bad hex data {body[:40]!r}")

    def unescape(self, body: str) -> bytes:
        out = bytearray()
        for match in re.finditer(r"\\(x[0-9a-fA-F]{2}|.)|[^\\]+", body, re.S):
            escape = match.group(1)
            if escape is None:
                out += match.group(0).encode("utf-8", "surrogateescape")
            elif len(escape) == 3:  # xHH; a lone x is an unknown escape
                out.append(int(escape[1:], 16))
            elif escape in _SYZ_ESCAPES:
                out.append(_SYZ_ESCAPES[escape])
            else:
                self.fail(f"unknown escape \\{escape} in a string")
        return bytes(out)


def int_value(value: Value) -> int:
    return value.value if isinstance(value, Int) else 0


def show(value: Value | None, room: int = 200) -> str:
    """A value back in syzkaller's notation, cut to about `room` characters (enough to recognise it in a note)."""
    if isinstance(value, Int):
        return hex(value.value)
    if isinstance(value, Data):
        text = repr(value.data[:room].decode("latin-1"))
        return text + (f"/{value.size:#x}" if value.extra or len(value.data) > room else "")
    if isinstance(value, Ptr):
        return "&" + ("ANY=" if value.any else "") + show(value.target, room) if value.target is not None else "&AUTO"
    if isinstance(value, Group):
        parts: list[str] = []
        used = 0
        for item in value.items:
            if used > room:
                parts.append("...")
                break
            parts.append(show(item, room - used))
            used += len(parts[-1]) + 2
        inner = ", ".join(parts)
        return f"[{inner}]" if value.array else f"{{{inner}}}"
    if isinstance(value, Union):
        return f"@{value.name}" + (f"={show(value.value, room)}" if value.value is not None else "")
    return value.text[:room] if value is not None else ""
