"""`fuselab hosts setup`: the controller's project, its environment and its guest image on a host (fabric)."""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass

from pytest_fuselab.build import image as images
from pytest_fuselab.build import recipe as recipes
from pytest_fuselab.cache import Progress, cache_dir
from pytest_fuselab.errors import HostError
from pytest_fuselab.hosts import bundle as bundles
from pytest_fuselab.hosts.config import HostsFile
from pytest_fuselab.hosts.ssh import Reach


@dataclass(frozen=True)
class Outcome:
    """What setting up one host did."""

    host: str
    ok: bool
    done: tuple[str, ...] = ()
    problem: str = ""


def connect(hosts: HostsFile, reach: Reach) -> object:
    """A fabric Connection to the host, configured by hosts.toml's ssh_config (if any)."""
    from fabric import Config, Connection

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # it logs a traceback for every refused banner
    config = Config(runtime_ssh_path=str(hosts.ssh_config)) if hosts.ssh_config else Config()
    return Connection(reach.host.ssh, config=config, connect_timeout=15)


def _sh(conn: object, line: str) -> str:
    result = conn.run(line, hide=True, warn=True, in_stream=False)  # type: ignore[attr-defined]
    if result.exited != 0:
        raise HostError(f"`{line}` failed there with status {result.exited}: {result.stderr.strip()[-400:]}")
    return str(result.stdout)


def install(conn: object, reach: Reach, bundle: bundles.Bundle, progress: Progress) -> list[str]:
    """Send the wheels the host lacks, create its environment, install the project offline; what was done."""
    host, done = reach.host, []
    wheels, q = f"{host.workdir}/wheels", shlex.quote
    _sh(conn, f"mkdir -p {q(wheels)} {q(host.workdir)}/tmp {q(host.workdir)}/run {q(host.cache_dir)}/images")
    present = set(_sh(conn, f"ls {q(wheels)}").split())
    missing = [w for w in bundle.wheels() if w.name not in present]
    for wheel in missing:
        conn.put(str(wheel), f"{wheels}/{wheel.name}")  # type: ignore[attr-defined]
    if missing:
        done.append(f"sent {len(missing)} wheels")
    if not reach.ready:
        progress(f"{host.name}: creating {host.workdir}/venv with {host.python}")
        _sh(conn, f"{q(host.python)} -m venv {q(host.workdir)}/venv")
        done.append("created venv")
    if reach.bundle != bundle.key or not reach.ready:
        pip = f"{q(host.venv_python)} -m pip install -q --no-index --find-links {q(wheels)}"
        project = f"{q(wheels)}/{bundle.project_wheel.name}"
        _sh(conn, f"{pip} {project} && {pip} --no-deps --force-reinstall {project}")
        _sh(conn, f"echo {bundle.key} > {q(host.workdir)}/bundle.key")
        done.append(f"installed pytest-fuselab {bundle.key[:12]}")
    return done


def ship_image(conn: object, reach: Reach, image: images.Image, progress: Progress) -> list[str]:
    """Copy the built image into the host's cache under its content-keyed name, unless it has it."""
    host, q = reach.host, shlex.quote
    final = f"{host.cache_dir}/images/{image.directory.name}"
    if _sh(conn, f"test -f {q(final)}/manifest.json && echo have || true").strip() == "have":
        return []
    incoming = f"{host.cache_dir}/incoming/{image.directory.name}"
    _sh(conn, f"rm -rf {q(incoming)} && mkdir -p {q(incoming)}")
    files = [p for p in sorted(image.directory.iterdir()) if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    progress(f"{host.name}: sending image {image.directory.name} ({size / 2**20:.0f} MiB)")
    for path in files:
        conn.put(str(path), f"{incoming}/{path.name}")  # type: ignore[attr-defined]
    _sh(conn, f"chmod 0444 {q(incoming)}/base.qcow2 && mv {q(incoming)} {q(final)}")
    archive = cache_dir() / f"archive-{image.manifest().get('suite', 'sid')}.json"
    if archive.is_file():  # the archive versions the image is keyed by: the host need not ask the mirror
        conn.put(str(archive), f"{host.cache_dir}/{archive.name}")  # type: ignore[attr-defined]
    return [f"sent image {image.directory.name}"]


def controller_image(recipe_name: str, progress: Progress) -> images.Image:
    """The image the controller itself would boot now (built here first if needed): hosts get exactly this one."""
    return images.ensure(recipes.load(recipe_name), progress)


def setup_host(hosts: HostsFile, reach: Reach, bundle: bundles.Bundle, image: images.Image | None,
               progress: Progress) -> Outcome:
    """Set up one reachable host; errors become the outcome's problem."""
    name = reach.host.name
    if reach.problem:
        return Outcome(name, False, problem=f"unreachable: {reach.problem}")
    conn = connect(hosts, reach)
    try:
        done = install(conn, reach, bundle, progress)
        if image is not None:
            done += ship_image(conn, reach, image, progress)
        return Outcome(name, True, tuple(done) or ("already set up",))
    except (HostError, OSError) as exc:
        return Outcome(name, False, problem=str(exc))
    except Exception as exc:  # paramiko and invoke raise their own trees
        return Outcome(name, False, problem=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()  # type: ignore[attr-defined]


def python_mismatch(reach: Reach) -> str | None:
    """Why the host's Python cannot install the controller's wheels, if it cannot."""
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    if reach.python and reach.python != mine:
        return (f"{reach.host.python} there is Python {reach.python}, the controller's is {mine}: "
                "set python = \"python" + mine + "\" for this host in hosts.toml")
    if not reach.python:
        return f"{reach.host.python} not found there: set python = \"/path/to/python{mine}\" in hosts.toml"
    return None

