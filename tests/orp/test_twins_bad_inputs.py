"""The codec and FSM twins raise the same exceptions with the same words on bad input.

Issue 12, finding 8, applied to the ORP twins: hypothesis feeds both wrong
types, negative and huge integers, None and odd buffers to every public entry
point and compares type and message (or the result). A wrong number of
arguments and attribute assignment stay the interpreter's own messages (they
name the compiled class with its module) and are not compared.
"""

from __future__ import annotations

import array
import copy
import pickle
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import compiled_twin, load_twin

pytestmark = pytest.mark.dataplane

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PURE_CODEC = load_twin("codec", "pure")
PURE_FSM = load_twin("fsm", "pure")
#: A whole frame: type 1, payload "ab".
FRAME = b"\x20\x01\x00\x00\x00\x00\x00\x02ab"


@pytest.fixture(scope="module")
def compiled() -> tuple[ModuleType, ModuleType]:
    codec, fsm = compiled_twin("codec"), compiled_twin("fsm")
    if codec is None or fsm is None:
        pytest.skip("compiled codec/fsm not built")
    return codec, fsm


class Index:
    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


class BadIndex:
    def __index__(self) -> Any:
        return "seven"


EDGES = [
    -1, 0, 1, 0x7FF, 0x800, 0xFFFF, 0x10000, 2**24, 2**24 + 1, 2**31, 2**32, 2**32 + 1,
    sys.maxsize, sys.maxsize + 1, -sys.maxsize - 2, 2**64,
]  # fmt: skip

values = st.one_of(
    st.integers(-10, 10),
    st.sampled_from(EDGES),
    st.integers(-(2**100), 2**100),
    st.integers(-(2**70), 2**70).map(Index),
    st.sampled_from([None, True, 1.5, float("inf"), 1j, "7", b"7", [7], BadIndex()]),
)
buffers = st.one_of(
    st.binary(max_size=24),
    st.binary(max_size=24).map(bytearray),
    st.binary(min_size=2, max_size=24).map(lambda b: memoryview(b + b)[::2]),
    st.lists(st.integers(0, 2**31 - 1), max_size=4).map(lambda v: array.array("i", v)),
    st.sampled_from([None, 0, "text", [1], object(), 2.5]),
)


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", a comparable result) or (exception type name, message)."""
    try:
        result = fn()
    except Exception as exc:  # type and words are what is compared
        return (type(exc).__name__, str(exc))
    if isinstance(result, list):  # decoded frames
        return ("ok", [(f.type, f.payload, f.flags, f.version) for f in result])
    if hasattr(result, "payload"):
        return ("ok", (result.type, result.payload, result.flags, result.version, repr(result)))
    return ("ok", result)


def both(pair: tuple[ModuleType, ModuleType], op: Callable[[ModuleType, ModuleType], Any]) -> None:
    codec, fsm = pair
    assert outcome(lambda: op(codec, fsm)) == outcome(lambda: op(PURE_CODEC, PURE_FSM))


@SETTINGS
@given(value=values, position=st.integers(0, 3))
def test_integer_arguments_agree(
    compiled: tuple[ModuleType, ModuleType], value: object, position: int
) -> None:
    frame_args: list[object] = [1, b"x", 0, 1]
    frame_args[position] = value
    both(compiled, lambda c, f: c.Frame(*frame_args))
    header_args: list[object] = [1, 2, 0]
    header_args[position % 3] = value
    both(compiled, lambda c, f: c.encode_header(*header_args))
    both(compiled, lambda c, f: c.encode_frame(*(header_args[:1] + [b"x"] + header_args[2:])))
    both(compiled, lambda c, f: c.FrameDecoder(value).feed(FRAME))
    both(compiled, lambda c, f: c.FrameDecoder(max_payload=value).feed(FRAME[:9]))
    both(compiled, lambda c, f: f.StreamFSM().apply(value))


@SETTINGS
@given(data=buffers)
def test_buffer_arguments_agree(compiled: tuple[ModuleType, ModuleType], data: object) -> None:
    both(compiled, lambda c, f: c.decode_header(data))
    both(compiled, lambda c, f: c.FrameDecoder().feed(data))
    both(compiled, lambda c, f: c.Frame(1, data))
    both(compiled, lambda c, f: c.encode_frame(1, data))

    def poisoned(c: ModuleType, f: ModuleType) -> object:
        decoder = c.FrameDecoder(4)
        try:
            decoder.feed(data)
        except Exception:  # noqa: BLE001, S110 - only the state afterwards matters here
            pass
        return (decoder.pending, outcome(lambda: decoder.feed(FRAME)), outcome(decoder.close))

    both(compiled, poisoned)


@pytest.mark.parametrize(
    "op",
    [
        lambda c, f: pickle.dumps(c.FrameDecoder()),
        lambda c, f: copy.copy(c.FrameDecoder()),
        lambda c, f: copy.deepcopy(c.FrameDecoder(64)),
        lambda c, f: pickle.dumps(f.StreamFSM()),
        lambda c, f: copy.copy(f.StreamFSM()),
        lambda c, f: f.StreamFSM(1),
        lambda c, f: pickle.loads(pickle.dumps(c.Frame(3, b"x", 7))),
        lambda c, f: copy.copy(c.Frame(3, b"x", 7)),
    ],
    ids=[
        "pickle-decoder", "copy-decoder", "deepcopy-decoder", "pickle-fsm", "copy-fsm",
        "fsm-argument", "pickle-frame", "copy-frame",
    ],
)  # fmt: skip
def test_stateful_objects_are_not_copied_alike(
    compiled: tuple[ModuleType, ModuleType], op: Callable[[ModuleType, ModuleType], Any]
) -> None:
    codec, fsm = compiled
    got = outcome(lambda: op(codec, fsm))
    want = outcome(lambda: op(PURE_CODEC, PURE_FSM))
    if got[0] == "TypeError" and "positional argument" in got[1]:
        # a wrong number of arguments: same type, the interpreter's own words
        assert want[0] == "TypeError"
    else:
        assert got == want


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_decoder_and_fsm_refuse_copies_with_one_message(impl: str) -> None:
    codec, fsm = load_twin("codec", impl), load_twin("fsm", impl)
    for obj, kind in ((codec.FrameDecoder(), "FrameDecoder"), (fsm.StreamFSM(), "StreamFSM")):
        for op in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match=f"^orp: a {kind} cannot be pickled or copied$"):
                op(obj)
