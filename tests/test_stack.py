"""Stacks from source without a build: specs, content keys, patch series, layer installation."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from pytest_fuselab import guestconfig
from pytest_fuselab.build.stack import build, buildroot, keys, patchseries, spec as stackspec
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
    assert stackspec.parse("debian") is None and stackspec.parse("") is None
    spec = stackspec.parse("debian-source")
    assert spec is not None and spec.libfuse.debian_package == "fuse3" and spec.e2fsprogs.debian_package == "e2fsprogs"


def test_inline_stack_with_ref_and_patches(tmp_path):
    lib = repo(tmp_path / "libfuse", {"meson.build": "x"})
    series = tmp_path / "series.mbox"
    series.write_text("x")
    spec = stackspec.parse(f"name=mine,libfuse={lib}@main,e2fsprogs-patches={series}")
    assert spec is not None and spec.name == "mine"
    assert (spec.libfuse.origin, spec.libfuse.ref) == (str(lib), "main")
    assert spec.e2fsprogs.debian_package == "e2fsprogs" and spec.e2fsprogs.patches == (str(series),)


def test_toml_stack(tmp_path):
    lib = repo(tmp_path / "libfuse", {"meson.build": "x"})
    (tmp_path / "p").mkdir()
    (tmp_path / "s.toml").write_text('name = "svc"\n[libfuse]\nsource = "libfuse"\nref = "main"\n'
                                     'options = ["-Dservice-socket-perms=0222"]\n[e2fsprogs]\nsource = "debian:e2fsprogs"\n'
                                     'patches = ["p"]\n')
    spec = stackspec.parse(str(tmp_path / "s.toml"))
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
        stackspec.parse(value)
    with pytest.raises(SettingError, match="stack from FUSELAB_STACK"):
        resolve(env={"FUSELAB_STACK": value})


def test_per_run_settings_are_checked():
    assert resolve(cli={"socket_mode": "0666", "fuse_conf": "user_allow_other,mount_max=3"}).socket_mode == "0666"
    with pytest.raises(SettingError, match="socket_mode from --fuselab-socket-mode"):
        resolve(cli={"socket_mode": "rw"})
    with pytest.raises(SettingError, match="fuse.conf options are"):
        resolve(cli={"fuse_conf": "allow_root"})
    assert guestconfig.fuse_conf_text("user_allow_other,mount_max=3").splitlines()[1:] == ["user_allow_other",
                                                                                    "mount_max = 3"]
    assert "SocketMode=0666" in guestconfig.socket_dropin("0666")


def test_settings_hold_the_parsed_stack(tmp_path):
    settings = resolve(env={"FUSELAB_STACK": "debian-source"})
    assert settings.stack is not None and settings.stack.name == "debian-source"
    assert settings.stack == stackspec.parse("debian-source") and "stack=debian-source" in settings.describe()
    default = resolve(env={})
    assert default.stack is None and stackspec.label(default.stack) == "debian" and "stack=debian" in default.describe()
    lib = repo(tmp_path / "libfuse", {"meson.build": "x"})
    inline = resolve(cli={"stack": f"libfuse={lib}"}, env={}).stack
    assert inline is not None and inline.setting == f"libfuse={lib}" and stackspec.label(inline) == inline.setting


def test_toml_stack_with_wrong_types_says_where(tmp_path):
    (tmp_path / "s.toml").write_text('[libfuse]\nsource = "debian:fuse3"\noptions = "-Dx=1"\npatches = [1]\n')
    with pytest.raises(ValueError, match="libfuse.patches must be a string or a list of strings"):
        stackspec.parse(str(tmp_path / "s.toml"))
    (tmp_path / "t.toml").write_text("libfuse = 3\n")
    with pytest.raises(ValueError, match=r"\[libfuse\] must be a table"):
        stackspec.parse(str(tmp_path / "t.toml"))


def test_released_stack_needs_no_layer():
    recipe = object()
    assert build.image_inputs(recipe, None, lambda message: None) == (recipe, None)  # type: ignore[arg-type]


class FakeGuest:
    """Records what would be written and run in a guest."""

    def __init__(self, sockets: str = "") -> None:
        self.files: dict[str, str] = {}
        self.commands: list[object] = []
        self.sockets = sockets

    def put(self, path, data, mode=0o644):
        self.files[path] = data

    def run(self, cmd, timeout=60, check=True, input=b"", env=None):
        self.commands.append(cmd)
        return type("R", (), {"stdout": self.sockets if "ListenSequentialPacket" in str(cmd) else ""})


def test_configure_from_applies_only_what_is_set():
    guest = FakeGuest("fuse4fs.socket\n")
    assert guestconfig.configure_from(guest, resolve(env={})) == [] and not guest.files and not guest.commands
    settings = resolve(cli={"fuse_conf": " user_allow_other, mount_max = 3", "socket_mode": "0666"}, env={})
    assert settings.fuse_conf == "user_allow_other,mount_max=3"
    changed = guestconfig.configure_from(guest, settings)
    assert changed == ["/etc/fuse.conf: user_allow_other,mount_max=3", "fuse4fs.socket: SocketMode=0666"]
    assert guest.files["/etc/fuse.conf"].endswith("user_allow_other\nmount_max = 3\n")
    assert "SocketMode=0666" in guest.files["/etc/systemd/system/fuse4fs.socket.d/fuselab-socket-mode.conf"]
    assert guest.commands[-1][-1] == "fuse4fs.socket"


def test_stack_command_names_what_is_wrong(monkeypatch):
    from pytest_fuselab.cli import main, stack as stack_cli

    monkeypatch.delenv("FUSELAB_STACK", raising=False)
    assert main(["stack", "build"]) == 2
    monkeypatch.setenv("FUSELAB_STACK", "libfuse=/nonexistent/tree")
    with pytest.raises(SettingError, match="stack from FUSELAB_STACK"):
        stack_cli.cli(argparse.Namespace(action="build", stack=None, rebuild=False, image=False), print)


def test_tree_key_follows_commits_uncommitted_changes_and_untracked_files(tmp_path):
    tree = repo(tmp_path / "t", {"a.c": "one\n"})
    log = tmp_path / "log"
    source = stackspec.Source("libfuse", str(tree))
    first = keys.source_key(source, None, log)
    assert keys.source_key(source, None, log) == first
    (tree / "a.c").write_text("two\n")
    second = keys.source_key(source, None, log)
    (tree / "new.c").write_text("new\n")
    third = keys.source_key(source, None, log)
    (tree / ".gitignore").write_text("build/\n")
    (tree / "build").mkdir()
    (tree / "build" / "junk.o").write_text("x")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "more")
    fourth = keys.source_key(source, None, log)
    assert len({first, second, third, fourth}) == 4
    (tree / "build" / "junk.o").write_text("y")  # ignored files do not count
    assert keys.source_key(source, None, log) == fourth
    assert "build/junk.o" not in keys.tree_files(tree) and "new.c" in keys.tree_files(tree)
    pinned = stackspec.Source("libfuse", str(tree), ref="HEAD~1")
    assert keys.source_key(pinned, None, log) != fourth
    (tree / "a.c").write_text("three\n")  # the work tree does not matter for a ref
    assert keys.source_key(pinned, None, log) == keys.source_key(pinned, None, log)


def test_plain_directory_key(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("1")
    source = stackspec.Source("e2fsprogs", str(tmp_path / "d"))
    before = keys.source_key(source, None, tmp_path / "log")
    (tmp_path / "d" / "f").write_text("2")
    assert keys.source_key(source, None, tmp_path / "log") != before


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
    build.install_tree(layer, root)
    assert (root / "lib").is_symlink() and (root / "usr/lib/udev/rules.d/99-fuse3.rules").read_text() == "rule"
    assert (root / "usr/sbin/mke2fs").read_text() == "new" and os.readlink(root / "usr/sbin/mkfs.ext4") == "mke2fs"
    assert build.units_to_enable(layer) == ["fuse4fs.socket"]


def test_fresh_fuse3_pc_points_into_the_build(tmp_path):
    root = buildroot.BuildRoot(tmp_path, "sid")
    pc = root.host_path("/build/libfuse/dest/usr/lib/x86_64-linux-gnu/pkgconfig/fuse3.pc")
    pc.parent.mkdir(parents=True)
    pc.write_text("prefix=/usr\nlibdir=${prefix}/lib/x86_64-linux-gnu\nincludedir=${prefix}/include\n"
                  "service_socket_dir=/run/filesystems\n\nName: fuse3\nVersion: 3.19.0-rc0\n")
    pcdir = build.private_pkgconfig(root, "/build/libfuse/dest")
    text = root.host_path(pcdir).joinpath("fuse3.pc").read_text()
    assert "prefix=/build/libfuse/dest/usr\n" in text and "service_socket_dir=/run/filesystems\n" in text


def test_build_arguments_follow_the_tree(tmp_path):
    (tmp_path / "meson_options.txt").write_text("option('examples', type : 'boolean')\noption('useroot', type: 'boolean')\n")
    args = build.meson_args(tmp_path)
    assert "-Dexamples=false" in args and "-Duseroot=true" in args and not any("tests" in a for a in args)
    (tmp_path / "configure").write_text("enable_fuse2fs\nenable_fuse4fs\n")
    assert {"--enable-fuse2fs", "--enable-fuse4fs"} <= set(build.configure_args(tmp_path))
    (tmp_path / "configure").write_text("enable_fuse2fs\n")
    assert "--enable-fuse4fs" not in build.configure_args(tmp_path)


def test_deb_src_comes_from_the_host_mirror():
    text = buildroot.sources_text("http://mirror.example/debian", "sid")
    assert "Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: sid\n" in text


def test_user_meson_options_replace_the_defaults(tmp_path):
    (tmp_path / "meson.options").write_text("option('examples', type : 'boolean')\n")
    args = build.meson_args(tmp_path, ("-Dexamples=true", "-Dservice-socket-perms=0222"))
    assert "-Dexamples=false" not in args and args[-2:] == ["-Dexamples=true", "-Dservice-socket-perms=0222"]


def test_service_examples_are_installed_with_their_units(tmp_path):
    built, src, dest = tmp_path / "build", tmp_path / "src", tmp_path / "dest"
    built.mkdir()
    src.mkdir()
    (built / "service_ll").write_text("elf")
    (built / "service_ll.socket").write_text("[Socket]\nListenSequentialPacket=/run/filesystems/service_ll\n")
    (src / "service_ll@.service").write_text("[Service]\nExecStart=/path/to/service_ll\nDynamicUser=true\n")
    (built / "null.socket").write_text("[Socket]\n")  # no program built: skipped
    assert build.install_service_examples(built, src, dest) == ["service_ll"]
    unit = (dest / "usr/lib/systemd/system/service_ll@.service").read_text()
    assert unit == "[Service]\nExecStart=/usr/libexec/libfuse-examples/service_ll\nDynamicUser=true\n"
    assert (dest / "usr/libexec/libfuse-examples/service_ll").read_text() == "elf"
    assert (dest / "usr/lib/systemd/system/service_ll.socket").exists()


def test_a_layer_is_built_once_per_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSELAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(buildroot, "ensure", lambda progress: buildroot.BuildRoot(tmp_path / "root", "sid"))
    monkeypatch.setattr(build, "source_key", lambda source, root, log: source.origin)
    builds = []

    def fake_build(spec, root, layer, work, progress):
        builds.append(work.name)
        (work / "build.log").write_text("log")
        if spec.name == "broken":
            raise ImageError("does not build")
        (work / "manifest.json").write_text("{}")

    monkeypatch.setattr(build, "_build", fake_build)
    lib = tmp_path / "lib"
    lib.mkdir()
    spec = stackspec.StackSpec("mine", stackspec.Source("libfuse", str(lib)), stackspec.Source("e2fsprogs", str(lib)))
    layer = build.ensure(spec, print)
    assert build.ensure(spec, print) == layer and len(builds) == 1 and layer.manifest_path.is_file()
    build.ensure(spec, print, rebuild=True)
    assert len(builds) == 2 and layer.manifest_path.is_file()
    with pytest.raises(ImageError, match="does not build"):
        build.ensure(stackspec.StackSpec("broken", spec.libfuse, spec.e2fsprogs), print)
    assert (build.stacks_dir() / builds[-1] / "build.log").exists()  # kept for a person to read


@pytest.mark.parametrize("text, message", [
    ('name = "../../../tmp/x"\n', r"name '\.\./\.\./\.\./tmp/x' may hold only"),
    ('name = ".hidden"\n', "must start with a letter"),
    ('name = "a/b"\n', "may hold only"),
    (f'name = "{"x" * 65}"\n', "at most 64"),
    ("name = 5\n", "name must be a string"),
    ('libfuse = "abc"\n', r"\[libfuse\] must be a table"),
    ("[libfuse]\nsource = 5\n", "libfuse.source must be a string"),
    ("[libfuse]\npatches = 5\n", "libfuse.patches must be a string or a list of strings"),
    ('[libfuse]\nref = "main"\n', "libfuse.ref needs libfuse.source"),
    ("[libfuse]\nref = 5\n", "libfuse.ref must be a string"),
    ('[libfuse]\nsorce = "x"\n', r"unknown key sorce in \[libfuse\]"),
    ('nme = "x"\n', "unknown key nme at the top"),
    ('[e2fsprogs]\nsource = "debian:../x"\n', "is not a Debian source package name"),
])
def test_hostile_stack_files_give_clean_errors_naming_file_and_key(tmp_path, text, message):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        stackspec.parse(str(tmp_path / "s.toml"))
    assert str(tmp_path / "s.toml") in str(caught.value)
    with pytest.raises(SettingError, match="stack from FUSELAB_STACK"):
        resolve(env={"FUSELAB_STACK": str(tmp_path / "s.toml")})


def test_stack_file_not_text_or_too_big(tmp_path):
    (tmp_path / "s.toml").write_bytes(b"name = \"\xff\"\n")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        stackspec.parse(str(tmp_path / "s.toml"))
    with open(tmp_path / "s.toml", "wb") as f:
        f.truncate(8 << 30)  # sparse: read only up to the bound
    with pytest.raises(ValueError, match="larger than 1024 KiB"):
        stackspec.parse(str(tmp_path / "s.toml"))
    os.mkfifo(tmp_path / "f.toml")
    with pytest.raises(ValueError, match="not a regular file"):
        stackspec.parse(str(tmp_path / "f.toml"))


def test_one_option_string_stays_one_option_and_names_from_file_names_are_made_safe(tmp_path):
    (tmp_path / "my stack;x.toml").write_text('[libfuse]\noptions = "-Dx=1"\n')
    spec = stackspec.parse(str(tmp_path / "my stack;x.toml"))
    assert spec is not None and spec.libfuse.options == ("-Dx=1",) and spec.name == "my-stack-x"


@pytest.mark.parametrize("value, message", [
    ("name=../x,libfuse=/tmp", "stack name= '../x' may hold only"),
    ("libfuse=/tmp@--output=/tmp/x", "is not a git revision"),
    ("libfuse=debian:Fuse 3", "not a Debian source package name"),
])
def test_inline_names_and_refs_are_checked(value, message):
    with pytest.raises(ValueError, match=message):
        stackspec.parse(value)


def test_layer_of_a_spec_made_in_code_refuses_an_unsafe_name(monkeypatch):
    monkeypatch.setattr(build.buildroot, "ensure", lambda progress: pytest.fail("must check the name first"))
    bad = stackspec.StackSpec("../x", stackspec._source("libfuse", None), stackspec._source("e2fsprogs", None))
    with pytest.raises(ImageError, match="stack name '../x' may hold only"):
        build.ensure(bad, print)

