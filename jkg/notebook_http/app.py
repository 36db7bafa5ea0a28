"""One served notebook: its endpoints, its kernel pool, and a request's journey through both.

A request borrows a kernel from the pool, sets ``REQUEST``, runs the
endpoint's code and, if there is one, its ResponseInfo code, and returns the
kernel.  The whole request has a deadline (``request_timeout``): past it the
client gets 504 at once, the kernel is interrupted, and if it is not idle
again within ``interrupt_grace`` it is shut down and the pool starts a
replacement -- a hung cell never wedges a kernel slot forever.
"""
from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..auth.realm import Tenant
from ..errors import Forbidden, GatewayError
from .annotations import Endpoint, NotebookAPI
from .bundle import assignment, combinable, headers_dict, parse_body, path_params, query_args, request_bundle
from .pool import KernelPool
from .response import Response, ResponseInfoError, apply_response_info, build_response, error_text
from .runner import KernelGone, start_runner

log = Logger()


class GatewayTimeout(GatewayError):
    status = 504
    reason = "Gateway Timeout"


class MethodNotAllowed(GatewayError):
    status = 405
    reason = "Method Not Allowed"


@dataclass(frozen=True)
class PoolSettings:
    """The pool and timeout options for every served notebook."""

    min_kernels: int = 1
    max_kernels: int = 4
    queue_limit: int = 100
    queue_timeout: float = 30.0
    request_timeout: float = 60.0
    interrupt_grace: float = 5.0
    launch_timeout: float = 60.0
    idle_ttl: float = 300.0


@dataclass
class HttpRequest:
    """What the web layer hands over, already read from the wire."""

    method: str
    query: bytes
    headers: list  # [(name, value)] as str, in arrival order
    body: bytes
    content_type: str | None
    tenant: Tenant | None = None  # who logged in (jkg.web.login); None when called without a login


class NotebookApp:
    """A notebook's endpoints served by its own pool of kernels.

    :param registry: the :class:`jkg.interfaces.IKernelRegistry` kernels come from.
    """

    def __init__(self, api: NotebookAPI, registry, clock, settings: PoolSettings, prefix: str = ""):
        self.api = api
        self.prefix = prefix
        self.registry = registry
        self.clock = clock
        self.settings = settings
        self.pool = KernelPool(self._spawn, self._retire, clock, min_size=settings.min_kernels,
                               max_size=settings.max_kernels, queue_limit=settings.queue_limit,
                               queue_timeout=settings.queue_timeout, idle_ttl=settings.idle_ttl,
                               name=f"notebook {api.title}")

    def _spawn(self) -> Deferred:
        return start_runner(self.registry, self.api.kernel_name, self.api.seed_cells,
                            self.settings.launch_timeout, self.clock, self.pool.lost)

    @inlineCallbacks
    def _retire(self, runner):
        runner.close()
        try:
            yield self.registry.shutdown(runner.kernel_id)
        except Exception:  # noqa: BLE001 - already gone (culled, deleted through the kernels API)
            pass

    # -- one request -------------------------------------------------------------
    @inlineCallbacks
    def handle(self, endpoint: Endpoint, raw_params: dict, request: HttpRequest):
        """Fire with the :class:`Response`; GatewayErrors become JSON errors in the web layer."""
        verb = request.method
        if verb not in endpoint.sources:
            raise MethodNotAllowed(f"{verb} is not defined for {endpoint.path}")
        bundle = request_bundle(parse_body(request.body, request.content_type), query_args(request.query),
                                path_params(raw_params), headers_dict(request.headers))
        tenant = request.tenant
        if tenant is not None and self.api.kernel_name and not tenant.may_start(self.api.kernel_name):
            raise Forbidden(f"this notebook runs on kernelspec {self.api.kernel_name}, which tenant "
                            f"{tenant.name} may not use")
        # only tenants from the tenants file have a kernel quota here; the pool counts kernels by tenant name
        limit = tenant.max_kernels if tenant is not None and tenant.named else None
        runner = yield self.pool.acquire(tenant.name if tenant is not None else None, limit)
        # the deadline covers running the cells; waiting for a kernel has its own limit (queue_timeout)
        deadline = self.clock.seconds() + self.settings.request_timeout if self.settings.request_timeout else None
        release = True
        try:
            statement = assignment(bundle, self.api.language)
            code = endpoint.sources[verb]
            if combinable(self.api.language):
                output = yield self._run(runner, statement + "\n" + code, deadline)
            else:
                yield self._run(runner, statement, deadline)
                output = yield self._run(runner, code, deadline)
            response = build_response(output)
            info_code = endpoint.responses.get(verb)
            if info_code and output.error is None:
                info = yield self._run(runner, info_code, deadline)
                if info.error is not None:
                    response = Response(500, {"Content-Type": "text/plain"}, error_text(info.error).encode("utf-8"))
                else:
                    try:
                        response = apply_response_info(response, info.text())
                    except ResponseInfoError as error:
                        response = Response(500, {"Content-Type": "text/plain"}, f"Error {error}\n".encode())
            return response
        except GatewayTimeout:
            release = False
            raise
        except KernelGone as error:
            raise GatewayError(f"the kernel serving {endpoint.path} was lost: {error}",
                               reason="Kernel Lost", status=502) from None
        finally:
            if release:
                self.pool.release(runner)

    def _run(self, runner, code: str, deadline: float | None) -> Deferred:
        """Execute with what is left of the deadline; on overrun answer 504 and deal with the kernel."""
        execution = runner.execute(code)
        if deadline is None:
            return execution
        outcome: Deferred = Deferred()

        def finished(result):
            if call.active():
                call.cancel()
            if not outcome.called:
                if isinstance(result, Failure):
                    outcome.errback(result)
                else:
                    outcome.callback(result)
            return None

        def overrun():
            outcome.errback(GatewayTimeout(f"the cell ran longer than {self.settings.request_timeout:g} s"))
            self._rescue(runner, execution)

        call = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), overrun)
        execution.addBoth(finished)
        return outcome

    def _rescue(self, runner, execution: Deferred) -> None:
        """Interrupt an overrunning kernel; give it back if it answers, else replace it."""
        log.warn("{app}: a request overran on kernel {id}; interrupting it", app=self.api.title,
                 id=runner.kernel_id)
        execution.addErrback(lambda failure: None)
        try:
            self.registry.interrupt(runner.kernel_id).addErrback(lambda failure: None)
        except Exception:  # noqa: BLE001 - gone or dead already: replaced below
            pass
        state = {"done": False}

        def answered(result):
            state["done"] = True
            if call.active():
                call.cancel()
            if runner.lost:
                self.pool.discard(runner)
            else:
                self.pool.release(runner)

        def hung():
            if state["done"]:
                return
            log.warn("{app}: kernel {id} did not answer its interrupt; replacing it", app=self.api.title,
                     id=runner.kernel_id)
            runner.abandon()
            self.pool.discard(runner, replace=True)

        call = self.clock.callLater(self.settings.interrupt_grace, hung)
        execution.addBoth(answered)

    def start(self) -> None:
        self.pool.start()

    def drain(self) -> Deferred:
        return self.pool.drain()
