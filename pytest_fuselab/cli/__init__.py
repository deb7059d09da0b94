"""The `fuselab` command: setup, doctor, image, run, bench, exec, shell."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pytest_fuselab.cli import bench
from pytest_fuselab import capabilities
from pytest_fuselab import host
from pytest_fuselab.build import image
from pytest_fuselab.build.kernel import build as kbuild
from pytest_fuselab.build import recipe
from pytest_fuselab.cli import shell
from pytest_fuselab.build import stack
from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.errors import FuselabError, SettingError
from pytest_fuselab.lab import Lab, stderr_progress
from pytest_fuselab.settings import OPTIONS, resolve



def default_scenarios() -> Path:
    """The scenario suite `fuselab run` runs without PATHS: ./scenarios, else the clone's."""
    for candidate in (Path.cwd() / "scenarios", Path(__file__).resolve().parents[2] / "scenarios"):
        if candidate.is_dir():
            return candidate
    raise SettingError("no scenario suite here (./scenarios): give `fuselab run` the scenario files or "
                       "directories to run, or run it from a clone of pytest-fuselab")


def add_settings(parser: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        if opt.name not in ("suppress", "corpus"):
            parser.add_argument(opt.flag.replace("fuselab-", ""), dest=opt.name, metavar=opt.metavar,
                                help=f"{opt.help} (env {opt.env})")


def settings_from(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return resolve({opt.name: getattr(args, opt.name, None) for opt in OPTIONS})


def cmd_setup(args: argparse.Namespace) -> int:
    return host.setup()


def cmd_doctor(args: argparse.Namespace) -> int:
    rows = host.doctor_lines(settings_from(args).accel)
    if not args.no_probe:
        rows += capabilities.doctor_rows(settings_from(args))
    width = max(len(topic) for topic, _ in rows)
    for topic, finding in rows:
        print(f"{topic.ljust(width)}  {finding}")
    return 1 if any("MISSING" in finding for _, finding in rows) else 0


def cmd_image(args: argparse.Namespace) -> int:
    if args.action == "build":
        built = image.ensure(recipe.load(args.recipe), stderr_progress, rebuild=args.rebuild, refresh=args.refresh)
        manifest = built.manifest()
        print(f"{built.directory}  kernel {manifest['kernel_version']}  built {manifest['built']}")
    elif args.action == "list":
        for img in image.built_images():
            problem = img.problem()
            if problem:
                print(f"{img.directory.name}  UNUSABLE: {problem}")
                continue
            m = img.manifest()
            pk = m["packages"]
            assert isinstance(pk, dict)
            layer = m.get("stack") or {}
            assert isinstance(layer, dict)
            fuse, e2fs = (layer["versions"]["libfuse"], layer["versions"]["e2fsprogs"]) if layer else (
                pk.get("fuse3"), pk.get("fuse2fs"))
            print(f"{img.directory.name}  kernel {m['kernel_version']}  fuse3 {fuse}  fuse2fs {e2fs}  "
                  f"systemd {pk.get('systemd')}  built {m['built']}"
                  + (f"  stack {layer['name']} from {layer['sources']}" if layer else ""))
        if not image.built_images():
            print(f"no images built yet in {image.images_dir()} (`fuselab image build`)")
    else:
        current = image.latest_built(recipe.load(args.recipe))
        keep = {current.directory} if current else set()
        for path in image.clean(everything=args.all, keep=keep):
            print(f"removed {path}")
        if current and not args.all:
            print(f"kept {current.directory} (the newest image of recipe {args.recipe}; --all removes it too)")
    return 0


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    import pytest

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    settings = settings_from(args)
    if settings.stack != "debian":  # built here, not inside the first test (and its timeout)
        base, layer = stack.image_inputs(recipe.load(settings.image), settings.stack, stderr_progress)
        image.ensure(base, stderr_progress, layer=layer)
    argv = [str(p) for p in (args.paths or [default_scenarios()])]
    argv += [f"--junitxml={results / 'junit.xml'}", "-o", "junit_family=legacy", "-rfEs", "-p", "no:cacheprovider"]
    argv += [f"--fuselab-{name.replace('_', '-')}={value}" for name, value in vars(args).items()
             if value is not None and name in {o.name for o in OPTIONS}]
    status = pytest.main(argv + extra)
    print(f"fuselab: JUnit XML in {results / 'junit.xml'}")
    return int(status)


def cmd_bench(args: argparse.Namespace) -> int:
    figures = bench.run(settings_from(args), runs=args.runs, images=args.images, guests=args.guests)
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        for key, value in figures.items():
            print(f"{key:18} {value}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fuselab-exec-") as tmp:
        lab = Lab(settings_from(args), Path(tmp))
        with lab.guest() as guest:
            result = guest.run(args.command, timeout=args.timeout, check=False)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return 124 if result.timed_out else result.exit_status


def cmd_repro(args: argparse.Namespace) -> int:
    """Extract the images of reproducers or image files, run each through the drivers, judge."""
    from pytest_fuselab.judge import containment
    from pytest_fuselab.judge import matrix
    from pytest_fuselab import reproducers

    items = reproducers.extract_all([Path(p) for p in args.files], size_limit=args.size_limit << 20)
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="fuselab-repro-") as tmp:
        lab = Lab(settings_from(args), Path(tmp))
        usable = containment.usable_drivers(lab)
        drivers = args.driver or usable
        for name in set(drivers) - set(usable):
            raise SettingError(f"--driver {name}: this guest's stack cannot run it "
                               f"({capabilities.of(lab).missing(DRIVERS[name].needs)}); use --stack with a service stack")
        def said(v: containment.Verdict) -> None:
            steps = " ".join(f"{s.name}={s.status}" for s in v.steps)
            print(f"{v.verdict.upper():9} {v.driver:15} {v.image}  {steps}  server:{v.server}  "
                  f"{'; '.join(v.splats) or '-'}  {v.seconds:.1f}s", flush=True)
            verdicts.append(v)

        for n in range(args.repeat):
            workdir = Path(tmp) / f"round{n}"
            if args.guests > 1:
                for v in containment.judge_images(lab, workdir, items, drivers, args.guests):
                    said(v)
            else:
                for _v in containment.ImageRunner(lab, workdir).run(items, drivers, said):
                    pass
    if args.json:
        Path(args.json).write_text("".join(json.dumps(v.to_json()) + "\n" for v in verdicts))
    if args.html:
        Path(args.html).write_text(matrix.page(verdicts))
        print(f"fuselab: matrix page in {args.html}")
    print("\n".join(matrix.terminal(verdicts)))
    if args.repeat > 1:
        from pytest_fuselab.judge import triage

        print("\n".join(triage.fire_rates(verdicts, args.repeat)))
    breaches = [v for v in verdicts if v.verdict == "breach"]
    print(f"{len(verdicts)} verdicts: {len(breaches)} containment breaches, "
          f"{sum(v.verdict == 'finding' for v in verdicts)} kernel findings")
    return 1 if breaches else 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from pytest_fuselab import corpus

    directory = Path(args.directory)
    entries = corpus.generate(args.seed, args.count, directory,
                              lambda done, total, name: print(f"[{done}/{total}] {name}", flush=True))
    kinds = sorted({m["kind"] for e in entries for m in e["mutations"]})
    print(f"{len(entries)} images in {directory} (manifest {directory / corpus.MANIFEST}); mutations: {', '.join(kinds)}")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    return stack.cli(args, stderr_progress)


def cmd_bisect_run(args: argparse.Namespace) -> int:
    from pytest_fuselab.cli import bisect

    return bisect.main(args, settings_from)


def cmd_kernel(args: argparse.Namespace) -> int:
    return kbuild.cli(args, stderr_progress)


def cmd_shell(args: argparse.Namespace) -> int:
    return shell.run(settings_from(args), args.remote)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fuselab", description="A QEMU lab for Linux filesystems and FUSE servers.")
    sub = p.add_subparsers(dest="subcommand", required=True)
    sub.add_parser("setup", help="install the host packages the lab needs (apt, as root)")
    doctor = sub.add_parser("doctor", help="report QEMU, acceleration (probed), disk, cache and the stack's capabilities")
    doctor.add_argument("--no-probe", action="store_true", help="do not start a guest to probe the FUSE stack")
    add_settings(doctor)
    stack.add_cli(sub)
    kbuild.add_cli(sub)
    from pytest_fuselab.cli import bisect

    bisect.add_cli(sub, add_settings)
    img = sub.add_parser("image", help="build, list or remove guest images")
    img.add_argument("action", choices=["build", "list", "clean"])
    img.add_argument("--recipe", default="sid", help="recipe name in images/ or a .toml path (default: sid)")
    img.add_argument("--rebuild", action="store_true", help="build even if a cached image looks fine")
    img.add_argument("--refresh", action="store_true", help="read the archive's package versions now")
    img.add_argument("--all", action="store_true", help="with clean: remove every image and snapshot")
    run = sub.add_parser("run", help="run the scenario suite and print a summary (extra args go to pytest)")
    run.add_argument("paths", nargs="*", help="scenario files or directories (default: the scenarios/ suite)")
    run.add_argument("--results", default="fuselab-results", help="directory for JUnit XML (default: %(default)s)")
    add_settings(run)
    b = sub.add_parser("bench", help="measure cold boot, reset and per-test overhead (medians)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--runs", type=int, default=5, help="runs per figure (default: %(default)s)")
    b.add_argument("--images", type=int, default=12, help="images for images_per_min (default: %(default)s)")
    b.add_argument("--guests", type=int, default=1,
                   help="guests judging images side by side for images_per_min (default: %(default)s)")
    add_settings(b)
    ex = sub.add_parser("exec", help="run one shell command in a fresh guest")
    ex.add_argument("command")
    ex.add_argument("--timeout", type=float, default=300)
    add_settings(ex)
    cp = sub.add_parser("corpus", help="generate a deterministic corpus of hostile ext4 images")
    cp.add_argument("action", choices=["generate"])
    cp.add_argument("directory")
    cp.add_argument("--seed", type=int, default=1)
    cp.add_argument("--count", type=int, default=40)
    rp = sub.add_parser("repro", help="run images or syzkaller reproducers through the drivers and judge")
    rp.add_argument("files", nargs="+", help="images (.gz/.xz/.zst/.bz2 too), .syz programs, C reproducers, dirs")
    rp.add_argument("--driver", action="append", choices=list(DRIVERS),
                    help="driver to use (repeatable; default: all)")
    rp.add_argument("--repeat", type=int, default=1, help="run everything N times (how reliably it fires)")
    rp.add_argument("--guests", type=int, default=1, help="guests judging images side by side (default 1)")
    rp.add_argument("--json", help="write the verdicts as JSON lines to this file")
    rp.add_argument("--html", help="write the images x drivers matrix as a self-contained HTML page")
    rp.add_argument("--size-limit", type=int, default=512, help="largest image to accept, in MiB (default 512)")
    add_settings(rp)
    sh = sub.add_parser("shell", help="an SSH session in a fresh guest (interactive, or `shell -- CMD`)")
    sh.add_argument("remote", nargs=argparse.REMAINDER, help="a command to run over SSH instead of a login")
    add_settings(sh)
    return p


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if extra and args.subcommand == "bisect-run":
        print(f"fuselab bisect-run: unrecognized arguments: {' '.join(extra)} (exit 125: cannot test)", file=sys.stderr)
        return 125
    if extra and args.subcommand != "run":
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    handlers = {"setup": cmd_setup, "doctor": cmd_doctor, "image": cmd_image, "bench": cmd_bench,
                "exec": cmd_exec, "shell": cmd_shell, "repro": cmd_repro, "corpus": cmd_corpus,
                "stack": cmd_stack, "kernel": cmd_kernel,
                "bisect-run": cmd_bisect_run}
    try:
        if args.subcommand == "run":
            return cmd_run(args, extra)
        return handlers[args.subcommand](args)
    except FuselabError as exc:
        print(f"fuselab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fuselab: interrupted", file=sys.stderr)
        return 130
