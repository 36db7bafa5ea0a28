"""One running kernel: its state, its clients and the routing of its messages.

Kernel to client: iopub goes to every attached client (or into the replay
buffer while none is attached); shell, control and stdin replies go to the
session whose request they answer, found by the parent ``msg_id``.
Client to kernel: the decoded parts are signed and sent as they are.
Lifecycle (launch, restart, shutdown) is the registry's job, not this one.
"""
from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ..metrics import TRAFFIC
from ..errors import BadRequest, KernelExitedAtStart, KernelLaunchError
from ..interfaces import IAttachedKernel
from .messages import KernelMessage, isoformat, loads, local_message, make_message_parts, status_parts, utcnow
from .flow import IopubFlow
from .replay import ReplayBuffer

log = Logger()

MAX_PENDING = 10_000
#: Sessions dropped for reading too slowly whose output is kept for them at once.
MAX_SLOW_REPLAYS = 8
NUDGE_INTERVAL = 0.5
CLIENT_CHANNELS = frozenset({"shell", "control", "stdin"})
#: Seconds a kernel must stay up after its last death before its automatic
#: restarts stop counting as "in a row" (jupyter_client's ``stable_start_time``).
STABLE_AFTER = 10.0


@implementer(IAttachedKernel)
class ManagedKernel:
    """State and message routing for one kernel.

    :param launched: the :class:`jkg.kernels.launcher.LaunchedKernel`.
    :param connect: ``connect(connection_info, on_messages, label)`` makes the
        kernel's :class:`jkg.kernels.channels.KernelChannels`; ``label`` is
        the kernel's id, which names it in the channels' logs.
    """

    def __init__(self, kernel_id: str, name: str, launched, connect: Callable, clock,
                 replay_limit: int):
        self.id = kernel_id
        self.name = name
        self.owner: str | None = None  # the tenant that started it
        self.language = ""  # from the kernelspec; a pooled Python kernel can take env after start
        self.env: dict[str, str] = {}  # what it was started with, for a restart after reattaching
        self.launched = launched
        self.execution_state = "starting"
        self.created = self.last_activity = utcnow()
        self.clients: dict[str, object] = {}
        self.restart_count = 0  # automatic restarts in a row (see died/seen_alive)
        self._last_death: float | None = None
        self.heartbeat_misses = 0
        self.dead_by_heartbeat = False
        self.busy_with: str | None = None  # "restarting" / "shutting down" while one runs
        self.reason = ""  # why it is dead, when known (jupyter_server's kernel model field)
        self._connect = connect
        self._clock = clock
        self._replay_limit = replay_limit
        self._replay: ReplayBuffer | None = None  # the last client's, while nobody is attached
        self._slow_replays: dict[str, ReplayBuffer] = {}  # sessions dropped for reading too slowly
        self._flow = IopubFlow(self, clock)
        self._pending: dict[str, str] = {}  # request msg_id -> session_id
        self._internal: dict[str, Callable[[KernelMessage], None]] = {}
        self._quiet: set[str] = set()  # the gateway's own requests: their iopub stays private
        self._iopub_seen = False
        self._readiness_check: Callable[[], None] | None = None
        self.channels = connect(launched.connection_info, self._on_messages, kernel_id)

    # -- life and death: the registry reports, the kernel keeps its own state ----
    def became_ready(self) -> None:
        """It answered ``kernel_info`` after a launch or adoption: idle unless its status says otherwise."""
        if self.execution_state in ("starting", "busy"):
            self.execution_state = "idle"

    def unresponsive(self) -> None:
        """A reattached kernel that did not answer yet: listed as busy until its status says more."""
        self.execution_state = "busy"

    def restarting(self, automatic: bool) -> None:
        """A restart begins; its clients hear ``restarting`` only when the kernel died (jupyter_server's rule)."""
        self.busy_with = "restarting"
        if automatic:
            self.broadcast_status("restarting")

    def restarted(self) -> None:
        self.busy_with = None
        self.execution_state = "idle"

    def shutting_down(self, reason: str) -> None:
        """A shutdown begins: clients are closed (1000) and status updates no longer count."""
        self.busy_with = "shutting down"
        self.disconnect_all(1000, reason)

    def declare_dead(self, close: bool = True, reason: str = "") -> None:
        """Dead for good (restart limit, failed restart, a dead kernel jkg cannot restart): clients are told."""
        self.busy_with = None
        if close:
            self.channels.close()
        self.broadcast_status("dead", reason)

    def heard(self, answered: bool) -> None:
        """One heartbeat ping's outcome: three misses in a row mean dead (or hung); an answer revives it."""
        if answered:
            self.heartbeat_misses = 0
            if self.dead_by_heartbeat:
                self.dead_by_heartbeat = False
                log.info("kernel {id} answers its heartbeat again", id=self.id)
                self.broadcast_status("idle")
            return
        self.heartbeat_misses += 1
        if self.heartbeat_misses >= 3 and not self.dead_by_heartbeat and self.execution_state != "dead":
            log.warn("kernel {id} missed {n} heartbeats: dead or hung", id=self.id, n=self.heartbeat_misses)
            self.dead_by_heartbeat = True
            self.broadcast_status("dead")

    def died(self) -> int:
        """The process was found dead: count it; return the deaths in a row so far.

        Deaths count "in a row" until the kernel stays up :data:`STABLE_AFTER`
        seconds (:meth:`seen_alive`), as jupyter_client's restarter counts: a
        kernel that dies a second after every start reaches the restart limit.
        """
        self._last_death = self._clock.seconds()
        self.restart_count += 1
        return self.restart_count

    def seen_alive(self) -> None:
        """The process was found alive: once it stayed up long enough, earlier deaths are forgiven."""
        if self.restart_count and self._clock.seconds() - self._last_death >= STABLE_AFTER:
            self.restart_count = 0

    def model(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "last_activity": isoformat(self.last_activity),
            "execution_state": self.execution_state,
            "connections": len(self.clients),
            **({"reason": self.reason} if self.reason else {}),
        }

    # -- kernel -> clients -------------------------------------------------
    def _on_messages(self, messages: list) -> None:
        """What one read from one of the kernel's sockets brought: iopub goes to the clients as one batch."""
        self.last_activity = utcnow()
        fanout: list[KernelMessage] = []
        for message in messages:
            self._on_message(message, fanout)
        if fanout:
            self._broadcast_all(fanout)

    def _on_message(self, message: KernelMessage, fanout: list) -> None:
        TRAFFIC.received(message.channel, message.parts)
        if message.channel == "iopub":
            if not self._iopub_seen:
                self._iopub_seen = True
                if self._readiness_check is not None:
                    self._readiness_check()
            if message.msg_type == "status":
                self._track_status(message)
            if message.parent_id in self._quiet:
                return  # busy/idle around the gateway's own kernel_info probes
            fanout.append(message)
            return
        parent = message.parent_id
        internal = self._internal.pop(parent, None) if parent else None
        if internal is not None:
            internal(message)
            return
        if message.channel == "stdin":
            session = self._pending.get(parent)
        else:
            session = self._pending.pop(parent, None)
        if session is not None:
            self._deliver_to_session(session, message)

    def _track_status(self, message: KernelMessage) -> None:
        try:
            state = loads(message.parts[3]).get("execution_state")
        except (ValueError, AttributeError):
            return
        if not isinstance(state, str):
            return
        message.execution_state = state  # parsed once, for every client's rate limits
        if self.busy_with is None and self.execution_state != "dead":
            # (while the registry restarts the kernel, it owns the state)
            self.execution_state = state

    def _broadcast_all(self, messages: list) -> None:
        """Hand iopub ``messages`` to every client (the same list to each), or keep them for replay."""
        if self.clients:
            # a copy: a client that turns out too slow detaches during delivery
            for client in list(self.clients.values()):
                client.deliver_all(messages)
            self._flow.check()
        elif self._replay is not None:
            self._replay.extend(messages)
        for replay in self._slow_replays.values():
            replay.extend(messages)

    def _deliver_to_session(self, session_id: str, message: KernelMessage) -> None:
        client = self.clients.get(session_id)
        if client is not None:
            client.deliver(message)
            return
        replay = self._slow_replays.get(session_id)
        if replay is None and self._replay is not None and self._replay.session_id == session_id:
            replay = self._replay
        if replay is not None:
            replay.append(message)

    def broadcast_status(self, state: str, reason: str = "") -> None:
        """Tell every client of a state only the gateway knows (restarting, dead), and why if known."""
        self.execution_state = state
        self.reason = reason if state == "dead" else ""
        self._broadcast_all([local_message("iopub", status_parts(state, self.id, reason))])

    # -- clients -> kernel -------------------------------------------------
    def send(self, client, incoming) -> None:
        if incoming.channel not in CLIENT_CHANNELS:
            raise BadRequest(f"clients cannot send on the {incoming.channel} channel")
        msg_type = incoming.header.get("msg_type", "")
        if msg_type.endswith("_request") and incoming.channel != "stdin":
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            self._pending[incoming.header["msg_id"]] = client.session_id
        self.last_activity = utcnow()
        TRAFFIC.sent(incoming.channel, incoming.parts)
        self.channels.send(incoming.channel, incoming.parts)

    # -- attaching clients ---------------------------------------------------
    def attach(self, client) -> None:
        """Attach a client; a stale connection with the same session is replaced.

        The output kept for its session (if any) is delivered first.  Output
        kept for the last client to leave is discarded when another session
        arrives first (as jupyter_server does); output kept for a session
        dropped for reading too slowly waits for that session.
        """
        session_id = client.session_id
        stale = self.clients.pop(session_id, None)
        if stale is not None and stale is not client:
            stale.disconnect(1000, "replaced by a new connection with the same session_id")
        replay, self._replay = self._replay, None
        if replay is not None and replay.session_id != session_id:
            replay = None
        slow = self._slow_replays.pop(session_id, None)
        if slow is not None:
            replay = slow
        self.clients[session_id] = client
        if replay is not None:
            for message in replay.drain():
                client.deliver(message)

    def drained(self, client) -> None:
        """``client``'s socket took part of its backlog: iopub held back for it may flow again."""
        self._flow.drained()

    def detach(self, client) -> None:
        """Forget a client; keep its session's output if it was the last one or too slow.

        A client that was disconnected because it read too slowly says so with
        a non-zero ``dropped_as_slow`` (the outgoing buffer limit it went
        over); its session's output is then kept, even while other clients
        stay, up to the smaller of that limit and the replay limit -- so the
        gateway never holds more than that for one slow client.
        """
        if self.clients.get(client.session_id) is not client:
            return
        del self.clients[client.session_id]
        self._flow.forget(client.session_id)
        if self.busy_with == "shutting down":
            return
        slow = client.dropped_as_slow
        if slow:
            if len(self._slow_replays) >= MAX_SLOW_REPLAYS:
                self._slow_replays.pop(next(iter(self._slow_replays)))
            self._slow_replays[client.session_id] = ReplayBuffer(
                client.session_id, min(self._replay_limit, slow), dropped_slow=slow)
        elif not self.clients:
            self._replay = ReplayBuffer(client.session_id, self._replay_limit)

    def disconnect_all(self, code: int, reason: str) -> None:
        clients, self.clients = list(self.clients.values()), {}
        self._replay = None
        self._slow_replays.clear()
        self._flow.forget_all()
        for client in clients:
            client.disconnect(code, reason)

    # -- readiness -----------------------------------------------------------
    def reconnect(self) -> None:
        """New sockets after a restart (the provisioner may have moved the kernel)."""
        self.channels.close()
        self._pending.clear()
        self._internal.clear()
        self._iopub_seen = False
        self.channels = self._connect(self.launched.connection_info, self._on_messages, self.id)

    def wait_ready(self, timeout: float, channel: str = "shell") -> Deferred:
        """Fire once the kernel answers ``kernel_info`` and iopub is flowing.

        A SUB socket misses what was published before it connected, and the
        kernel may not have bound its ports yet: repeat ``kernel_info_request``
        every half second until a reply *and* an iopub message have arrived,
        as jupyter_server does.  Fails early if the process dies.
        """
        state = {"reply": None, "ticks": 0, "ids": []}
        session = f"jkg-nudge-{self.id}"

        def clean_up(_=None) -> None:
            self._readiness_check = None
            self.channels.on_connected = None
            for msg_id in state["ids"]:
                self._internal.pop(msg_id, None)
            call = state.get("call")
            if call is not None and call.active():
                call.cancel()

        def expired(result, after) -> None:
            raise KernelLaunchError(f"kernel {self.name} did not answer kernel_info within {after:g} s")

        ready: Deferred = Deferred(clean_up)

        def on_reply(message: KernelMessage) -> None:
            state["reply"] = message
            check()

        def check() -> None:
            if state["reply"] is not None and self._iopub_seen and self.channels.all_connected:
                finish(state["reply"])

        def finish(result) -> None:
            if ready.called:
                return
            clean_up()
            if isinstance(result, Exception):
                ready.errback(result)
            else:
                ready.callback(result)

        def check_alive(alive: bool) -> None:
            if not alive and not ready.called:
                finish(KernelExitedAtStart(f"kernel {self.name} exited during startup"))

        def tick() -> None:
            check()
            if ready.called:
                return
            parts = make_message_parts("kernel_info_request", {}, session)
            msg_id = loads(parts[0])["msg_id"]
            state["ids"].append(msg_id)
            self._internal[msg_id] = on_reply
            if len(self._quiet) > 1000:
                self._quiet.clear()
            self._quiet.add(msg_id)
            self.channels.send(channel, parts)
            state["ticks"] += 1
            if state["ticks"] % 2 == 0:
                self.launched.is_alive().addCallbacks(check_alive, lambda failure: None)
            state["call"] = self._clock.callLater(NUDGE_INTERVAL, tick)

        self._readiness_check = check
        self.channels.on_connected = check
        ready.addTimeout(timeout, self._clock, onTimeoutCancel=expired)
        tick()
        return ready

    # -- the gateway's own requests --------------------------------------------
    def request(self, msg_type: str, content: dict, timeout: float, channel: str = "shell") -> Deferred:
        """Send a request of the gateway's own; fire with the reply's content (a dict).

        Its reply and its iopub traffic stay private: clients never see them.
        """
        parts = make_message_parts(msg_type, content, f"jkg-{self.id}")
        msg_id = loads(parts[0])["msg_id"]
        answered: Deferred = Deferred(lambda d: self._internal.pop(msg_id, None))

        def on_reply(message: KernelMessage) -> None:
            answered.callback(loads(message.parts[3]))

        def expired(result, after) -> None:
            raise KernelLaunchError(f"kernel {self.name} did not answer {msg_type} within {after:g} s")

        self._internal[msg_id] = on_reply
        self._quiet.add(msg_id)
        answered.addTimeout(timeout, self._clock, onTimeoutCancel=expired)
        self.channels.send(channel, parts)
        return answered

    def execute_quietly(self, code: str, timeout: float) -> Deferred:
        """Run code without history or output to clients; fire with the execute_reply content."""
        return self.request("execute_request", {
            "code": code, "silent": False, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True}, timeout)
