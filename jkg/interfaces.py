"""The contracts between the web layer and the kernel side.

The web layer (klein routes, autobahn protocols) talks to kernels only
through :class:`IKernelRegistry` and the :class:`IAttachedKernel` it hands a
WebSocket, and the kernel talks back to each WebSocket only through
:class:`IKernelClient`; so web tests need no kernel
(see :mod:`jkg.testing`) and kernel tests need no HTTP.
"""
from zope.interface import Attribute, Interface


class IKernelClient(Interface):
    """One WebSocket connection attached to a kernel."""

    session_id = Attribute("The client's session_id (from the URL); replies are routed by it.")
    dropped_as_slow = Attribute("0, or once the client was disconnected for reading too slowly the buffer "
                                "limit it went over: the kernel then keeps its session's output for replay.")

    def deliver(message):
        """Send a :class:`jkg.kernels.messages.KernelMessage` to the client.

        Every client of a message gets the very same object, one after the
        other before the next message, so a client may share work per message
        (the WebSocket frames: :class:`jkg.web.frames.FrameCache`).
        """

    def deliver_all(messages):
        """:meth:`deliver` several iopub messages, in order: what one read from the kernel brought.

        Every client gets the very same list, one client after the other, so a
        client may share work per message of it and write them all at once.
        """

    def disconnect(code, reason):
        """Close the connection (the kernel was deleted, or the gateway stops)."""

    def outgoing():
        """Flow control: ``(bytes waiting to be sent, bytes the client took so far)``.

        ``None`` when the client cannot tell; the kernel then never holds back
        iopub for its clients (see :mod:`jkg.kernels.kernel`).
        """


class IClientOutbox(Interface):
    """How frames reach one client's connection, within its backlog bound (:mod:`jkg.web.outbox`)."""

    backlog = Attribute("The client's :class:`~jkg.web.outbox.Backlog`: its limit and the bytes appended so far.")

    def send(frame):
        """Write a :class:`~jkg.web.frames.Frame`, or return why not (the client is too slow)."""

    def send_all(frames):
        """Write several frames in order, all or none; why not, or None."""

    def write_data(data):
        """Write autobahn's own bytes (control frames) in order with the frames; then why the client
        is too slow, or None."""

    def waiting():
        """Bytes not yet known to be taken by the client's socket."""

    def trim():
        """Drop what waits that is not under way (the client is being dropped as too slow)."""

    def close_when_sent():
        """The connection is being dropped: let it close once what waits is sent; whether bytes wait."""


class IKernelChannels(Interface):
    """One kernel's connections, as the kernel object uses them (see :mod:`jkg.kernels.channels`)."""

    all_connected = Attribute("Whether every connection completed its handshake with the kernel.")
    on_connected = Attribute("Called (no arguments) once all connections are up; None for nobody.")
    closed = Attribute("Whether :meth:`close` was called.")

    def send(channel, parts):
        """Sign ``[header, parent, metadata, content, *buffers]`` and send it on ``channel``."""

    def ping(timeout):
        """Deferred firing True when the heartbeat echoes within ``timeout`` seconds, else False."""

    def pause_iopub():
        """Leave iopub in the kernel's sockets (flow control) until :meth:`resume_iopub`."""

    def resume_iopub():
        """Read iopub again."""

    def close():
        """Close every connection; later sends are ignored."""


class ILaunchedKernel(Interface):
    """A kernel process (or remote kernel) as its launcher or discoverer reports it."""

    connection_info = Attribute("Transport, ip, ports, key and signature scheme; never leaves the server.")
    pid = Attribute("The local process id, or None when unknown (remote, bridged).")
    can_restart = Attribute("Whether jkg may restart it (not a bridged kernel it cannot relaunch).")
    owned = Attribute("Whether shutting it down stops it (False: a bridged kernel jkg only lets go of).")
    stderr_inode = Attribute("Inode of the pipe jkg reads the process's stderr from, or None; recorded for "
                             "the next gateway.")

    def is_alive():
        """Deferred firing with whether the kernel still runs."""

    def interrupt():
        """Deferred firing once the interrupt was sent."""

    def restart(now=False):
        """Deferred firing once the kernel runs again on the same connection info."""

    def shutdown(now=False):
        """Deferred firing once the kernel is gone (or let go, for a kernel jkg does not own)."""

    def death_reason():
        """Why the kernel died when that is known and final (a sandbox limit), else "": then no restart."""

    def stderr_tail():
        """The last lines the kernel wrote to stderr ("" when not known), for launch errors."""

    def record_info():
        """Deferred firing with ``(pid, provisioner_info)``: what a later gateway needs to reattach."""


class IKernel(Interface):
    """What the web layer may read about a kernel."""

    id = Attribute("Kernel id (a UUID string).")
    name = Attribute("Kernelspec name.")
    execution_state = Attribute("starting, idle, busy, restarting, dead ...")

    def model():
        """The Jupyter kernel model: id, name, last_activity, execution_state, connections."""


class IAttachedKernel(IKernel):
    """A kernel as the WebSocket a client attached to it holds it (what ``attach`` returns)."""

    def send(client, message):
        """Forward a decoded client message (:class:`jkg.wire.IncomingMessage`).

        Raises :class:`jkg.errors.BadRequest` for a channel clients may not send on.
        """

    def drained(client):
        """The client's socket took part of its backlog (iopub flow control reviews its pause)."""

    def detach(client):
        """Forget the client; later output for its session is kept for replay."""


class IKernelRegistry(Interface):
    """Running kernels, their lifecycle and their message routing."""

    started = Attribute("When the gateway started (datetime, UTC).")

    def list_kernels(tenant=None):
        """The kernels ``tenant`` may use (all when ``tenant`` is None), as :class:`IKernel`."""

    def get(kernel_id, tenant=None):
        """The kernel, or raise :class:`jkg.errors.UnknownKernel` -- also for another tenant's kernel."""

    def start(kernel_name, env, tenant=None):
        """Deferred firing with the started :class:`IKernel` once it answers kernel_info.

        Raises (synchronously) :class:`jkg.errors.ResourceLimit` beyond a quota and
        :class:`jkg.errors.UnknownKernelSpec` outside the tenant's allow-list.
        """

    def shutdown(kernel_id, tenant=None):
        """Deferred firing when the kernel is gone; its WebSockets are closed."""

    def interrupt(kernel_id, tenant=None):
        """Deferred firing once the interrupt was sent."""

    def restart(kernel_id, tenant=None):
        """Deferred firing with the kernel (same id) once it answers again."""

    def attach(kernel_id, client):
        """Connect an :class:`IKernelClient`; replays output kept for its session.

        Returns the :class:`IAttachedKernel` the client then sends through and
        detaches from (it stays the same object across restarts).
        """

    def last_activity():
        """The most recent activity on any kernel (datetime, UTC)."""

    def connection_count():
        """Open WebSocket connections across all kernels."""
