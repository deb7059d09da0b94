"""Fixtures for the mount-service scenarios (tools in pytest_fuselab/plugin/servicelab.py).

`service` gives each test a fresh guest; `shared_service` reuses one guest per module (the
protocol scenarios hold many short conversations) and resets fuse.conf and leftover mounts
before each test.  Both skip, naming what is missing, when the stack has no mount service.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_fuselab import capabilities
from pytest_fuselab.plugin.servicelab import LAYER_ENV, RUN, HostileServer, Service


def _skip_without_service(lab: Any) -> None:
    if not os.environ.get(LAYER_ENV):
        why = capabilities.of(lab).missing("fuservicemount3")
        if why:
            pytest.skip(f"needs the mount service (fuservicemount3): {why}")


def _prepare(guest: Any, lab: Any) -> Service:
    """Unpack the FUSELAB_SERVICE_LAYER tar (once per guest), install mountproto.py, probe."""
    layer = os.environ.get(LAYER_ENV)
    done = guest.run(f"test -e {RUN}/prepared", check=False).exit_status == 0
    if layer and not done:
        guest.put("/tmp/fuselab-service-layer.tar", Path(layer))
        result = guest.run("tar -C / --keep-directory-symlink -xf /tmp/fuselab-service-layer.tar && ldconfig "
                           "&& systemctl daemon-reload", timeout=180, check=False)
        assert result.exit_status == 0, f"unpacking {layer} in the guest failed: {result.stderr}"
    if not done:
        guest.run(f"mkdir -p {RUN} && touch {RUN}/prepared")
    return Service(guest, capabilities.of(guest) if layer else capabilities.of(lab))


@pytest.fixture
def service(fuselab_lab: Any, request: pytest.FixtureRequest) -> Service:
    """The service stack in a fresh guest (a layer from FUSELAB_SERVICE_LAYER unpacked first)."""
    _skip_without_service(fuselab_lab)
    return _prepare(request.getfixturevalue("fuselab_guest"), fuselab_lab)


@pytest.fixture
def shared_service(fuselab_lab: Any, request: pytest.FixtureRequest) -> Service:
    """The service stack in the module's shared guest, reset for this test."""
    _skip_without_service(fuselab_lab)
    svc = _prepare(request.getfixturevalue("fuselab_module_guest"), fuselab_lab)
    for mnt in svc.fuse_mounts():
        svc.sh(f"umount -l {mnt}")
    svc.conf()
    return svc


@pytest.fixture
def hostile_server(shared_service: Service) -> HostileServer:
    shared_service.require("fuservicemount3")
    return HostileServer(shared_service)
