"""Stacks from source without a build: specs, content keys, patch series, layer installation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pytest_fuselab.build.stack import buildroot
from pytest_fuselab.build.stack import patchseries
from pytest_fuselab.build import stack
from pytest_fuselab.errors import ImageError, SettingError
from pytest_fuselab.settings import resolve

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


def git(tree: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(tree), *args], capture_output=True, text=True, check=True).stdout


def repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base")
    return path


def test_named_stacks():
    assert stack.parse("debian") is None and stack.parse("") is None
    spec = stack.parse("debian-source")
    assert spec is not None and spec.libfuse.debian_package == "fuse3" and spec.e2fsprogs.debian_package == "e2fsprogs"


def test_inline_stack_with_ref_and_patches(tmp_path):
    lib = repo(tmp_path / "libfuse", {"meson.build": "x"})
    series = tmp_path / "series.mbox"
    series.write_text("x")
    spec = stack.parse(f"name=mine,libfuse={lib}@main,e2fsprogs-patches={series}")
    assert spec is not None and spec.name == "mine"
    assert (spec.libfuse.origin, spec.libfuse.ref) == (str(lib), "main")
    assert spec.e2fsprogs.debian_package == "e2fsprogs" and spec.e2fsprogs.patches == (str(series),)


def test_toml_stack(tmp_path):
    lib = repo(tmp_path / "libfuse", {"meson.build": "x"})
    (tmp_path / "p").mkdir()
    (tmp_path / "s.toml").write_text('name = "svc"\n[libfuse]\nsource = "libfuse"\nref = "main"\n'
                                     'options = ["-Dservice-socket-perms=0222"]\n[e2fsprogs]\nsource = "debian:e2fsprogs"\n'
                                     'patches = ["p"]\n')
    spec = stack.parse(str(tmp_path / "s.toml"))
    assert spec is not None and spec.name == "svc" and spec.libfuse.origin == str(lib)
    assert spec.libfuse.options == ("-Dservice-socket-perms=0222",) and spec.e2fsprogs.patches == (str(tmp_path / "p"),)


@pytest.mark.parametrize("value, message", [
    ("libfuse=/nonexistent/tree", "not a directory"),
    ("libfuse=/tmp,e2fsprogs-patches=/nonexistent.mbox", "does not exist"),
    ("fuse=/tmp", "unknown: fuse"),
    ("/nonexistent/stack.toml", "does not exist"),
])
def test_bad_stacks_name_the_problem_and_the_source(value, message):
    with pytest.raises(ValueError, match=message):
        stack.parse(value)
    with pytest.raises(SettingError, match="stack from FUSELAB_STACK"):
        resolve(env={"FUSELAB_STACK": value})


def test_per_run_settings_are_checked():
    assert resolve(cli={"socket_mode": "0666", "fuse_conf": "user_allow_other,mount_max=3"}).socket_mode == "0666"
    with pytest.raises(SettingError, match="socket_mode from --fuselab-socket-mode"):
        resolve(cli={"socket_mode": "rw"})
    with pytest.raises(SettingError, match="fuse.conf options are"):
        resolve(cli={"fuse_conf": "allow_root"})
    assert stack.fuse_conf_text("user_allow_other,mount_max=3").splitlines()[1:] == ["user_allow_other",
                                                                                    "mount_max = 3"]
    assert "SocketMode=0666" in stack.socket_dropin("0666")


def test_tree_key_follows_commits_uncommitted_changes_and_untracked_files(tmp_path):
    tree = repo(tmp_path / "t", {"a.c": "one\n"})
    log = tmp_path / "log"
    source = stack.Source("libfuse", str(tree))
    first = stack.source_key(source, None, log)
    assert stack.source_key(source, None, log) == first
    (tree / "a.c").write_text("two\n")
    second = stack.source_key(source, None, log)
    (tree / "new.c").write_text("new\n")
    third = stack.source_key(source, None, log)
    (tree / ".gitignore").write_text("build/\n")
    (tree / "build").mkdir()
    (tree / "build" / "junk.o").write_text("x")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "more")
    fourth = stack.source_key(source, None, log)
    assert len({first, second, third, fourth}) == 4
    (tree / "build" / "junk.o").write_text("y")  # ignored files do not count
    assert stack.source_key(source, None, log) == fourth
    assert "build/junk.o" not in stack.tree_files(tree) and "new.c" in stack.tree_files(tree)
    pinned = stack.Source("libfuse", str(tree), ref="HEAD~1")
    assert stack.source_key(pinned, None, log) != fourth
    (tree / "a.c").write_text("three\n")  # the work tree does not matter for a ref
    assert stack.source_key(pinned, None, log) == stack.source_key(pinned, None, log)


def test_plain_directory_key(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("1")
    source = stack.Source("e2fsprogs", str(tmp_path / "d"))
    before = stack.source_key(source, None, tmp_path / "log")
    (tmp_path / "d" / "f").write_text("2")
    assert stack.source_key(source, None, tmp_path / "log") != before


def mail(n: int, total: int, subject: str, diff: str) -> str:
    return (f"* [PATCH {n}/{total}] {subject}\n  2026-01-01 10:00 ` [PATCH 0/{total}] cover Someone\n"
            f"@ 2026-01-01 10:0{n}   ` Some One\n  0 siblings, 0 replies; 4+ messages in thread\n"
            f"From: Some One @ 2026-01-01 10:0{n} UTC (permalink / raw)\n  To: list\n\n"
            f"From: Some One <one@example.org>\n\n{subject}.\n\nSigned-off-by: Some One <one@example.org>\n---\n"
            f" f.txt | 1 +\n\n{diff}\n\n^ permalink raw reply related\t[flat|nested] 4+ messages in thread\n\n")


DIFF1 = ("diff --git a/f.txt b/f.txt\nindex 0000000..1111111 100644\n--- a/f.txt\n+++ b/f.txt\n"
         "@@ -1,3 +1,4 @@\n one\n+one and a half\n two")  # its third context line, blank, is lost on the page
DIFF2 = ("diff --git a/f.txt b/f.txt\n--- a/f.txt\n+++ b/f.txt\n@@ -1,3 +1,3 @@\n one\n-one and a half\n"
         "+1.5\n two\n")
THREAD = ("* [PATCH 0/2] cover\n@ 2026-01-01 10:00 Some One\nFrom: Some One @ 2026-01-01 10:00 UTC (permalink / raw)\n"
          "  To: list\n\nCover letter.\n\n^ permalink raw reply\t[flat|nested] 4+ messages in thread\n\n"
          + mail(1, 2, "f: add a line", DIFF1) + mail(2, 2, "f: say 1.5", DIFF2)
          + "* Re: [PATCH 1/2] f: add a line\n@ 2026-01-02 Other\nFrom: Other @ 2026-01-02 10:00 UTC (permalink / raw)\n"
          "\nLooks good.\n\n^ permalink raw reply\t[flat|nested] 4+ messages in thread\n")


def test_thread_page_gives_its_patches_in_order(tmp_path):
    (tmp_path / "thread.txt").write_text(THREAD)
    patches = patchseries.load(tmp_path / "thread.txt")
    assert [p.subject for p in patches] == ["[PATCH 1/2] f: add a line", "[PATCH 2/2] f: say 1.5"]
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "f.txt").write_text("one\ntwo\n\n")
    applied = patchseries.apply([tmp_path / "thread.txt"], tree, tmp_path / "log")
    assert len(applied) == 2 and (tree / "f.txt").read_text() == "one\n1.5\ntwo\n\n"
    assert git(tree, "log", "--format=%an <%ae>|%s").splitlines()[0] == "Some One <one@example.org>|f: say 1.5"


def test_series_that_does_not_apply_names_the_patch(tmp_path):
    (tmp_path / "thread.txt").write_text(THREAD)
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "f.txt").write_text("something else\n")
    with pytest.raises(ImageError, match=r"patch 1/2 '\[PATCH 1/2\] f: add a line' .*thread.txt: message 1.* "
                                         r"does not apply"):
        patchseries.apply([tmp_path / "thread.txt"], tree, tmp_path / "log")


def test_patch_directory_and_mbox(tmp_path):
    tree = repo(tmp_path / "t", {"f.txt": "one\ntwo\n"})
    (tree / "f.txt").write_text("one\n1.5\ntwo\n")
    git(tree, "commit", "-q", "-am", "add 1.5")
    (tree / "f.txt").write_text("one\n1.5\ntwo\nthree\n")
    git(tree, "commit", "-q", "-am", "add three")
    out = tmp_path / "patches"
    git(tree, "format-patch", "-q", "-2", "-o", str(out))
    assert [p.subject for p in patchseries.load(out)] == ["[PATCH 1/2] add 1.5", "[PATCH 2/2] add three"]
    mbox = tmp_path / "all.mbox"
    mbox.write_text("".join(p.read_text() for p in sorted(out.iterdir())))
    assert len(patchseries.load(mbox)) == 2
    (out / "series").write_text(sorted(os.listdir(out))[1] + "\n")
    assert [p.subject for p in patchseries.load(out)] == ["[PATCH 2/2] add three"]
    (tmp_path / "cover.mbox").write_text("From x Mon Sep 17 00:00:00 2001\nSubject: [PATCH 0/2] cover\n\ntext\n")
    with pytest.raises(ImageError, match="holds no patches"):
        patchseries.load(tmp_path / "cover.mbox")


def test_layer_goes_through_merged_usr_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "sbin").symlink_to("usr/sbin")
    (root / "usr/sbin/mke2fs").write_text("old")
    layer = tmp_path / "layer"
    (layer / "lib/udev/rules.d").mkdir(parents=True)
    (layer / "lib/udev/rules.d/99-fuse3.rules").write_text("rule")
    (layer / "sbin").mkdir()
    (layer / "sbin/mke2fs").write_text("new")
    (layer / "sbin/mkfs.ext4").symlink_to("mke2fs")
    (layer / "usr/lib/systemd/system").mkdir(parents=True)
    (layer / "usr/lib/systemd/system/fuse4fs.socket").write_text("[Socket]\n[Install]\nWantedBy=sockets.target\n")
    (layer / "usr/lib/systemd/system/fuse4fs@.service").write_text("[Service]\n[Install]\n")
    (layer / "usr/lib/systemd/system/x.service").write_text("[Service]\n")
    stack.install_tree(layer, root)
    assert (root / "lib").is_symlink() and (root / "usr/lib/udev/rules.d/99-fuse3.rules").read_text() == "rule"
    assert (root / "usr/sbin/mke2fs").read_text() == "new" and os.readlink(root / "usr/sbin/mkfs.ext4") == "mke2fs"
    assert stack.units_to_enable(layer) == ["fuse4fs.socket"]


def test_fresh_fuse3_pc_points_into_the_build(tmp_path):
    root = buildroot.BuildRoot(tmp_path, "sid")
    pc = root.host_path("/build/libfuse/dest/usr/lib/x86_64-linux-gnu/pkgconfig/fuse3.pc")
    pc.parent.mkdir(parents=True)
    pc.write_text("prefix=/usr\nlibdir=${prefix}/lib/x86_64-linux-gnu\nincludedir=${prefix}/include\n"
                  "service_socket_dir=/run/filesystems\n\nName: fuse3\nVersion: 3.19.0-rc0\n")
    pcdir = stack.private_pkgconfig(root, "/build/libfuse/dest")
    text = root.host_path(pcdir).joinpath("fuse3.pc").read_text()
    assert "prefix=/build/libfuse/dest/usr\n" in text and "service_socket_dir=/run/filesystems\n" in text


def test_build_arguments_follow_the_tree(tmp_path):
    (tmp_path / "meson_options.txt").write_text("option('examples', type : 'boolean')\noption('useroot', type: 'boolean')\n")
    args = stack.meson_args(tmp_path)
    assert "-Dexamples=false" in args and "-Duseroot=true" in args and not any("tests" in a for a in args)
    (tmp_path / "configure").write_text("enable_fuse2fs\nenable_fuse4fs\n")
    assert {"--enable-fuse2fs", "--enable-fuse4fs"} <= set(stack.configure_args(tmp_path))
    (tmp_path / "configure").write_text("enable_fuse2fs\n")
    assert "--enable-fuse4fs" not in stack.configure_args(tmp_path)


def test_deb_src_comes_from_the_host_mirror():
    text = buildroot.sources_text("http://mirror.example/debian", "sid")
    assert "Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: sid\n" in text


def test_user_meson_options_replace_the_defaults(tmp_path):
    (tmp_path / "meson.options").write_text("option('examples', type : 'boolean')\n")
    args = stack.meson_args(tmp_path, ("-Dexamples=true", "-Dservice-socket-perms=0222"))
    assert "-Dexamples=false" not in args and args[-2:] == ["-Dexamples=true", "-Dservice-socket-perms=0222"]


def test_service_examples_are_installed_with_their_units(tmp_path):
    built, src, dest = tmp_path / "build", tmp_path / "src", tmp_path / "dest"
    built.mkdir()
    src.mkdir()
    (built / "service_ll").write_text("elf")
    (built / "service_ll.socket").write_text("[Socket]\nListenSequentialPacket=/run/filesystems/service_ll\n")
    (src / "service_ll@.service").write_text("[Service]\nExecStart=/path/to/service_ll\nDynamicUser=true\n")
    (built / "null.socket").write_text("[Socket]\n")  # no program built: skipped
    assert stack.install_service_examples(built, src, dest) == ["service_ll"]
    unit = (dest / "usr/lib/systemd/system/service_ll@.service").read_text()
    assert unit == "[Service]\nExecStart=/usr/libexec/libfuse-examples/service_ll\nDynamicUser=true\n"
    assert (dest / "usr/libexec/libfuse-examples/service_ll").read_text() == "elf"
    assert (dest / "usr/lib/systemd/system/service_ll.socket").exists()
