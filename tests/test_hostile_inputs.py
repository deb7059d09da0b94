"""Hostile inputs to the host's readers: each ends in an image list or the lab's error, in bounded memory and time.

Every row of the issue "The lab against hostile input to itself" that concerns the reproducer readers and the
kernel-config extraction is one test here; its input is made in the test (none is kept in the repository) and
read in a child process whose peak memory (VmHWM) and time are measured. Property-based tests then feed the
.syz, C and image readers what hypothesis makes of their notations.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_fuselab.errors import FuselabError, InputError
from pytest_fuselab.reproducers import extract, extract_all

MIB = 1 << 20
LIMIT = 512 * MIB  # the default size limit
HEAD = "syz_mount_image$ext4(&(0x7f0000000000)='ext4\\x00', &(0x7f0000000100)='./file0\\x00', "

CHILD = r"""
import json, sys, time
from pathlib import Path
from pytest_fuselab.errors import FuselabError
start = time.monotonic()
try:
    if sys.argv[1] == "kernel":
        from pytest_fuselab.build.kernel import config
        try:
            out = {"config": config.embedded(Path(sys.argv[2]))}
        except ValueError as exc:
            out = {"error": "ValueError", "message": str(exc)}
    else:
        from pytest_fuselab.reproducers import extract_all
        found = extract_all([Path(p) for p in sys.argv[2:]], int(sys.argv[1]))
        out = {"images": [{"size": f.size, "held": f.sparse.held, "fstype": f.fstype, "notes": f.notes}
                          for f in found]}
except FuselabError as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
out["seconds"] = time.monotonic() - start
status = Path("/proc/self/status").read_text()
out["peak"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) * 1024
print(json.dumps(out))
"""


def measure(*args: str | Path, kernel: bool = False, peak: int = 256 * MIB, seconds: float = 10) -> dict[str, Any]:
    """Read the inputs (or a kernel's config) in a child; assert no traceback, under `peak` bytes and `seconds`."""
    started = time.monotonic()
    argv = [sys.executable, "-c", CHILD, "kernel" if kernel else str(LIMIT), *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["peak"] < peak, f"peak memory {out['peak'] >> 20} MiB"
    assert elapsed < seconds, f"{elapsed:.1f} s"
    out["elapsed"] = elapsed
    return out


def zeros_zlib(mib: int, wbits: int = 15) -> bytes:
    """A zlib (wbits=31: gzip, with a wrong trailer) stream of `mib` MiB of zeros: one flushed block repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    first = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    trailer = ((((mib << 20) % 65521) << 16) | 1).to_bytes(4, "big") if wbits == 15 else bytes(8)
    return first + again * (mib - 1) + b"\x03\x00" + trailer


def current(packed: bytes, opts: str = "&AUTO") -> str:
    """A syz_mount_image call of today's format carrying the zlib stream `packed`."""
    return (f"{HEAD}0x0, {opts}, 0x1, {len(packed):#x}, "
            f"&(0x7f0000000300)=\"${base64.b64encode(packed).decode()}\")\n")


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


# One input budget per run.

def test_syz_with_sixteen_huge_string_arguments(tmp_path: Path) -> None:
    args = ", ".join(["&(0x7f0000000000)=''/0x8100000"] * 16)
    out = measure(write(tmp_path, "args.syz", f"syz_mount_image$ext4({args})\n"), peak=128 * MIB)
    assert out["error"] == "InputError" and "16 arguments" in out["message"]
    segs = ", ".join(["{&(0x7f0000010000)=''/0x8100000, 0x8100000, 0x0}"] * 16)
    text = f"{HEAD}0x8100000, 0x10, &(0x7f0000000200)=[{segs}], 0x0, &AUTO, 0x0)\n"
    out = measure(write(tmp_path, "segs.syz", text), peak=128 * MIB)
    assert out["error"] == "InputError" and "larger than the size limit" in out["message"]


C_MAIN = "#include <string.h>\nint main(void)\n{\n"


def test_c_with_sixteen_huge_memsets(tmp_path: Path) -> None:
    sets = "".join(f"  memset((void*){0x20000000 + n * 0x8100000:#x}, 0xff, 0x8100000);\n" for n in range(16))
    call = "  syz_mount_image(0x1ffff000, 0x1ffff100, 0x0, 0x1ffff200, 0x1, 0x8100000, 0x20000000);\n"
    out = measure(write(tmp_path, "memsets.c", C_MAIN + sets + call + "}\n"), peak=400 * MIB)
    assert out["error"] == "InputError" and "not a valid zlib stream" in out["message"]
    table = "".join(f"  *(uint64_t*){0x1fff0000 + 24 * n + k * 8:#x} = {v:#x};\n"
                    for n in range(4) for k, v in enumerate((0x20000000 + n * 0x8100000, 0x1000000, n * 0x1000000)))
    call = "  syz_mount_image(0x1ffff000, 0x1ffff100, 0x4000000, 0x4, 0x1fff0000, 0x0, 0x0);\n"
    out = measure(write(tmp_path, "segments.c", C_MAIN + sets + table + call + "}\n"), peak=400 * MIB)
    [image] = out["images"]
    assert image["size"] == image["held"] == 0x4000000


def test_syz_with_eight_images_of_496_mib(tmp_path: Path) -> None:
    text = current(zeros_zlib(496)) * 8
    out = measure(write(tmp_path, "eight.syz", text), peak=128 * MIB)
    assert out["error"] == "InputError" and "images before it in this input" in out["message"]
    assert "line 2 " in out["message"]
    out = measure(write(tmp_path, "one.syz", text.splitlines()[0]), peak=128 * MIB)
    [image] = out["images"]
    assert (image["size"], image["held"]) == (496 * MIB, 0)


def test_unknown_mount_option_with_a_huge_string(tmp_path: Path) -> None:
    opts = "&(0x7f0000000200)={[{@frobnicate=[''/0x8100000]}, {@nodelalloc}]}"
    out = measure(write(tmp_path, "note.syz", current(zlib.compress(bytes(4096)), opts)), peak=128 * MIB)
    [image] = out["images"]
    assert any("@frobnicate" in note for note in image["notes"])
    assert max(len(note) for note in image["notes"]) < 400


def test_sparse_file_of_2_gib_starting_with_text(tmp_path: Path) -> None:
    path = tmp_path / "big.syz"
    with open(path, "wb") as f:
        f.write(b"# text\n" * (65536 // 7))
        f.truncate(2 << 30)
    out = measure(path, peak=64 * MIB, seconds=3)
    assert out["error"] == "InputError" and "over the size limit" in out["message"]


# Only regular files.

def test_devices_fifos_sockets_and_links_to_them(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    linked = tmp_path / "corpus"
    linked.mkdir()
    (linked / "zero.img").symlink_to("/dev/zero")
    for path, kind in [("/dev/zero", "character device"), ("/dev/urandom", "character device"),
                       (fifo, "FIFO"), (tmp_path / "sock", "socket"), (linked, "character device")]:
        out = measure(path, peak=64 * MIB, seconds=3)
        assert out["error"] == "InputError" and f"is a {kind}" in out["message"], out
    sock.close()


# Linear time.

def test_c_with_8000_stores_and_calls(tmp_path: Path) -> None:
    lines = [C_MAIN, '  memcpy((void*)0x20000000, "ext4\\000", 5);\n']
    for n in range(4000):
        lines.append(f"  *(uint64_t*){0x20001000 + (n * 7919 % 4000) * 8:#x} = {n:#x};\n")
        lines.append("  syz_mount_image(/*fs=*/0x20000000, /*dir=*/0x20000100, /*flags=*/0x0, /*opts=*/0x0, "
                     "/*chdir=*/0x1, /*size=*/0x0, /*img=*/0x0); // the image pointer is NULL here\n")
    packed = zlib.compress(bytes(4096))
    literal = "".join(f"\\x{b:02x}" for b in packed)
    lines.append(f'  memcpy((void*)0x20100000, "{literal}", {len(packed)});\n')
    lines.append(f"  syz_mount_image(0x20000000, 0x20000100, 0x0, 0x0, 0x1, {len(packed):#x}, 0x20100000);\n}}\n")
    text = "".join(lines)
    out = measure(write(tmp_path, "many.c", text), peak=128 * MIB, seconds=5)
    assert [image["size"] for image in out["images"]] == [4096], out.get("message")
    assert len(text) > 750_000


def test_c_with_20000_unterminated_comments_and_strings(tmp_path: Path) -> None:
    for name, junk in [("comments.c", "/* " * 20000), ("quotes.c", '"' * 20000 + "\n" + "'" * 20000)]:
        out = measure(write(tmp_path, name, C_MAIN + junk + "\n  syz_mount_image(0x1, 0x2, 0x3);\n}\n"),
                      peak=64 * MIB, seconds=3)
        assert out["error"] == "InputError", out


def test_syz_with_80000_calls(tmp_path: Path) -> None:
    empty = f"{HEAD}0x0, &AUTO, 0x0, 0x0, &AUTO)\n"
    text = empty * 80000 + current(zlib.compress(bytes(4096)))
    out = measure(write(tmp_path, "calls.syz", text), peak=256 * MIB, seconds=8)
    [image] = out["images"]
    assert image["size"] == 4096


# No traceback for a bad input.

@pytest.mark.parametrize("name, text, expect", [
    ("octal.syz", f"{HEAD}0x0, &AUTO, 0x1, 0123, &AUTO)\n", "carry no image data"),
    ("not-octal.syz", f"{HEAD}0x0, &AUTO, 0x1, 0129, &AUTO)\n", "line 1: .*'0129' is not a number"),
    ("digits.syz", f"{HEAD}0x0, &AUTO, 0x1, {'9' * 5000}, &AUTO)\n", "line 1: .*does not fit in 64 bits"),
    ("hexdigits.syz", f"{HEAD}0x0, &AUTO, 0x1, 0x{'f' * 5000}, &AUTO)\n", "does not fit in 64 bits"),
    ("nested.syz", f"{HEAD}0x0, &(0x7f0000000200)={'[' * 3000}{']' * 3000}, 0x1, 0x0, &AUTO)\n", "nested deeper"),
    ("digits.c", C_MAIN + f"  syz_mount_image(0x1, {'9' * 5000}, 0x0);\n}}\n", "line 4: .*64 bits"),
    ("octal.c", C_MAIN + "  syz_mount_image(0x1, 09, 0x0);\n}\n", "line 4: '09' is not a C integer"),
    ("escape.c", C_MAIN + f'  memcpy((void*)0x1, "\\x{"4" * 5000}", 1);\n}}\n', "line 4: the C escape"),
    ("empty-zlib.syz", current(zlib.compress(b"")), "carry no image data"),
    ("neg.syz", f"{HEAD}0x0, &AUTO, 0x1, -1, &AUTO)\n", "line 1: cannot read"),
])
def test_bad_numbers_nesting_and_empty_images(tmp_path: Path, name: str, text: str, expect: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(InputError, match=expect) as info:
        extract(path)
    assert str(path) in str(info.value)


def test_latin1_program_is_read_as_a_program(tmp_path: Path) -> None:
    text = "# écrit à la main\n" + current(zlib.compress(b"\xe9" * 1500), "&(0x7f0000000200)='nodelalloc\xe9'")
    path = write(tmp_path, "latin1.syz", text.encode("latin-1"))
    [found] = extract(path)
    assert found.image == b"\xe9" * 1500
    assert any("line 1: the file is not UTF-8" in note for note in found.notes)
    assert found.mount_options.startswith("nodelalloc\xe9")


def test_empty_directory_and_directory_of_text(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no image, syzkaller program or C reproducer in this directory"):
        extract_all([tmp_path / "empty"])
    with pytest.raises(InputError, match="is a directory"):
        extract(tmp_path / "empty")
    with pytest.raises(FuselabError, match="size limit -1"):
        extract_all([tmp_path], -1)


# The kernel config in a bzImage.

def test_bzimage_whose_payload_is_3_gib(tmp_path: Path) -> None:
    from tests.test_kernel_config import bzimage

    path = bzimage(tmp_path / "bzImage", b"", compress=lambda _: zeros_zlib(3072, 31))
    assert path.stat().st_size < 4 * MIB
    out = measure(path, kernel=True, peak=128 * MIB, seconds=8)
    assert out["error"] == "ValueError" and "more than 512 MiB" in out["message"]
    big = bzimage(tmp_path / "cfg", b"IKCFG_ST" + zeros_zlib(64, 31) + b"IKCFG_ED")
    out = measure(big, kernel=True, peak=128 * MIB)
    assert out["error"] == "ValueError" and "IKCONFIG" in out["message"]
    for name in ("/dev/zero", tmp_path):
        out = measure(name, kernel=True, peak=64 * MIB, seconds=3)
        assert out["error"] == "ValueError" and "not a regular file" in out["message"]


# Property-based: whatever the bytes, an image list or the lab's error, in bounded time and memory.

SMALL = 1 * MIB
PROPERTY = settings(max_examples=int(os.environ.get("FUSELAB_FUZZ_EXAMPLES", "150")), deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_bounded(path: Path) -> None:
    """Extract `path` under a 1 MiB limit: images within it or an InputError, and at most 48 MiB allocated."""
    tracemalloc.start()
    try:
        found = extract(path, SMALL)
    except InputError as exc:
        assert str(path) in str(exc)
        found = []
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert sum(item.size for item in found) <= SMALL
    assert peak < 48 * MIB


def numbers() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(0, 2**70).map(hex), st.integers(0, 2**70).map(str),
                     st.sampled_from(["0", "0123", "09", "-1", "0x", "1" * 30]))


SYZ_TOKENS = st.one_of(
    st.sampled_from(["syz_mount_image$ext4(", "syz_mount_image$vfat(", "r0 = ", "&AUTO", "&(0x7f0000000000)", "=",
                     "ANY=", ", ", "(", ")", "[", "]", "{", "}", "@errors_continue", "@ANYBLOB=", "\n", "'", '"',
                     "'ext4\\x00'", "'./file0\\x00'", "<r0=>", "\\", "#", "/", "$"]),
    numbers(), numbers().map(lambda n: "/" + n),
    st.binary(max_size=64).map(lambda b: '"$' + base64.b64encode(zlib.compress(b)).decode() + '"'),
    st.binary(max_size=16).map(lambda b: f'"{b.hex()}"'), st.text(max_size=8))


@PROPERTY
@given(st.lists(SYZ_TOKENS, max_size=60))
def test_any_syz_text(tmp_path: Path, tokens: list[str]) -> None:
    read_bounded(write(tmp_path, "p.syz", "".join(tokens).encode("utf-8", "surrogatepass")))


C_TOKENS = st.one_of(
    st.sampled_from(["memcpy(", "memset(", "sprintf(", "syz_mount_image(", "(void*)", "(char*)", "*(uint64_t*)",
                     "*(uint8_t*)", "=", ", ", "(", ")", ";\n", "-", '"0x%016llx"', "(long long)", "/*", "*/",
                     "//", "\n", "#define X \\\n", '"', "'", '"\\x78\\x9c"', '"ext4\\000"', "\\"]),
    numbers(), st.binary(max_size=24).map(lambda b: '"' + "".join(f"\\x{x:02x}" for x in b) + '"'),
    st.text(max_size=8))


@PROPERTY
@given(st.lists(C_TOKENS, max_size=80))
def test_any_c_text(tmp_path: Path, tokens: list[str]) -> None:
    read_bounded(write(tmp_path, "p.c", "".join(tokens).encode("utf-8", "surrogatepass")))


@PROPERTY
@given(st.binary(max_size=4096), st.sampled_from(["raw", "gzip", "zlib-cut", "gzip-cut"]))
def test_any_image_bytes(tmp_path: Path, data: bytes, how: str) -> None:
    if how.startswith("gzip"):
        data = gzip.compress(data)
    if how.endswith("cut"):
        data = data[:len(data) // 2]
    read_bounded(write(tmp_path, "img", data))


def seeds() -> list[tuple[str, bytes]]:
    """Valid inputs of each layout, for the mutations below."""
    from tests.test_reproducers import OPTS, c_current, c_segments, syz_current, syz_segments

    image = b"\0" * 1024 + bytes(range(256)) * 8 + b"\0" * 1024
    return [("p.syz", syz_current(image, OPTS).encode()), ("s.syz", syz_segments(image, OPTS).encode()),
            ("p.c", c_current(image).encode()), ("s.c", c_segments(image).encode())]


SEEDS = seeds()
MUTATION = st.tuples(st.sampled_from(["flip", "cut", "insert", "repeat"]), st.integers(0, 1 << 16),
                     st.binary(min_size=1, max_size=12))


@PROPERTY
@given(st.sampled_from(SEEDS), st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_programs(tmp_path: Path, seed: tuple[str, bytes], mutations: list[tuple[str, int, bytes]]) -> None:
    name, data = seed
    for how, at, piece in mutations:
        at %= len(data) + 1
        if how == "flip":
            data = data[:at] + piece + data[at + len(piece):]
        elif how == "cut":
            data = data[:at] + data[at + len(piece) * 8:]
        elif how == "insert":
            data = data[:at] + piece + data[at:]
        else:
            data = data[:at] + data[at:at + 64] * 20 + data[at + 64:]
    read_bounded(write(tmp_path, name, data))
