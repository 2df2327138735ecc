#!/usr/bin/env python3
"""Writes the seed corpora of the gRPC fuzz targets (standard library only).

  tests/fuzz/corpus/deframe/   inputs for fuzz_deframe: a control byte, chunk
                               sizes, then length-prefixed messages
  tests/fuzz/corpus/request/   inputs for fuzz_request: raw HTTP/2 frames sent
                               after the client preface and an empty SETTINGS
  tests/fuzz/corpus/sandbox_spec/  inputs for fuzz_sandbox_spec: encoded
                               openshell.v1.CreateSandboxRequest messages

Protobuf messages and HPACK header blocks are encoded by hand: HPACK uses
only "literal header field without indexing, new name" (RFC 7541 §6.2.2)
with raw (not Huffman) strings, which every decoder accepts.

Run from anywhere: python3 tests/fuzz/make_corpus.py
"""

import gzip
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- protobuf ---------------------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_varint(field, n):
    return varint(field << 3 | 0) + varint(n)


def pb_bytes(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


def pb_map_entry(field, key, value):
    return pb_bytes(field, pb_bytes(1, key) + pb_bytes(2, value))


# ---- gRPC framing -------------------------------------------------------------


def grpc_frame(msg, compressed=False):
    if compressed:
        msg = gzip.compress(msg, mtime=0)
    return struct.pack(">BI", 1 if compressed else 0, len(msg)) + msg


# ---- HTTP/2 --------------------------------------------------------------------

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream) + payload


def hpack_int(n, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([first | n])
    out = bytearray([first | limit])
    n -= limit
    while n >= 128:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def hpack_literal(name, value):
    name, value = name.encode(), value.encode()
    return (b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value)


def header_block(path, extra=()):
    fields = [(":method", "POST"), (":scheme", "http"), (":path", path),
              (":authority", "localhost"), ("content-type", "application/grpc"),
              ("te", "trailers")] + list(extra)
    return b"".join(hpack_literal(n, v) for n, v in fields)


def request(stream, path, body, extra=(), end=True):
    out = frame(HEADERS, END_HEADERS, stream, header_block(path, extra))
    if body is not None:
        out += frame(DATA, END_STREAM if end else 0, stream, body)
    return out


HEALTH = "/openshell.v1.OpenShell/Health"
ECHO = "/openshell.diag.v1.Diagnostics/Echo"
STREAM = "/openshell.diag.v1.Diagnostics/Stream"
COLLECT = "/openshell.diag.v1.Diagnostics/Collect"
DELAY = "/openshell.diag.v1.Diagnostics/Delay"
CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
REFLECT = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def data_frames(stream, body, end=True):
    """|body| as DATA frames of at most 16384 bytes (the default frame size)."""
    chunks = [body[i:i + 16384] for i in range(0, len(body), 16384)] or [b""]
    return b"".join(frame(DATA, END_STREAM if end and i == len(chunks) - 1 else 0, stream, c)
                    for i, c in enumerate(chunks))


def request_corpus():
    """Seeds start with a SETTINGS ACK, as a real client's first frames do:
    until it arrives the server holds the client to the 65535-byte default
    window. "health_unary_no_ack" shows the bare case."""
    ack = frame(SETTINGS, ACK, 0)
    big_window = (frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0x7FFFFFFF)) +
                  frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF - 65535)))
    echo_big = grpc_frame(pb_bytes(1, bytes(range(256)) * 70))
    seeds = {name: ack + data for name, data in request_corpus_body().items()}
    seeds["health_unary_no_ack"] = request(1, HEALTH, grpc_frame(b""))
    seeds["echo_big_window"] = (ack + big_window + request(1, ECHO, None) +
                                data_frames(1, echo_big))
    return seeds


def request_corpus_body():
    echo1 = grpc_frame(pb_bytes(1, "hello"))
    echo2 = grpc_frame(pb_bytes(1, b"\x00\x01\x02" * 20))
    split = echo1 + echo2
    two_headers = frame(HEADERS, 0, 1, header_block(ECHO)[:20])
    two_headers += frame(CONTINUATION, END_HEADERS, 1, header_block(ECHO)[20:])
    return {
        "health_unary": request(1, HEALTH, grpc_frame(b"")),
        "health_gzip": request(1, HEALTH, grpc_frame(b"", compressed=True),
                               [("grpc-encoding", "gzip")]),
        "health_timeout": request(1, HEALTH, grpc_frame(b""), [("grpc-timeout", "1S")]),
        "health_two_streams": request(1, HEALTH, grpc_frame(b"")) +
        request(3, HEALTH, grpc_frame(b"")),
        "health_headers_only": frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                     header_block(HEALTH)),
        "echo_bidi": request(1, ECHO, echo1 + echo2),
        "echo_split_frames": request(1, ECHO, None) + frame(DATA, 0, 1, split[:3]) +
        frame(DATA, 0, 1, split[3:9]) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 65536)) +
        frame(PING, 0, 0, b"12345678") + frame(DATA, END_STREAM, 1, split[9:]),
        "echo_continuation": two_headers + frame(DATA, END_STREAM, 1, echo1),
        "echo_gzip": request(1, ECHO, grpc_frame(pb_bytes(1, "z" * 200), compressed=True),
                             [("grpc-encoding", "gzip")]),
        "echo_reset": request(1, ECHO, echo1, end=False) +
        frame(RST_STREAM, 0, 1, struct.pack(">I", 8)),
        "stream_chunks": request(1, STREAM, grpc_frame(pb_varint(1, 3) + pb_varint(2, 10))),
        "collect": request(1, COLLECT, echo1 + echo1 + echo2),
        "delay_deadline": request(1, DELAY, grpc_frame(pb_varint(1, 50)),
                                  [("grpc-timeout", "1u")]),
        "check_and_watch": request(1, CHECK, grpc_frame(b"")) +
        request(3, WATCH, grpc_frame(pb_bytes(1, "grpc.health.v1.Health"))),
        "reflection_list": request(1, REFLECT, grpc_frame(pb_bytes(7, "*")) +
                                   grpc_frame(pb_bytes(4, "openshell.v1.OpenShell"))),
        "settings_goaway": frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 1 << 20)) +
        request(1, HEALTH, grpc_frame(b"")) + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
        "bad_method_path": frame(HEADERS, END_HEADERS | END_STREAM, 1, b"".join(
            hpack_literal(n, v) for n, v in [(":method", "GET"), (":scheme", "http"),
                                             (":path", "/nope"), (":authority", "x")])),
    }


# ---- deframer inputs ------------------------------------------------------------

def deframe_input(limit_index, chunks, stream):
    return bytes([limit_index | len(chunks) << 4]) + bytes(chunks) + stream


def deframe_corpus():
    create = (pb_bytes(1, pb_bytes(1, "debug") + pb_map_entry(5, "K", "V") + pb_bytes(8, "p1") +
                       pb_bytes(12, "sh") + pb_varint(13, 1)) +
              pb_bytes(2, "sbx") + pb_map_entry(3, "team", "a") + pb_map_entry(4, "note", "b") +
              pb_bytes(5, "ws"))
    reflect = pb_bytes(1, "localhost") + pb_bytes(4, "openshell.v1.OpenShell")
    ext = pb_bytes(5, pb_bytes(1, "google.protobuf.MethodOptions") + pb_varint(2, 50000))
    return {
        "create_sandbox": deframe_input(5, [], grpc_frame(create)),
        "create_sandbox_gzip": deframe_input(5, [7, 1, 0], grpc_frame(create, compressed=True)),
        "reflection_several": deframe_input(4, [3], grpc_frame(reflect) + grpc_frame(ext) +
                                            grpc_frame(b"") + grpc_frame(pb_bytes(7, "*"))),
        "bytewise": deframe_input(4, [1], grpc_frame(reflect)),
        "unknown_fields": deframe_input(5, [2, 9], grpc_frame(pb_varint(99, 7) + create)),
        "too_big": deframe_input(2, [], grpc_frame(b"x" * 17)),
        "bad_flag": deframe_input(4, [], b"\x02" + grpc_frame(b"")[1:]),
    }


# ---- CreateSandboxRequest (openshell.v1; field numbers from the contract) ------


def pb_double(field, x):
    return varint(field << 3 | 1) + struct.pack("<d", x)


def value_struct(fields):
    """google.protobuf.Value holding a Struct (kind field 5)."""
    return pb_bytes(5, struct_msg(fields))


def struct_msg(fields):
    """google.protobuf.Struct: map<string, Value> fields = 1; values are
    str (string_value 3), float (number_value 2), bool (bool_value 4),
    dict (struct_value 5) or list (list_value 6)."""
    out = b""
    for k, v in fields.items():
        out += pb_bytes(1, pb_bytes(1, k) + pb_bytes(2, value(v)))
    return out


def value(v):
    if isinstance(v, bool):
        return pb_varint(4, 1 if v else 0)
    if isinstance(v, (int, float)):
        return pb_double(2, float(v))
    if isinstance(v, str):
        return pb_bytes(3, v)
    if isinstance(v, dict):
        return pb_bytes(5, struct_msg(v))
    if isinstance(v, list):
        return pb_bytes(6, b"".join(pb_bytes(1, value(x)) for x in v))
    return pb_varint(1, 0)  # null_value


def sandbox_request(command=(), name="", tty=False, env=None, image="", labels=None,
                    resources=None, driver_config=None, annotations=None, gpu=None):
    tmpl = pb_bytes(1, image) if image else b""
    for k, v in (labels or {}).items():
        tmpl += pb_map_entry(4, k, v)
    if resources is not None:
        tmpl += pb_bytes(7, struct_msg(resources))
    if driver_config is not None:
        tmpl += pb_bytes(11, struct_msg(driver_config))
    spec = b"".join(pb_bytes(12, a) for a in command)
    if tty:
        spec += pb_varint(13, 1)
    for k, v in (env or {}).items():
        spec += pb_map_entry(5, k, v)
    if tmpl:
        spec += pb_bytes(6, tmpl)
    if gpu is not None:
        spec += pb_bytes(9, pb_bytes(1, pb_varint(1, gpu)))
    req = pb_bytes(1, spec) + (pb_bytes(2, name) if name else b"")
    for k, v in (annotations or {}).items():
        req += pb_map_entry(4, k, v)
    return req


def sandbox_spec_corpus():
    sh = ["/bin/sh", "-c", "sleep 600"]
    return {
        "minimal": sandbox_request(sh),
        "default_command": sandbox_request(),
        "named_env_labels": sandbox_request(sh, name="web-1", tty=True,
                                            env={"A": "1", "PATH_X": "/x"},
                                            labels={"app": "web"},
                                            annotations={"example.com/owner": "ops"}),
        "driver_config": sandbox_request(sh, driver_config={
            "process": {"network": "isolated", "hostname": "box", "tmp_size": "64Mi",
                        "pids_limit": 128, "stop_grace_seconds": 5},
            "kubernetes": {"nodeSelector": {"a": "b"}}}),
        "driver_config_bad": sandbox_request(sh, driver_config={"process": {"bogus": [1, True]}}),
        "driver_config_not_object": sandbox_request(sh, driver_config={"process": "x"}),
        "resources": sandbox_request(sh, image="host", resources={
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}}),
        "gpu_zero": sandbox_request(sh, gpu=0),
        "reserved_env": sandbox_request(sh, env={"OPENSHELL_X": "1"}),
    }


def write(dirname, files):
    path = os.path.join(HERE, "corpus", dirname)
    os.makedirs(path, exist_ok=True)
    for name, data in sorted(files.items()):
        with open(os.path.join(path, name + ".bin"), "wb") as f:
            f.write(data)


def main():
    write("request", request_corpus())
    write("deframe", deframe_corpus())
    write("sandbox_spec", sandbox_spec_corpus())


if __name__ == "__main__":
    main()
