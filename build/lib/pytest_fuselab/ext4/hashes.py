"""The checksums and directory hashes ext4 uses: CRC32C, CRC16 and the htree name hashes."""

from __future__ import annotations

from pytest_fuselab.errors import ImageError


def _crc_table(poly: int) -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc_table(0x82F63B78)
_CRC16_TABLE = _crc_table(0xA001)


def _reflected_crc(table: tuple[int, ...], data: bytes, crc: int) -> int:
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC32C (Castagnoli) as ext4 and jbd2 use it: seeded register, no final inversion."""
    return _reflected_crc(_CRC32C_TABLE, data, crc)


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC16 (ANSI, reflected) as ext4's uninit_bg group descriptor checksum uses it."""
    return _reflected_crc(_CRC16_TABLE, data, crc)


def _str2hashbuf(msg: bytes, num: int, signed: bool) -> list[int]:
    length = len(msg)
    pad = (length | (length << 8)) & 0xFFFFFFFF
    pad = (pad | (pad << 16)) & 0xFFFFFFFF
    val, out = pad, []
    for i, byte in enumerate(msg[:num * 4]):
        char = byte - 256 if signed and byte > 127 else byte
        val = (char + (val << 8)) & 0xFFFFFFFF
        if i % 4 == 3:
            out.append(val)
            val = pad
    if len(out) < num:
        out.append(val)
    out.extend([pad] * (num - len(out)))
    return out


def _rol(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & 0xFFFFFFFF


def _md4_f(x: int, y: int, z: int) -> int:
    return z ^ (x & (y ^ z))


def _md4_g(x: int, y: int, z: int) -> int:
    return (x & y) + ((x ^ y) & z)


def _md4_h(x: int, y: int, z: int) -> int:
    return x ^ y ^ z


_MD4_ROUNDS = (
    (_md4_f, 0, (0, 1, 2, 3, 4, 5, 6, 7), (3, 7, 11, 19)),
    (_md4_g, 0x5A827999, (1, 3, 5, 7, 0, 2, 4, 6), (3, 5, 9, 13)),
    (_md4_h, 0x6ED9EBA1, (3, 7, 2, 6, 1, 5, 0, 4), (3, 9, 11, 15)),
)


def _half_md4(buf: list[int], words: list[int]) -> None:
    a, b, c, d = buf
    for func, const, order, shifts in _MD4_ROUNDS:
        for step, index in enumerate(order):
            a = _rol((a + func(b, c, d) + words[index] + const) & 0xFFFFFFFF, shifts[step % 4])
            a, b, c, d = d, a, b, c
    buf[:] = [(x + y) & 0xFFFFFFFF for x, y in zip(buf, (a, b, c, d), strict=True)]


def _tea(buf: list[int], words: list[int]) -> None:
    total, b0, b1 = 0, buf[0], buf[1]
    a, b, c, d = words
    for _ in range(16):
        total = (total + 0x9E3779B9) & 0xFFFFFFFF
        b0 = (b0 + ((((b1 << 4) + a) ^ (b1 + total) ^ ((b1 >> 5) + b)) & 0xFFFFFFFF)) & 0xFFFFFFFF
        b1 = (b1 + ((((b0 << 4) + c) ^ (b0 + total) ^ ((b0 >> 5) + d)) & 0xFFFFFFFF)) & 0xFFFFFFFF
    buf[0] = (buf[0] + b0) & 0xFFFFFFFF
    buf[1] = (buf[1] + b1) & 0xFFFFFFFF


def _legacy_hash(name: bytes, signed: bool) -> int:
    hash0, hash1 = 0x12A3FE2D, 0x37ABE8F9
    for byte in name:
        char = byte - 256 if signed and byte > 127 else byte
        value = (hash1 + (hash0 ^ ((char * 7152373) & 0xFFFFFFFF))) & 0xFFFFFFFF
        if value & 0x80000000:
            value = (value - 0x7FFFFFFF) & 0xFFFFFFFF
        hash1, hash0 = hash0, value
    return (hash0 << 1) & 0xFFFFFFFF


def dx_hash(name: bytes, version: int, seed: tuple[int, ...] = (0, 0, 0, 0)) -> tuple[int, int]:
    """The htree (major, minor) hash of `name`: version 0/3 legacy, 1/4 half_md4, 2/5 tea (3-5 unsigned)."""
    signed = version < 3
    buf = list(seed) if any(seed) else [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    if version in (0, 3):
        major, minor = _legacy_hash(name, signed), 0
    elif version in (1, 4):
        for start in range(0, len(name), 32):
            _half_md4(buf, _str2hashbuf(name[start:], 8, signed))
        major, minor = buf[1], buf[2]
    elif version in (2, 5):
        for start in range(0, len(name), 16):
            _tea(buf, _str2hashbuf(name[start:], 4, signed))
        major, minor = buf[0], buf[1]
    else:
        raise ImageError(f"htree hash version {version} is not one the corpus generator builds: use 0-5")
    major &= ~1
    if major == 0x7FFFFFFF << 1:
        major = 0x7FFFFFFE << 1
    return major, minor
