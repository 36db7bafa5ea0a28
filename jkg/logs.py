"""What the gateway writes to its log: a level, a format, and an optional access log.

twistd builds its log observer after ``makeService`` returns, from the
application's ``ILogObserver`` component when one is set (Twisted's documented
hook for customising twistd's logging).  :class:`LoggedService` sets that
component when twistd parents it to the application: the observer twistd would
build itself (stdout with ``-n``, ``--logfile``, ``--syslog``) or, with ``--log-format
json``, Twisted's ``jsonFileLogObserver`` on the same destination (one JSON
object per line, for journald and log shippers), behind a level filter
(``--log-level``, default ``info``: jkg's debug lines stay out).

:class:`AccessLog` writes one line per HTTP request, never a token: the query
string loses ``token=``, and no header is written except Referer and
User-Agent.
"""
from __future__ import annotations

import sys
import time
from urllib.parse import parse_qsl, urlencode

from twisted.application.service import MultiService, Service
from twisted.internet.task import LoopingCall
from twisted.logger import (FilteringLogObserver, ILogObserver, LegacyLogObserverWrapper, Logger, LogLevel,
                            LogLevelFilterPredicate, jsonFileLogObserver, textFileLogObserver)

LEVELS = ("debug", "info", "warn", "error", "critical")
_access = Logger(namespace="jkg.access")


def _twistd_destination(twistd_options, max_files: int = 0):
    """The file twistd would log to (stdout undaemonized without --logfile).

    A log file keeps at most ``max_files`` rotated files (``--log-max-files``;
    0 keeps all, twistd's own behaviour): a kernel flooding the log cannot
    fill the disk with rotated files.
    """
    from twisted.python import logfile

    name = twistd_options.get("logfile") or ""
    if name == "-" or (not name and twistd_options.get("nodaemon")):
        return sys.stdout
    return logfile.LogFile.fromFullPath(name or "twistd.log", maxRotatedFiles=max_files or None)


def _rotate_on_sigusr1(log_file) -> None:
    """What twistd does for its own log file: SIGUSR1 rotates it."""
    import signal

    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame):
            from twisted.internet import reactor  # the running one, looked up when the signal comes

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)


def _syslog_observer(prefix: str):
    """``--syslog``: every event to syslog(3) under ``--prefix``, as twistd sends them.

    Twisted's ``SyslogObserver`` is a legacy observer (it takes the old
    event dictionaries), hence the wrapper.
    """
    from twisted.python.syslog import SyslogObserver

    return LegacyLogObserverWrapper(SyslogObserver(prefix).emit)


def make_observer(level: str, log_format: str, twistd_options, max_files: int = 0):
    """The observer twistd would build (or a JSON one on its destination), showing ``level`` and above.

    Built here from Twisted's public observers, as twistd builds its own: syslog
    with ``--syslog``, else stdout (``-n`` without ``--logfile``, or
    ``--logfile=-``) or the log file, which SIGUSR1 rotates.
    """
    if log_format == "json":
        observer = jsonFileLogObserver(_twistd_destination(twistd_options, max_files))
    elif twistd_options.get("syslog"):
        observer = _syslog_observer(twistd_options.get("prefix", ""))
    else:
        destination = _twistd_destination(twistd_options, max_files)
        if destination is sys.stdout:
            if not twistd_options.get("nodaemon"):  # --logfile=- without -n: refused as twistd refuses it
                sys.exit("Daemons cannot log to stdout, exiting!")
        else:
            _rotate_on_sigusr1(destination)
        observer = textFileLogObserver(destination)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(observer, [predicate])


class LoggedService(MultiService):
    """The gateway's service under twistd: installs the log observer on its application.

    :param service: the :class:`jkg.service.GatewayService` (its ``gateway``
        is kept here too, for whoever holds this outer service).
    """

    def __init__(self, service, observer):
        super().__init__()
        self.gateway = service.gateway
        self._observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent):  # noqa: N802 - Twisted API
        super().setServiceParent(parent)
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            set_component(ILogObserver, self._observer)


def _clean_query(query: bytes) -> str:
    pairs = [(key, value) for key, value in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
             if key.lower() != "token"]
    return "?" + urlencode(pairs) if pairs else ""


def _quote(value: bytes | str | None) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"')[:512] + '"'


def access_line(request, now: float | None = None) -> str:
    """A combined-log-format line for ``request``, without credentials."""
    path, _, query = request.uri.partition(b"?")
    target = path.decode("utf-8", "replace") + _clean_query(query)
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "-"
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now if now is not None else time.time()))
    length = request.sentLength or "-"
    protocol = request.clientproto.decode("ascii", "replace")
    method = request.method.decode("ascii", "replace")
    return (f'{host} - - [{stamp}] {_quote(f"{method} {target} {protocol}")} {request.code} {length} '
            f'{_quote(request.getHeader(b"referer") or "-")} {_quote(request.getHeader(b"user-agent") or "-")}\n')


class AccessLog(Service):
    """Access lines appended to a file, flushed every second; ``-`` sends them to the gateway's log instead.

    The file is opened at startup (a bad path stops startup) and written
    buffered, so a request costs a string format and a memory copy.
    """

    def __init__(self, path: str, clock):
        self.path = path
        self._file = None if path == "-" else open(path, "a", encoding="utf-8", buffering=64 * 1024)  # noqa: SIM115
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock

    def write(self, request) -> None:
        line = access_line(request)
        if self._file is None:
            _access.info("{line}", line=line.rstrip("\n"))
        else:
            self._file.write(line)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def startService(self):  # noqa: N802 - Twisted API
        super().startService()
        self._flusher.start(1.0, now=False)

    def stopService(self):  # noqa: N802 - Twisted API
        if self._flusher.running:
            self._flusher.stop()
        if self._file is not None:
            self._file.close()
            self._file = None
        return super().stopService()
