"""grpc.reflection.v1alpha: service listing and descriptor lookups."""

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

RPC_TIMEOUT = 5.0
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]

EXPECTED_SERVICES = {
    "openshell.v1.OpenShell",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


def reflect(stubs, channel, *requests):
    """Sends |requests| on one ServerReflectionInfo stream; returns the replies."""
    stub = stubs.reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT))
    assert len(replies) == len(requests)
    return replies


def req(stubs, **kw):
    return stubs.reflection_pb2.ServerReflectionRequest(**kw)


def parse_files(reply):
    assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
    files = {}
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
        assert fdp.name
        files[fdp.name] = fdp
    return files


def build_pool(files):
    """Adds |files| to a fresh pool in dependency order (all deps must be present)."""
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        assert name in files, f"dependency {name} missing from the reflection reply"
        for dep in files[name].dependency:
            add(dep)
        pool.Add(files[name])
        added.add(name)

    for name in files:
        add(name)
    return pool


def test_list_services(stubs, channel):
    (reply,) = reflect(stubs, channel, req(stubs, list_services=""))
    assert reply.WhichOneof("message_response") == "list_services_response", reply
    names = {s.name for s in reply.list_services_response.service}
    assert EXPECTED_SERVICES <= names
    # The gateway fixture runs with --enable-diagnostics.
    assert "openshell.diag.v1.Diagnostics" in names
    assert reply.original_request.list_services == ""


def test_list_services_without_diagnostics(stubs, gateway_factory):
    gw = gateway_factory(["--bind-address", "127.0.0.1", "--port", "0", "--disable-tls"])
    with gw.channel() as ch:
        (reply,) = reflect(stubs, ch, req(stubs, list_services=""))
        names = {s.name for s in reply.list_services_response.service}
        assert EXPECTED_SERVICES <= names
        assert "openshell.diag.v1.Diagnostics" not in names
        diag = ch.unary_unary("/openshell.diag.v1.Diagnostics/Delay")
        with pytest.raises(grpc.RpcError) as info:
            diag(b"", timeout=RPC_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_file_containing_symbol_openshell(stubs, channel):
    (reply,) = reflect(stubs, channel, req(stubs, file_containing_symbol="openshell.v1.OpenShell"))
    files = parse_files(reply)
    main = [n for n in files if n.rsplit("/", 1)[-1] == "openshell.proto"]
    assert len(main) == 1, sorted(files)
    fdp = files[main[0]]
    assert fdp.package == "openshell.v1"
    # The first file is the one defining the symbol.
    first = descriptor_pb2.FileDescriptorProto.FromString(
        reply.file_descriptor_response.file_descriptor_proto[0])
    assert first.name == main[0]

    (svc,) = [s for s in fdp.service if s.name == "OpenShell"]
    methods = {m.name: m for m in svc.method}
    assert methods["Health"].input_type == ".openshell.v1.HealthRequest"
    assert methods["Health"].output_type == ".openshell.v1.HealthResponse"
    assert "GetGatewayInfo" in methods

    # Transitive dependencies come along and the set builds a usable pool.
    pool = build_pool(files)
    service = pool.FindServiceByName("openshell.v1.OpenShell")
    assert service.FindMethodByName("Health").output_type.full_name == \
        "openshell.v1.HealthResponse"
    pool.FindMessageTypeByName("google.protobuf.Struct")


def test_file_containing_symbol_message_and_method(stubs, channel):
    replies = reflect(stubs, channel,
                      req(stubs, file_containing_symbol="openshell.v1.HealthResponse"),
                      req(stubs, file_containing_symbol="openshell.v1.OpenShell.Health"))
    for reply in replies:
        files = parse_files(reply)
        assert any(n.rsplit("/", 1)[-1] == "openshell.proto" for n in files), sorted(files)


def test_file_by_filename_roundtrip(stubs, channel):
    (reply,) = reflect(stubs, channel, req(stubs, file_containing_symbol="grpc.health.v1.Health"))
    first = descriptor_pb2.FileDescriptorProto.FromString(
        reply.file_descriptor_response.file_descriptor_proto[0])
    assert first.package == "grpc.health.v1"
    (again,) = reflect(stubs, channel, req(stubs, file_by_filename=first.name))
    files = parse_files(again)
    assert first.name in files
    assert files[first.name] == first


def test_diagnostics_symbol(stubs, channel):
    (reply,) = reflect(stubs, channel,
                       req(stubs, file_containing_symbol="openshell.diag.v1.Diagnostics"))
    files = parse_files(reply)
    pool = build_pool(files)
    svc = pool.FindServiceByName("openshell.diag.v1.Diagnostics")
    assert {m.name for m in svc.methods} >= {"Stream", "Echo", "Collect", "Delay"}


def test_unknown_symbol_not_found(stubs, channel):
    replies = reflect(stubs, channel,
                      req(stubs, file_containing_symbol="no.such.Symbol"),
                      req(stubs, file_by_filename="no/such/file.proto"),
                      req(stubs, list_services=""))
    for reply in replies[:2]:
        assert reply.WhichOneof("message_response") == "error_response", reply
        assert reply.error_response.error_code == NOT_FOUND
    # The stream stays usable after an error reply.
    assert replies[2].WhichOneof("message_response") == "list_services_response"
