"""Reattaching a kernel that runs on an engine (a container, a Swarm service, an SSH host).

A kernel kept by ``--keep-kernels-on-exit`` is normally found again by its
pid.  A kernel on an engine has no pid here; what identifies it is what its
provisioner reported at start (``get_provisioner_info``, kept in the state
database).  The next gateway rebuilds the provisioner from that record and
asks it whether the kernel still runs -- gateway_provisioners' own
persistence hook -- so shutting it down later removes the container as usual.
"""
from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from ..errors import KernelLaunchError
from .kernel import ManagedKernel

log = Logger()


@inlineCallbacks
def adopt_through_provisioner(launcher, record, connect, clock, replay_limit: int):
    """Fire with a ready :class:`ManagedKernel`, or None when the engine no longer runs it."""
    try:
        launched = yield launcher.restore(record.id, record.name, record.connection_info, record.provisioner_info)
        alive = yield launched.is_alive()
    except Exception as error:  # noqa: BLE001 - an engine that cannot answer: forget it, keep serving
        log.warn("cannot reattach kernel {id}: {error}", id=record.id, error=error)
        return None
    if not alive:
        log.info("forgetting kernel {id}: its engine no longer runs it", id=record.id)
        return None
    kernel = ManagedKernel(record.id, record.name, launched, connect, clock, replay_limit)
    kernel.owner, kernel.language, kernel.env = record.owner, record.language, record.env
    try:
        yield kernel.wait_ready(10, channel="control")
        kernel.execution_state = "idle"
    except KernelLaunchError:
        log.warn("reattached kernel {id} does not answer yet; listing it as busy", id=record.id)
        kernel.execution_state = "busy"
    log.info("reattached kernel {id} ({name}) through its provisioner", id=record.id, name=record.name)
    return kernel
