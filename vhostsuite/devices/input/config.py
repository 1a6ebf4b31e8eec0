"""virtio-input device descriptions and the config space built from them.

A :class:`Description` is what the guest learns about an input device: name, serial,
ids, property bits, the codes of every event type, and the range of every absolute axis.
It comes from a python-evdev device (:func:`from_evdev`), a built-in virtual device, or a
JSON file (:func:`from_json`, format in :func:`from_mapping`). :class:`ConfigSpace`
answers the guest's config reads for it (``struct virtio_input_config``, 136 bytes).

This module imports ``evdev.ecodes`` only to turn code *names* into numbers.
"""

from __future__ import annotations

import os
import struct
import sys
from collections import namedtuple
from collections.abc import Iterable, Mapping

#: typing.TYPE_CHECKING without importing typing (every start pays for it otherwise).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# <linux/virtio_input.h>
VIRTIO_INPUT_CFG_UNSET = 0x00
VIRTIO_INPUT_CFG_ID_NAME = 0x01
VIRTIO_INPUT_CFG_ID_SERIAL = 0x02
VIRTIO_INPUT_CFG_ID_DEVIDS = 0x03
VIRTIO_INPUT_CFG_PROP_BITS = 0x10
VIRTIO_INPUT_CFG_EV_BITS = 0x11
VIRTIO_INPUT_CFG_ABS_INFO = 0x12

#: select, subsel, size, reserved[5], then the 128-byte union.
CONFIG_SIZE = 136
UNION_OFFSET = 8
UNION_SIZE = 128

# <linux/input-event-codes.h> (only what this package needs by number)
EV_SYN, EV_KEY, EV_REL, EV_ABS, EV_MSC, EV_SW = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
EV_LED, EV_SND, EV_REP, EV_FF, EV_PWR, EV_FF_STATUS = 0x11, 0x12, 0x14, 0x15, 0x16, 0x17
EV_MAX = 0x1F
SYN_REPORT, SYN_CONFIG, SYN_MT_REPORT, SYN_DROPPED = 0, 1, 2, 3
REP_DELAY, REP_PERIOD = 0, 1
BUS_VIRTUAL = 0x06
# ... and what the built-in devices list (by number: the names would load python-evdev's
# ecodes, and with it typing, at every start of a --virtual device)
KEY_ESC, KEY_MICMUTE = 1, 248
BTN_LEFT, BTN_RIGHT, BTN_MIDDLE, BTN_SIDE, BTN_EXTRA = 0x110, 0x111, 0x112, 0x113, 0x114
REL_X, REL_Y, REL_HWHEEL, REL_WHEEL = 0x00, 0x01, 0x06, 0x08
ABS_X, ABS_Y = 0x00, 0x01
MSC_SCAN = 0x04
LED_NUML, LED_CAPSL, LED_SCROLLL, LED_COMPOSE, LED_KANA = 0x00, 0x01, 0x02, 0x03, 0x04
INPUT_PROP_POINTER = 0x00

#: The highest code of each event type (``*_MAX``), for validation.
CODE_MAX = {
    EV_SYN: 0x0F,
    EV_KEY: 0x2FF,
    EV_REL: 0x0F,
    EV_ABS: 0x3F,
    EV_MSC: 0x07,
    EV_SW: 0x10,
    EV_LED: 0x0F,
    EV_SND: 0x07,
    EV_REP: 0x01,
    EV_FF: 0x7F,
    EV_PWR: 0x0F,  # no codes defined; a bitmap byte is allowed
    EV_FF_STATUS: 0x01,
}
PROP_MAX = 0x1F

_ABSINFO = struct.Struct("<iiiii")
_DEVIDS = struct.Struct("<HHHH")


class DescriptionError(ValueError):
    """A device description that can't be served (bad JSON file, impossible codes)."""


class AbsInfo(namedtuple("AbsInfo", "min max fuzz flat resolution", defaults=(0, 0, 0, 0, 0))):
    """An axis's range (struct virtio_input_absinfo). A named tuple, not a dataclass: importing
    dataclasses (and inspect) costs every start ~8 ms."""

    __slots__ = ()


class Description:
    """What the guest is told about the device (validated when made)."""

    __slots__ = ("name", "serial", "ids", "props", "events", "absinfo")

    def __init__(
        self,
        name: str,
        serial: str = "",
        ids: tuple[int, int, int, int] = (BUS_VIRTUAL, 0, 0, 0),
        props: frozenset[int] = frozenset(),
        events: dict[int, frozenset[int]] | None = None,
        absinfo: dict[int, AbsInfo] | None = None,
    ) -> None:
        self.name = name
        self.serial = serial
        #: bustype, vendor, product, version
        self.ids = ids
        self.props = props
        #: event type -> codes; EV_SYN is implicit and never listed.
        self.events: dict[int, frozenset[int]] = {} if events is None else events
        #: axis -> range, for every code of EV_ABS.
        self.absinfo: dict[int, AbsInfo] = {} if absinfo is None else absinfo
        self.validate()

    def _fields(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is Description and self._fields() == other._fields()

    __hash__ = None  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return "Description(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__) + ")"

    def validate(self) -> None:
        if len(self.name.encode()) > UNION_SIZE:
            raise DescriptionError(f"name {self.name!r} is longer than {UNION_SIZE} bytes")
        if len(self.serial.encode()) > UNION_SIZE:
            raise DescriptionError(f"serial {self.serial!r} is longer than {UNION_SIZE} bytes")
        if len(self.ids) != 4 or any(not 0 <= v <= 0xFFFF for v in self.ids):
            raise DescriptionError(f"ids {self.ids} must be four values 0..0xffff")
        for p in self.props:
            if not 0 <= p <= PROP_MAX:
                raise DescriptionError(f"property bit {p} is out of range 0..{PROP_MAX}")
        for t, codes in self.events.items():
            if t == EV_SYN or not 0 < t <= EV_MAX:
                raise DescriptionError(f"event type {t} can't be described (1..{EV_MAX}, EV_SYN is implicit)")
            limit = CODE_MAX.get(t, UNION_SIZE * 8 - 1)
            for c in codes:
                if not 0 <= c <= limit:
                    raise DescriptionError(f"code {c} of event type {t:#x} is out of range 0..{limit:#x}")
        axes = self.events.get(EV_ABS, frozenset())
        if set(self.absinfo) != set(axes):
            missing = sorted(set(axes) - set(self.absinfo))
            extra = sorted(set(self.absinfo) - set(axes))
            raise DescriptionError(f"absinfo must cover exactly the EV_ABS axes (missing {missing}, extra {extra})")
        for axis, a in self.absinfo.items():
            for v in (a.min, a.max, a.fuzz, a.flat, a.resolution):
                if not -(2**31) <= v < 2**31:
                    raise DescriptionError(f"axis {axis}: {v} does not fit in 32 bits")
            if a.min > a.max:
                raise DescriptionError(f"axis {axis}: min {a.min} > max {a.max}")

    def has(self, type_: int, code: int) -> bool:
        """Whether the device can emit (type, code); EV_SYN codes always can."""
        if type_ == EV_SYN:
            return code in (SYN_REPORT, SYN_CONFIG, SYN_MT_REPORT)
        codes = self.events.get(type_)
        return codes is not None and code in codes


def bitmap(codes: Iterable[int]) -> bytes:
    """The little-endian bitmap of *codes*, trimmed after the last non-zero byte (as QEMU does)."""
    n = 0
    for c in codes:
        if c < 0:
            raise ValueError(f"negative code {c}")
        n |= 1 << c
    return n.to_bytes((n.bit_length() + 7) // 8, "little")


def _entry(select: int, subsel: int, payload: bytes) -> bytes:
    """A full 136-byte config image for one entry (size = len(payload))."""
    if len(payload) > UNION_SIZE:
        raise ValueError(f"config entry {select:#x}/{subsel:#x} of {len(payload)} bytes")
    return bytes((select, subsel, len(payload), 0, 0, 0, 0, 0)) + payload.ljust(UNION_SIZE, b"\0")


def entries(desc: Description) -> dict[tuple[int, int], bytes]:
    """Every (select, subsel) the device answers with a non-empty entry, to its union payload."""
    out: dict[tuple[int, int], bytes] = {}
    name = desc.name.encode()
    if name:
        out[VIRTIO_INPUT_CFG_ID_NAME, 0] = name
    serial = desc.serial.encode()
    if serial:
        out[VIRTIO_INPUT_CFG_ID_SERIAL, 0] = serial
    out[VIRTIO_INPUT_CFG_ID_DEVIDS, 0] = _DEVIDS.pack(*desc.ids)
    props = bitmap(desc.props)
    if props:
        out[VIRTIO_INPUT_CFG_PROP_BITS, 0] = props
    for t, codes in sorted(desc.events.items()):
        bits = bitmap(codes)
        if bits:
            out[VIRTIO_INPUT_CFG_EV_BITS, t] = bits
    for axis, a in sorted(desc.absinfo.items()):
        out[VIRTIO_INPUT_CFG_ABS_INFO, axis] = _ABSINFO.pack(a.min, a.max, a.fuzz, a.flat, a.resolution)
    return out


class ConfigSpace:
    """``struct virtio_input_config`` for one description, with the driver's select/subsel."""

    def __init__(self, desc: Description) -> None:
        self.desc = desc
        self._entries = entries(desc)
        self.select = 0
        self.subsel = 0
        self._image = self._build()

    def _build(self) -> bytes:
        payload = self._entries.get((self.select, self.subsel), b"")
        return _entry(self.select, self.subsel, payload)

    def image(self) -> bytes:
        return self._image

    def read(self, offset: int, size: int) -> bytes:
        """*size* bytes at *offset*; ValueError outside the 136 bytes."""
        if offset < 0 or size < 0 or offset + size > CONFIG_SIZE:
            raise ValueError(f"config read of {size} bytes at {offset} is outside the {CONFIG_SIZE}-byte config space")
        return self._image[offset : offset + size]

    def write(self, offset: int, data: bytes) -> None:
        """Only select (byte 0) and subsel (byte 1) are writable; other bytes are ignored (QEMU sends
        the whole image back). Any select value is accepted; unknown ones read back with size 0."""
        if offset < 0 or offset + len(data) > CONFIG_SIZE:
            raise ValueError(
                f"config write of {len(data)} bytes at {offset} is outside the {CONFIG_SIZE}-byte config space"
            )
        image = bytearray(self._image)
        image[offset : offset + len(data)] = data
        self.select, self.subsel = image[0], image[1]
        self._image = self._build()


# -- python-evdev devices --------------------------------------------------------------


def from_evdev(dev: Any) -> Description:
    """The description of a python-evdev ``InputDevice`` (or anything with its API shape):
    ``name``, ``uniq``, ``info``, ``capabilities(absinfo=True)`` and ``input_props()``."""
    caps = dev.capabilities(absinfo=True)
    events: dict[int, frozenset[int]] = {}
    absinfo: dict[int, AbsInfo] = {}
    for t, codes in caps.items():
        if t == EV_SYN or not 0 < t <= EV_MAX:
            continue
        plain: set[int] = set()
        for c in codes:
            if isinstance(c, tuple):  # (code, AbsInfo) for EV_ABS
                code, info = c
                if t == EV_ABS:
                    # AbsInfo(value, min, max, fuzz, flat, resolution)
                    _, mn, mx, fuzz, flat, res = tuple(info)
                    absinfo[code] = AbsInfo(mn, mx, fuzz, flat, res)
                plain.add(code)
            else:
                plain.add(c)
        if t == EV_REP and not plain:
            plain = {REP_DELAY, REP_PERIOD}
        if t == EV_ABS:
            for code in plain - set(absinfo):
                absinfo[code] = _evdev_absinfo(dev, code)
        events[t] = frozenset(plain)
    try:
        props = frozenset(dev.input_props())
    except Exception:  # python-evdev raises SystemError when the ioctl fails
        props = frozenset()
    name = _clip(dev.name or "", UNION_SIZE)
    serial = _clip(getattr(dev, "uniq", "") or "", UNION_SIZE)
    info = dev.info
    ids = (info.bustype, info.vendor, info.product, info.version)
    return Description(name=name, serial=serial, ids=ids, props=props, events=events, absinfo=absinfo)


def _evdev_absinfo(dev: Any, axis: int) -> AbsInfo:
    try:
        _, mn, mx, fuzz, flat, res = tuple(dev.absinfo(axis))
    except Exception:
        return AbsInfo()
    return AbsInfo(mn, mx, fuzz, flat, res)


def _clip(s: str, limit: int) -> str:
    b = s.encode()[:limit]
    return b.decode(errors="ignore")


# -- names and JSON files ----------------------------------------------------------------


_ECODES: Any = None


def _ecodes() -> Any:
    """python-evdev's ``evdev.ecodes`` (the names of <linux/input-event-codes.h>), imported
    when names are first needed. Where it is the plain module python-evdev generates, it is
    loaded on its own: the ``evdev`` package imports asyncio, ~20 ms of every start of a
    ``--virtual`` device, which needs nothing else from it."""
    global _ECODES
    if _ECODES is None:
        _ECODES = sys.modules.get("evdev.ecodes") or _load_ecodes_alone()
        if _ECODES is None:
            from evdev import ecodes

            _ECODES = ecodes
    return _ECODES


def _load_ecodes_alone() -> Any:
    import importlib.util

    spec = importlib.util.find_spec("evdev")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "ecodes.py")
    if not os.path.exists(path):  # ecodes built as an extension module (older python-evdev)
        return None
    alone = importlib.util.spec_from_file_location("_vhostsuite_evdev_ecodes", path)
    if alone is None or alone.loader is None:
        return None
    module = importlib.util.module_from_spec(alone)
    try:
        alone.loader.exec_module(module)
    except ImportError:  # an ecodes.py that needs its package (older python-evdev)
        return None
    return module if hasattr(module, "ecodes") and hasattr(module, "bytype") else None


def type_number(value: Any) -> int:
    """An event type from a number or a name like ``"EV_KEY"``."""
    if isinstance(value, bool):
        raise DescriptionError(f"event type {value!r} is not a number or an EV_* name")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith("EV_"):
        n = _ecodes().ecodes.get(value)
        if isinstance(n, int):
            return n
    raise DescriptionError(f"unknown event type {value!r}")


#: The name prefixes that may name a code of each event type.
_PREFIXES = {
    EV_SYN: ("SYN_",),
    EV_KEY: ("KEY_", "BTN_"),
    EV_REL: ("REL_",),
    EV_ABS: ("ABS_",),
    EV_MSC: ("MSC_",),
    EV_SW: ("SW_",),
    EV_LED: ("LED_",),
    EV_SND: ("SND_",),
    EV_REP: ("REP_",),
    EV_FF: ("FF_",),
    EV_FF_STATUS: ("FF_STATUS_",),
}


def code_number(type_: int, value: Any) -> int:
    """A code of event type *type_* from a number or a name like ``"KEY_A"``."""
    if isinstance(value, bool):
        raise DescriptionError(f"code {value!r} is not a number or a name")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        prefixes = _PREFIXES.get(type_, ())
        if value.startswith(prefixes) and not value.endswith(("_MAX", "_CNT")):
            n = _ecodes().ecodes.get(value)
            if isinstance(n, int):
                return n
        raise DescriptionError(f"unknown code {value!r} for event type {type_:#x}")
    raise DescriptionError(f"code {value!r} is not a number or a name")


def prop_number(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("INPUT_PROP_") and not value.endswith(("_MAX", "_CNT")):
        n = _ecodes().ecodes.get(value)
        if isinstance(n, int):
            return n
    raise DescriptionError(f"unknown input property {value!r}")


def type_name(type_: int) -> str:
    name = _ecodes().EV.get(type_)
    return name if isinstance(name, str) else str(type_)


def code_name(type_: int, code: int) -> str:
    names = _ecodes().bytype.get(type_, {}).get(code)
    if isinstance(names, (list, tuple)):  # aliases: prefer the real name to REP_MAX, KEY_CNT ...
        names = next((n for n in names if not n.endswith(("_MAX", "_CNT"))), names[0])
    return names if isinstance(names, str) else str(code)


def from_mapping(data: Any) -> Description:
    """A description from parsed JSON::

        {
          "name": "my pad",                       # required, <= 128 bytes UTF-8
          "serial": "0001",                       # optional
          "ids": {"bustype": 6, "vendor": 1, "product": 2, "version": 1},   # or [6, 1, 2, 1]
          "properties": ["INPUT_PROP_DIRECT"],    # names or numbers
          "events": {
            "EV_KEY": ["BTN_TOUCH", "KEY_A", 30],
            "EV_ABS": {"ABS_X": {"min": 0, "max": 1023, "fuzz": 0, "flat": 0, "resolution": 0}},
            "EV_LED": ["LED_CAPSL"],
            "EV_REP": []                          # empty: REP_DELAY and REP_PERIOD
          }
        }

    Types, codes and properties are numbers or the names of <linux/input-event-codes.h>.
    """
    if not isinstance(data, Mapping):
        raise DescriptionError("the description must be a JSON object")
    unknown = set(data) - {"name", "serial", "ids", "properties", "events"}
    if unknown:
        raise DescriptionError(f"unknown keys {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise DescriptionError('"name" must be a non-empty string')
    serial = data.get("serial", "")
    if not isinstance(serial, str):
        raise DescriptionError('"serial" must be a string')
    ids_raw = data.get("ids", [BUS_VIRTUAL, 0, 0, 0])
    if isinstance(ids_raw, Mapping):
        extra = set(ids_raw) - {"bustype", "vendor", "product", "version"}
        if extra:
            raise DescriptionError(f'unknown "ids" keys {sorted(extra)}')
        ids_raw = [
            ids_raw.get(k, d) for k, d in (("bustype", BUS_VIRTUAL), ("vendor", 0), ("product", 0), ("version", 0))
        ]
    if not isinstance(ids_raw, list) or len(ids_raw) != 4 or not all(_is_int(v) for v in ids_raw):
        raise DescriptionError('"ids" must be 4 integers or an object with bustype, vendor, product, version')
    props_raw = data.get("properties", [])
    if not isinstance(props_raw, list):
        raise DescriptionError('"properties" must be a list')
    props = frozenset(prop_number(p) for p in props_raw)
    events_raw = data.get("events", {})
    if not isinstance(events_raw, Mapping) or not events_raw:
        raise DescriptionError('"events" must be a non-empty object of event type -> codes')
    events: dict[int, frozenset[int]] = {}
    absinfo: dict[int, AbsInfo] = {}
    for tname, codes_raw in events_raw.items():
        t = type_number(int(tname) if isinstance(tname, str) and tname.isdigit() else tname)
        if t == EV_SYN:
            continue
        if t == EV_ABS:
            if not isinstance(codes_raw, Mapping):
                raise DescriptionError('"EV_ABS" must map each axis to {"min": .., "max": .., ...}')
            for aname, info in codes_raw.items():
                axis = code_number(EV_ABS, int(aname) if isinstance(aname, str) and aname.isdigit() else aname)
                absinfo[axis] = _absinfo(aname, info)
            events[t] = frozenset(absinfo)
            continue
        if not isinstance(codes_raw, list):
            raise DescriptionError(f"the codes of {tname} must be a list")
        codes = frozenset(code_number(t, c) for c in codes_raw)
        if t == EV_REP and not codes:
            codes = frozenset({REP_DELAY, REP_PERIOD})
        if not codes:
            raise DescriptionError(f"{tname} lists no codes")
        events[t] = codes
    return Description(name=name, serial=serial, ids=tuple(ids_raw), props=props, events=events, absinfo=absinfo)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _absinfo(axis: str, info: Any) -> AbsInfo:
    if not isinstance(info, Mapping):
        raise DescriptionError(f"axis {axis}: needs an object with min and max")
    extra = set(info) - {"min", "max", "fuzz", "flat", "resolution"}
    if extra:
        raise DescriptionError(f"axis {axis}: unknown keys {sorted(extra)}")
    if "min" not in info or "max" not in info:
        raise DescriptionError(f"axis {axis}: min and max are required")
    vals = [info.get(k, 0) for k in ("min", "max", "fuzz", "flat", "resolution")]
    if not all(_is_int(v) for v in vals):
        raise DescriptionError(f"axis {axis}: values must be integers")
    return AbsInfo(*vals)


def from_json(path: str) -> Description:
    import json  # with re and its compiler, ~4 ms: only a --virtual=FILE start needs it

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise DescriptionError(f"{path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DescriptionError(f"{path}: not valid JSON: {e}") from None
    try:
        return from_mapping(data)
    except DescriptionError as e:
        raise DescriptionError(f"{path}: {e}") from None


# -- built-in virtual devices ---------------------------------------------------------------

_VENDOR = 0x1AF4  # Red Hat, Inc. (the virtio vendor); products below are ours

#: The --virtual devices, as the description files' mapping has them (types and codes by number).
BUILTINS: dict[str, dict[str, Any]] = {
    "keyboard": {
        "name": "vhostsuite virtual keyboard",
        "serial": "vhostsuite-keyboard",
        "ids": [BUS_VIRTUAL, _VENDOR, 0x1101, 1],
        # every key of a full PC keyboard plus multimedia keys
        "events": {
            EV_KEY: list(range(KEY_ESC, KEY_MICMUTE + 1)),
            EV_MSC: [MSC_SCAN],
            EV_LED: [LED_NUML, LED_CAPSL, LED_SCROLLL, LED_COMPOSE, LED_KANA],
            EV_REP: [],
        },
    },
    "mouse": {
        "name": "vhostsuite virtual mouse",
        "serial": "vhostsuite-mouse",
        "ids": [BUS_VIRTUAL, _VENDOR, 0x1102, 1],
        "properties": [INPUT_PROP_POINTER],
        "events": {
            EV_KEY: [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE, BTN_SIDE, BTN_EXTRA],
            EV_REL: [REL_X, REL_Y, REL_HWHEEL, REL_WHEEL],
        },
    },
    "tablet": {
        "name": "vhostsuite virtual tablet",
        "serial": "vhostsuite-tablet",
        "ids": [BUS_VIRTUAL, _VENDOR, 0x1103, 1],
        "events": {
            EV_KEY: [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE],
            EV_REL: [REL_WHEEL],
            EV_ABS: {
                ABS_X: {"min": 0, "max": 32767},
                ABS_Y: {"min": 0, "max": 32767},
            },
        },
    },
}


def builtin(kind: str) -> Description:
    try:
        return from_mapping(BUILTINS[kind])
    except KeyError:
        raise DescriptionError(f"no built-in device {kind!r} (have {', '.join(BUILTINS)})") from None
