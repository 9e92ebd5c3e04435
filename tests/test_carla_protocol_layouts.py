"""Every byte layout and msgpack shape of jtd3.carla_server pinned against the carla 0.9.16 wheel itself.

Two oracles, both the installed wheel: its DWARF debug information (``llvm-dwarfdump`` on ``libcarla*.so``:
struct sizes, member offsets and order, enum values, the Command variant and sensor registry type lists),
here; and its Python API decoding what the server sends, in tests/test_carla_protocol_client.py. Plus the
framing of the RPC and streaming protocols on raw sockets (no carla client), against an in-process server.
"""

from __future__ import annotations

import logging
import mmap
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import msgpack
import pytest

from jtd3.carla_server import layouts as L
from jtd3.carla_server import rpc
from jtd3.carla_server.commands import (APPLY_TRANSFORM, APPLY_VEHICLE_CONTROL, DESTROY, SET_AUTOPILOT,
                                        SET_SIMULATE_PHYSICS, SET_VEHICLE_LIGHT_STATE, SPAWN)
from jtd3.carla_server.streaming import StreamServer, decode_token, encode_token

NAMES = ["Header", "ActorDynamicState", "VehicleData", "PackedVehicleControl", "ImageHeader", "token_data",
         "EpisodeSettings", "WeatherParameters", "BoundingBox", "SpawnActor", "CommandType",
         "ActorAttributeType", "TrafficLightState", "SimulationState", "ActorDescription", "VehicleControl"]


def _wheel_library() -> Path | None:
    try:
        import carla  # noqa: PLC0415
    except ImportError:
        return None
    found = sorted(Path(carla.__file__).parent.glob("libcarla*.so"))
    return found[0] if found else None


class Die:
    def __init__(self, tag: str, attrs: dict[str, str]):
        self.tag, self.attrs, self.children = tag, attrs, []

    @property
    def name(self) -> str | None:
        return self.attrs.get("DW_AT_name")

    def members(self) -> list[tuple[str, int]]:
        return [(c.name, int(c.attrs["DW_AT_data_member_location"], 16)) for c in self.children
                if c.tag == "member" and "DW_AT_data_member_location" in c.attrs]

    def enumerators(self) -> dict[str, int]:
        return {c.name: int(c.attrs["DW_AT_const_value"]) for c in self.children if c.tag == "enumerator"}

    @property
    def size(self) -> int:
        return int(self.attrs["DW_AT_byte_size"], 16)


def _parse(text: str) -> list[Die]:
    """Top-level DIEs of ``llvm-dwarfdump --name=... -c`` output, with their direct children."""
    tops: list[Die] = []
    stack: list[tuple[int, Die]] = []
    for block in text.split("\n\n"):
        m = re.search(r"^0x[0-9a-f]+:( *)DW_TAG_(\w+)", block, re.M)
        if not m:
            continue
        indent = len(m.group(1))
        attrs = {}
        for a in re.finditer(r"(DW_AT_\w+)\t\((.*)\)$", block, re.M):
            value = a.group(2)
            q = re.search(r'"(.*)"', value)
            attrs[a.group(1)] = q.group(1) if q else value
        die = Die(m.group(2), attrs)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack:
            stack[-1][1].children.append(die)
        else:
            tops.append(die)
        stack.append((indent, die))
    return tops


@pytest.fixture(scope="module")
def dwarf() -> list[Die]:
    lib = _wheel_library()
    tool = shutil.which("llvm-dwarfdump")
    if lib is None or tool is None:
        pytest.skip("needs the carla wheel and llvm-dwarfdump (apt-get install llvm)")
    out = subprocess.run([tool, *(f"--name={n}" for n in NAMES), "-c", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    return _parse(out)


def _struct(dies: list[Die], name: str, file_hint: str = "") -> Die:
    for d in dies:
        if d.name == name and "DW_AT_byte_size" in d.attrs and file_hint in d.attrs.get("DW_AT_decl_file", ""):
            if d.tag != "enumeration_type" and d.members() or d.tag == "enumeration_type" and d.enumerators():
                return d
    raise AssertionError(f"{name} ({file_hint}) not in the wheel's debug information")


def _offsets(fmt: struct.Struct) -> list[int]:
    """Offsets of the fields of a packed little-endian struct format (``<`` prefix, no padding)."""
    out, pos = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.format[1:]):
        n = int(count or 1)
        size = struct.calcsize("<" + code)
        if code == "s":
            out.append(pos)
            pos += n
        else:
            for _ in range(n):
                out.append(pos)
                pos += size
    return out


def test_sensor_header_layout(dwarf):
    d = _struct(dwarf, "Header", "SensorHeaderSerializer.h")
    assert d.size == L.SENSOR_HEADER.size == 48
    assert d.members() == [("sensor_type", 0), ("frame", 8), ("timestamp", 16), ("sensor_transform", 24)]
    assert _offsets(L.SENSOR_HEADER)[:4] == [0, 8, 16, 24]


def test_world_state_layout(dwarf):
    h = _struct(dwarf, "Header", "EpisodeStateSerializer.h")
    assert h.size == L.EPISODE_HEADER.size == 36
    assert h.members() == [("episode_id", 0), ("platform_timestamp", 8), ("delta_seconds", 16), ("map_origin", 20),
                           ("simulation_state", 32)]
    a = _struct(dwarf, "ActorDynamicState", "ActorDynamicState.h")
    assert a.size == L.ACTOR_DYNAMIC_STATE.size == 119
    assert a.members() == [("id", 0), ("actor_state", 4), ("transform", 5), ("velocity", 29),
                           ("angular_velocity", 41), ("acceleration", 53), ("state", 65)]
    offsets = _offsets(L.ACTOR_DYNAMIC_STATE)
    assert [offsets[i] for i in (0, 1, 2, 8, 11, 14, 17)] == [0, 4, 5, 29, 41, 53, 65]
    union = [c for c in a.children if c.tag == "union_type"][0]
    assert union.size == 54
    v = _struct(dwarf, "VehicleData", "ActorDynamicState.h")
    c = _struct(dwarf, "PackedVehicleControl", "ActorDynamicState.h")
    assert v.size == L.VEHICLE_DATA.size == 30 and c.size == 19
    assert c.members() == [("throttle", 0), ("steer", 4), ("brake", 8), ("hand_brake", 12), ("reverse", 13),
                           ("manual_gear_shift", 14), ("gear", 15)]
    assert v.members() == [("control", 0), ("speed_limit", 19), ("traffic_light_state", 23),
                           ("has_traffic_light", 24), ("traffic_light_id", 25), ("failure_state", 29)]
    assert _offsets(L.VEHICLE_DATA) == [0, 4, 8, 12, 13, 14, 15, 19, 23, 24, 25, 29]
    states = _struct(dwarf, "SimulationState", "EpisodeStateSerializer.h").enumerators()
    assert states["None"] == 0
    lights = _struct(dwarf, "TrafficLightState").enumerators()
    assert lights["Unknown"] == 4  # what vehicle_data() reports: no traffic light


def test_image_header_and_token_layouts(dwarf):
    i = _struct(dwarf, "ImageHeader", "ImageSerializer.h")
    assert i.size == L.IMAGE_HEADER.size == 12
    assert i.members() == [("width", 0), ("height", 4), ("fov_angle", 8)]
    t = _struct(dwarf, "token_data", "Token.h")
    assert t.size == 24
    assert [m for m, _ in t.members()] == ["stream_id", "port", "protocol", "address_type", "address"]
    assert [o for _, o in t.members()] == [0, 4, 6, 7, 8]
    token = encode_token(7, "127.0.0.1", 2001)
    assert len(token) == 24 and decode_token(token) == (7, "127.0.0.1", 2001)
    assert token[6:8] == bytes([1, 1])  # tcp, IPv4


def test_msgpack_member_orders(dwarf):
    s = _struct(dwarf, "EpisodeSettings", "EpisodeSettings.h")
    assert tuple(m for m, _ in s.members()) == L.SETTINGS_FIELDS
    w = _struct(dwarf, "WeatherParameters", "WeatherParameters.h")
    assert tuple(m for m, _ in w.members()) == L.WEATHER_FIELDS
    b = _struct(dwarf, "BoundingBox", "BoundingBox.h")
    assert [m for m, _ in b.members()] == ["location", "extent", "rotation", "actor_id"]
    sp = _struct(dwarf, "SpawnActor", "Command.h")
    assert [m for m, _ in sp.members()] == ["description", "transform", "parent", "attachment_type", "socket_name",
                                           "do_after"]
    ad = _struct(dwarf, "ActorDescription", "ActorDescription.h")
    assert [m for m, _ in ad.members()] == ["uid", "id", "attributes"]
    vc = _struct(dwarf, "VehicleControl", "VehicleControl.h")
    assert [m for m, _ in vc.members()] == ["throttle", "steer", "brake", "hand_brake", "reverse",
                                            "manual_gear_shift", "gear"]
    types = _struct(dwarf, "ActorAttributeType").enumerators()
    assert {k.lower(): v for k, v in types.items() if k not in ("SIZE", "INVALID")} == L.ATTRIBUTE_TYPES


def test_command_variant_and_sensor_registry_orders(dwarf):
    variant = next(d.attrs["DW_AT_type"] for d in dwarf if d.name == "CommandType" and "variant<" in d.attrs.get("DW_AT_type", ""))
    commands = re.findall(r"carla::rpc::Command::(\w+)", variant)
    assert commands.index("SpawnActor") == SPAWN and commands.index("DestroyActor") == DESTROY
    assert commands.index("ApplyVehicleControl") == APPLY_VEHICLE_CONTROL
    assert commands.index("ApplyTransform") == APPLY_TRANSFORM
    assert commands.index("SetSimulatePhysics") == SET_SIMULATE_PHYSICS
    assert commands.index("SetAutopilot") == SET_AUTOPILOT
    assert commands.index("SetVehicleLightState") == SET_VEHICLE_LIGHT_STATE
    # The registry is an alias of a CompositeSerializer<std::pair<Sensor *, Serializer>...> instance: its name is
    # in the debug strings (an exact-name DWARF lookup cannot find an alias, a regex lookup takes 10 s).
    with open(_wheel_library(), "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        start = m.find(b"CompositeSerializer<std::pair<ACollisionSensor *")
        assert start >= 0
        registry = m[start : m.find(b"\0", start)].decode()
    sensors = re.findall(r"std::pair<(\w+) \*", registry)
    classes = {
        "ACollisionSensor": "sensor.other.collision", "ADepthCamera": "sensor.camera.depth",
        "ANormalsCamera": "sensor.camera.normals", "ADVSCamera": "sensor.camera.dvs", "AGnssSensor": "sensor.other.gnss",
        "AInertialMeasurementUnit": "sensor.other.imu", "ALaneInvasionSensor": "sensor.other.lane_invasion",
        "AObstacleDetectionSensor": "sensor.other.obstacle", "AOpticalFlowCamera": "sensor.camera.optical_flow",
        "ARadar": "sensor.other.radar", "ARayCastSemanticLidar": "sensor.lidar.ray_cast_semantic",
        "ARayCastLidar": "sensor.lidar.ray_cast", "ARssSensor": "sensor.other.rss", "ASceneCaptureCamera": "sensor.camera.rgb",
        "ASemanticSegmentationCamera": "sensor.camera.semantic_segmentation",
        "AInstanceSegmentationCamera": "sensor.camera.instance_segmentation",
        "ACosmosControlSensor": "sensor.camera.cosmos_visualization", "FWorldObserver": "world_observer",
    }
    assert {classes[c]: i for i, c in enumerate(sensors) if c in classes} == L.SENSOR_TYPES
    assert sensors[len(classes):] == ["FCameraGBufferUint8", "FCameraGBufferFloat", "AV2XSensor", "ACustomV2XSensor"]


# -- framing on raw sockets (no carla client) ---------------------------------------------------------------


def _call(port: int, name: str, *args, msgid: int = 7) -> list:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(msgpack.packb([0, msgid, name, [[False], *args]]))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            unpacker.feed(s.recv(1 << 16))
            for reply in unpacker:
                return reply


@pytest.fixture(scope="module")
def server():
    from jtd3.carla_server import CarlaServer  # in-process: no carla client in these tests

    with CarlaServer(port=0, streaming_port=0) as srv:
        yield srv


def test_reply_shapes_value_void_error_raw(server):
    assert _call(server.port, "version") == [1, 7, None, [[1, "0.9.16"]]]
    assert _call(server.port, "reset_all_traffic_lights") == [1, 7, None, [[False]]]
    assert _call(server.port, "destroy_actor", 424242) == [1, 7, None, [[0, ["Actor 424242 not found (destroy_actor)"]]]]
    assert _call(server.port, "set_actor_simulate_physics", 424242, True)[3][0][0] is True  # void with an error
    reply = _call(server.port, "apply_batch", [[[DESTROY, [424242]]]], False)
    assert reply[3] == [[[0, ["Actor 424242 not found"]]]]  # bare vector<CommandResponse>, no Response wrapper
    settings = _call(server.port, "get_episode_settings")[3][0][1]
    assert settings[2] == [False] and len(settings) == len(L.SETTINGS_FIELDS)  # optional fixed_delta_seconds


def test_unknown_call_is_a_typed_error_logged_once(server, caplog):
    with caplog.at_level(logging.WARNING, logger="jtd3.carla_server.server"):
        first = _call(server.port, "get_all_level_BBs", 0)
        second = _call(server.port, "get_all_level_BBs", 0)
        void = _call(server.port, "set_traffic_light_state", 5, 0)
    assert first[3][0][0] == 0 and "not supported" in first[3][0][1][0]
    assert second == first
    assert void[3][0][0] is True and "not supported" in void[3][0][1][0]  # Response<void> error shape
    logged = [r for r in caplog.records if "get_all_level_BBs" in r.getMessage()]
    assert len(logged) == 1


def test_pipelined_requests_are_answered_in_order(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"".join(msgpack.packb([0, i, "version", [[False]]]) for i in range(20)))
        unpacker, replies = msgpack.Unpacker(raw=False), []
        while len(replies) < 20:
            unpacker.feed(s.recv(1 << 16))
            replies += list(unpacker)
    assert [r[1] for r in replies] == list(range(20))


def test_stream_subscription_and_framing():
    streams = StreamServer("127.0.0.1", 0)
    try:
        stream_id, host, port = decode_token(streams.token(5))
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(struct.pack("<I", stream_id))
            assert streams.wait_subscribed(5, 5.0)
            assert streams.publish(5, b"abc") == 1 and streams.publish(6, b"nobody") == 0
            data = b""
            while len(data) < 7:
                data += s.recv(64)
        assert data == struct.pack("<I", 3) + b"abc"
    finally:
        streams.close()


def test_rpc_value_helpers():
    assert rpc.value(3) == [[1, 3]] and rpc.error_value("x") == [[0, ["x"]]]
    assert rpc.void() == [[False]] and rpc.error_void("x") == [[True, ["x"]]]
    assert msgpack.unpackb(rpc.encode_reply(9, rpc.void())) == [1, 9, None, [[False]]]
    assert L.settings_dict(L.settings_object({**dict.fromkeys(L.SETTINGS_FIELDS, 0), "fixed_delta_seconds": 0.05}),
                           {})["fixed_delta_seconds"] == 0.05


def test_a_subscriber_that_stops_reading_is_dropped(monkeypatch):
    from jtd3.carla_server import streaming  # noqa: PLC0415

    monkeypatch.setattr(streaming, "SEND_TIMEOUT_S", 0.2)
    streams = StreamServer("127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", streams.port), timeout=5) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(struct.pack("<I", 9))
            assert streams.wait_subscribed(9, 5.0)
            payload = bytes(1 << 20)
            sent = [streams.publish(9, payload) for _ in range(64)]  # never read: the buffers fill up
            assert sent[0] == 1 and sent[-1] == 0 and not streams.has_subscribers(9)
    finally:
        streams.close()
