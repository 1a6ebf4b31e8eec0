"""Where input events come from: a host evdev device, or a virtual device fed over a socket.

Both implement :class:`EventSource`: a :class:`~.config.Description`, ``start(loop, sink)``
which registers the source's fds on the back-end's loop and calls ``sink(events)`` with
lists of ``(type, code, value)`` as they arrive (never blocking), ``write_status(events)``
for what the guest sends back (LEDs, sounds), and ``close()``.

Control socket protocol (``--control-socket=PATH``, virtual devices only)
-------------------------------------------------------------------------
A UNIX stream socket; any number of clients. Each side sends JSON objects, one per line
(UTF-8, ``\\n``-terminated, at most 4 MiB per line). Client to back-end:

``{"events": [[type, code, value], ...], "syn": true, "id": 7}``
    Inject events. ``type`` and ``code`` are numbers or names (``"EV_KEY"``, ``"KEY_A"``,
    ``"SYN_REPORT"``); ``value`` is a signed 32-bit integer. The device must have the code
    (see ``describe``); EV_SYN codes SYN_REPORT, SYN_CONFIG and SYN_MT_REPORT are always
    allowed. ``"syn": true`` appends an EV_SYN/SYN_REPORT. A line is taken whole or not at
    all. The guest sees events once a SYN_REPORT ends their batch.
``{"query": "state", "id": 8}``
    Counters: ``{"id": 8, "state": {"pending": .., "delivered": .., "dropped": ..,
    "overflows": .., "leds": {"LED_CAPSL": 1, ..}}}``.
``{"query": "describe", "id": 9}``
    The device description: name, serial, ids, properties, events, absinfo (numbers).

``id`` is optional and may be any JSON value: a line with an ``id`` is answered with
``{"id": .., "ok": true}`` (or its query result) once handled. A bad line is always
answered with ``{"error": "what is wrong", "line": N}`` (plus its ``id`` if it had one)
and changes nothing; the connection stays usable. Back-end to clients, unsolicited, to
every client: each event the guest writes to the status queue, as
``{"status": [type, code, value], "names": ["EV_LED", "LED_CAPSL"]}``.
A client that stops reading while more than 1 MiB of output waits for it is disconnected.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from ...core import logger
from ...core.errors import StartupError
from ...core.sockets import Socket, accept
from ...program.unix import listen
from . import config as C

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from ...core.loop import Loop

log = logger.get("vhostsuite.input")

Event = tuple[int, int, int]
Sink = Callable[[list[Event]], None]

#: Longest control-socket line accepted.
MAX_LINE = 4 << 20
#: Control clients served at once; one more is told so and closed.
MAX_CLIENTS = 16
#: After accept() fails for want of fds, the listener rests this long instead of spinning.
ACCEPT_BACKOFF = 1.0
#: Output a client may leave unread before it is dropped.
MAX_OUTPUT = 1 << 20
#: Most events read from an evdev device per wake-up, so that the guest's kicks get a turn.
EVDEV_READ_BATCH = 4096
_INT32 = range(-(2**31), 2**31)


class SourceGone(StartupError):
    """The host input device went away: the program ends with status 1 and this message."""


if TYPE_CHECKING:  # the contract, for type checkers; EvdevSource and VirtualSource provide it

    class EventSource(Protocol):
        description: C.Description

        def start(self, loop: Loop, sink: Sink) -> None:
            """Register the source's fds on *loop*; events go to *sink* as they arrive."""

        def write_status(self, events: list[Event]) -> None:
            """Events the guest wrote to the status queue (EV_LED, EV_SND, EV_SYN ...)."""

        def close(self) -> None: ...


# -- evdev ---------------------------------------------------------------------------------


class EvdevSource:
    """A host input device through python-evdev, grabbed unless ``grab=False``.

    *device* may be given instead of *path* (any object with python-evdev's ``InputDevice`` API).
    """

    def __init__(self, path: str, grab: bool = True, device: Any = None) -> None:
        self.path = path
        if device is None:
            device = _open_evdev(path)
        self.dev = device
        try:
            self.description = C.from_evdev(device)
        except C.DescriptionError as e:
            self._close_dev()
            raise StartupError(f"--evdev-path={path}: {e}") from None
        self.grabbed = False
        if grab:
            try:
                device.grab()
                self.grabbed = True
            except OSError as e:
                self._close_dev()
                hint = " (another program grabbed it; --no-grab shares it)" if e.errno == errno.EBUSY else ""
                raise StartupError(f"--evdev-path={path}: can't grab the device: {e.strerror}{hint}") from None
        self.loop: Loop | None = None
        self._sink: Sink | None = None
        self._warned_write = False

    def fileno(self) -> int:
        return self.dev.fd

    def start(self, loop: Loop, sink: Sink) -> None:
        self.loop = loop
        self._sink = sink
        loop.add_reader(self.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        events: list[Event] = []
        gone: OSError | None = None
        try:
            while len(events) < EVDEV_READ_BATCH:
                for ev in self.dev.read():
                    events.append((ev.type, ev.code, ev.value))
        except BlockingIOError:
            pass
        except OSError as e:
            gone = e
        if events and self._sink is not None:
            self._sink(events)
        if gone is not None:
            self._gone(gone)

    def _gone(self, e: OSError) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.fileno())
        what = "was removed" if e.errno == errno.ENODEV else f"failed: {e.strerror or e}"
        raise SourceGone(f"input device {self.path} {what}; exiting")

    #: What the guest may change on the host device (EV_REP would change the host's repeat
    #: rate and EV_FF would play effects the guest can't have uploaded).
    WRITABLE = frozenset({C.EV_LED, C.EV_SND})

    def write_status(self, events: list[Event]) -> None:
        wrote = False
        for t, c, v in events:
            if t == C.EV_SYN:
                if not wrote:
                    continue
                wrote = False
            elif t not in self.WRITABLE:
                continue
            else:
                wrote = True
            try:
                self.dev.write(t, c, v)
            except OSError as e:
                if e.errno == errno.ENODEV and self.loop is not None:
                    # We are inside a queue handler (which turns exceptions into a broken device):
                    # end the program from the loop instead.
                    def gone(e: OSError = e) -> None:
                        self._gone(e)

                    self.loop.call_later(0, gone)
                    return
                if not self._warned_write:
                    log.warning("can't write status events to %s: %s", self.path, e)
                    self._warned_write = True
                return
            except Exception as e:  # e.g. python-evdev's EvdevError for a read-only fd
                if not self._warned_write:
                    log.warning("can't write status events to %s: %s", self.path, e)
                    self._warned_write = True
                return

    def _close_dev(self) -> None:
        try:
            self.dev.close()
        except Exception:
            pass

    def close(self) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.fileno())
            self.loop = None
        if self.grabbed:
            try:
                self.dev.ungrab()
            except OSError:
                pass
            self.grabbed = False
        self._close_dev()


def _open_evdev(path: str) -> Any:
    try:
        import evdev
    except ImportError:
        raise StartupError("--evdev-path needs python-evdev (pip install evdev)") from None
    try:
        st = os.stat(path)
    except OSError as e:
        raise StartupError(f"--evdev-path={path}: {e.strerror}") from None
    if not stat.S_ISCHR(st.st_mode):
        raise StartupError(f"--evdev-path={path}: not a character device (want /dev/input/eventN)")
    try:
        return evdev.InputDevice(path)
    except OSError as e:
        if e.errno == errno.ENOTTY:
            raise StartupError(f"--evdev-path={path}: not an evdev device (want /dev/input/eventN)") from None
        raise StartupError(f"--evdev-path={path}: {e.strerror or e}") from None


# -- virtual devices ---------------------------------------------------------------------------


#: The control socket's JSON, imported with the socket: ~10 ms of Debian 13's Python (json
#: brings re and enum) that a device without one does not pay, and at start, where a client's
#: arrival may find no fd left to import it with.
json: Any = None


def _import_json() -> None:
    global json  # noqa: PLW0603 - the one module-wide binding, made once
    import json


class VirtualSource:
    """A virtual device whose events come from clients of a control socket (see module doc)."""

    def __init__(self, description: C.Description, control_path: str | None) -> None:
        self.description = description
        self.control_path = control_path
        self.listener = None
        if control_path is not None:
            _import_json()
            self.listener = _listen(control_path)
        self.clients: dict[int, _Client] = {}
        self.loop: Loop | None = None
        self._sink: Sink | None = None
        #: Returns the device's counters for ``{"query": "state"}``.
        self.state: Callable[[], dict[str, Any]] = dict
        self.leds: dict[int, int] = {}
        self._flush_timer: int | None = None

    def start(self, loop: Loop, sink: Sink) -> None:
        self.loop = loop
        self._sink = sink
        if self.listener is not None:
            loop.add_reader(self.listener.fileno(), self._on_accept)

    # -- connections
    def _on_accept(self) -> None:
        try:
            sock = accept(self.listener)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # EMFILE/ENFILE/ENOMEM: the connection stays queued; rest instead of spinning on it.
            log.warning("control socket: accept failed (%s); retrying in %.0f s", e.strerror or e, ACCEPT_BACKOFF)
            self.loop.remove_reader(self.listener.fileno())
            self.loop.call_later(ACCEPT_BACKOFF, self._resume_accept)
            return
        if len(self.clients) >= MAX_CLIENTS:
            try:
                sock.send(json.dumps({"error": f"too many control clients (at most {MAX_CLIENTS})"}).encode() + b"\n")
            except OSError:
                pass
            sock.close()
            log.warning("control socket: a client over the limit of %d was turned away", MAX_CLIENTS)
            return
        sock.setblocking(False)
        client = _Client(sock)
        self.clients[sock.fileno()] = client
        self.loop.add_reader(sock.fileno(), lambda: self._on_client(client))
        log.info("control client connected")

    def _resume_accept(self) -> None:
        if self.listener is not None and self.loop is not None:
            self.loop.add_reader(self.listener.fileno(), self._on_accept)

    def _drop(self, client: _Client, why: str = "") -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self.loop.remove_reader(fd)
            self.clients.pop(fd, None)
        client.sock.close()
        if why:
            log.warning("control client dropped: %s", why)

    def _on_client(self, client: _Client) -> None:
        try:
            data = client.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(client, str(e))
            return
        if not data:
            self._drop(client)
            return
        client.inbuf += data
        start = 0
        while True:
            nl = client.inbuf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(client.inbuf[start:nl])
            start = nl + 1
            client.lineno += 1
            if line.strip():
                self._handle_line(client, line)
        del client.inbuf[:start]
        if len(client.inbuf) > MAX_LINE:
            self._send(client, {"error": f"line longer than {MAX_LINE} bytes", "line": client.lineno + 1})
            self._flush(client)
            self._drop(client, "line too long")
            return
        self._flush(client)

    # -- requests
    def _handle_line(self, client: _Client, line: bytes) -> None:
        rid: Any = None
        try:
            try:
                msg = json.loads(line)
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"not valid JSON: {e}") from None
            except RecursionError:
                raise ValueError("JSON nested too deeply") from None
            if not isinstance(msg, dict):
                raise ValueError("a line must be a JSON object")
            rid = msg.get("id")
            reply = self._request(msg)
        except (ValueError, TypeError) as e:
            err: dict[str, Any] = {"error": str(e), "line": client.lineno}
            if rid is not None:
                err["id"] = rid
            self._send(client, err)
            return
        if rid is not None:
            self._send(client, {"id": rid, **reply})

    def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        known = {"events", "syn", "query", "id"}
        if set(msg) - known:
            raise ValueError(f"unknown keys {sorted(set(msg) - known)} (have events, syn, query, id)")
        if "query" in msg:
            if "events" in msg:
                raise ValueError("a line is either events or a query")
            q = msg["query"]
            if q == "state":
                state = dict(self.state())
                state["leds"] = {C.code_name(C.EV_LED, k): v for k, v in sorted(self.leds.items())}
                return {"state": state}
            if q == "describe":
                return {"description": describe(self.description)}
            raise ValueError(f"unknown query {q!r} (have state, describe)")
        if "events" not in msg:
            raise ValueError('a line needs "events" or "query"')
        events = self.parse_events(msg["events"])
        syn = msg.get("syn", False)
        if not isinstance(syn, bool):
            raise ValueError('"syn" must be true or false')
        if syn:
            events.append((C.EV_SYN, C.SYN_REPORT, 0))
        if events and self._sink is not None:
            self._sink(events)
        return {"ok": True}

    def parse_events(self, raw: Any) -> list[Event]:
        """``[[type, code, value], ...]`` with numbers or names, checked against the device."""
        if not isinstance(raw, list):
            raise ValueError('"events" must be a list of [type, code, value]')
        desc = self.description
        out: list[Event] = []
        for i, ev in enumerate(raw):
            if not isinstance(ev, list) or len(ev) != 3:
                raise ValueError(f"event {i}: {ev!r} is not [type, code, value]")
            t, c, v = ev
            try:
                t = t if type(t) is int else C.type_number(t)
                c = c if type(c) is int else C.code_number(t, c)
            except C.DescriptionError as e:
                raise ValueError(f"event {i}: {e}") from None
            if type(v) is not int or v not in _INT32:
                raise ValueError(f"event {i}: value {v!r} is not a 32-bit integer")
            if not desc.has(t, c):
                raise ValueError(f"event {i}: the device has no ({_ev_name(t, c)})")
            out.append((t, c, v))
        return out

    # -- output
    def _send(self, client: _Client, obj: dict[str, Any]) -> None:
        client.outbuf += json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    def _flush(self, client: _Client) -> None:
        if not client.outbuf:
            return
        try:
            n = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._drop(client, str(e))
            return
        del client.outbuf[:n]
        if len(client.outbuf) > MAX_OUTPUT:
            self._drop(client, f"more than {MAX_OUTPUT} bytes of unread output")
        elif client.outbuf:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        # The loop has readers only: retry a blocked client soon.
        if self._flush_timer is None and self.loop is not None:

            def again() -> None:
                self._flush_timer = None
                for c in list(self.clients.values()):
                    self._flush(c)

            self._flush_timer = self.loop.call_later(0.01, again)

    def write_status(self, events: list[Event]) -> None:
        for t, c, v in events:
            if t == C.EV_LED:
                self.leds[c] = v
            line = {"status": [t, c, v], "names": [C.type_name(t), C.code_name(t, c)]}
            for client in list(self.clients.values()):
                self._send(client, line)
        for client in list(self.clients.values()):
            self._flush(client)

    def close(self) -> None:
        for client in list(self.clients.values()):
            if self.loop is not None:
                self._drop(client)
            else:
                client.sock.close()
        self.clients.clear()
        if self.listener is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.control_path)
            except OSError:
                pass


class _Client:
    __slots__ = ("sock", "inbuf", "outbuf", "lineno")

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.lineno = 0


def _ev_name(t: int, c: int) -> str:
    try:
        return f"{C.type_name(t)}, {C.code_name(t, c)}"
    except Exception:
        return f"{t}, {c}"


def describe(desc: C.Description) -> dict[str, Any]:
    """The description as JSON-able data (numbers; the format :func:`config.from_mapping` reads)."""
    events: dict[str, Any] = {}
    for t, codes in sorted(desc.events.items()):
        if t == C.EV_ABS:
            events[str(t)] = {
                str(a): {"min": i.min, "max": i.max, "fuzz": i.fuzz, "flat": i.flat, "resolution": i.resolution}
                for a, i in sorted(desc.absinfo.items())
            }
        else:
            events[str(t)] = sorted(codes)
    return {
        "name": desc.name,
        "serial": desc.serial,
        "ids": list(desc.ids),
        "properties": sorted(desc.props),
        "events": events,
    }


def _listen(path: str) -> Socket:
    """A non-blocking listening socket on *path* (a stale socket file is replaced)."""
    # Clients may connect before the front-end (the loop serves them from then on): as many
    # as may be served wait in the backlog.
    sock = listen(path, "--control-socket", backlog=MAX_CLIENTS)
    sock.setblocking(False)
    return sock
