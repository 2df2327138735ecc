"""Flow control: a slow reader must slow the gateway down, not grow its memory."""

import time

import grpc
import pytest

MIB = 1024 * 1024
CHUNK = 65536
READ_INTERVAL = 0.05  # one message per 50 ms = ~1.3 MB/s drained
READ_FOR = 3.0        # seconds of slow reading
RSS_BUDGET_KIB = 64 * 1024

STREAM_METHOD = "/openshell.diag.v1.Diagnostics/Stream"


def slow_channel(gateway):
    # Fixed 64 KiB stream window on the client (no BDP growth) keeps the
    # amount the client itself absorbs small and predictable.
    return gateway.channel(options=[("grpc.http2.bdp_probe", 0),
                                    ("grpc.max_receive_message_length", 4 * MIB)])


def assert_healthy(stubs, gateway):
    with gateway.channel() as ch:
        resp = stubs.openshell_pb2_grpc.OpenShellStub(ch).Health(
            stubs.openshell_pb2.HealthRequest(), timeout=5)
    assert resp.status == 1


@pytest.mark.slow
def test_slow_reader_bounded_memory(stubs, gateway):
    pb = stubs.diag_pb2
    assert_healthy(stubs, gateway)
    baseline = gateway.rss_kib()
    peak = baseline

    with slow_channel(gateway) as ch:
        stream = ch.unary_stream(STREAM_METHOD,
                                 request_serializer=pb.StreamRequest.SerializeToString,
                                 response_deserializer=pb.StreamChunk.FromString)
        call = stream(pb.StreamRequest(count=0, size=CHUNK), timeout=30)
        received = 0
        last_seq = None
        try:
            end = time.monotonic() + READ_FOR
            while time.monotonic() < end:
                chunk = next(call)
                assert len(chunk.payload) == CHUNK
                if last_seq is not None:
                    assert chunk.seq == last_seq + 1
                last_seq = chunk.seq
                received += 1
                peak = max(peak, gateway.rss_kib())
                time.sleep(READ_INTERVAL)
            # A stalled reader: the gateway must stop producing, not buffer.
            stall_end = time.monotonic() + 1.0
            while time.monotonic() < stall_end:
                peak = max(peak, gateway.rss_kib())
                time.sleep(0.1)
        finally:
            call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED

    growth = peak - baseline
    print(f"received={received} baseline={baseline}KiB peak={peak}KiB growth={growth}KiB")
    # Without the sleep the loop would read ~60 messages; allow slow CI.
    assert received >= 20
    assert growth < RSS_BUDGET_KIB, (
        f"gateway RSS grew by {growth} KiB while a client read {received} x 64 KiB slowly")
    assert gateway.running
    assert_healthy(stubs, gateway)


@pytest.mark.slow
def test_cancelled_streams_release_memory(stubs, gateway):
    # Several unread infinite streams at once, then cancelled: memory stays
    # bounded and the gateway keeps serving.
    pb = stubs.diag_pb2
    assert_healthy(stubs, gateway)
    baseline = gateway.rss_kib()
    peak = baseline
    with slow_channel(gateway) as ch:
        stream = ch.unary_stream(STREAM_METHOD,
                                 request_serializer=pb.StreamRequest.SerializeToString,
                                 response_deserializer=pb.StreamChunk.FromString)
        calls = [stream(pb.StreamRequest(count=0, size=CHUNK), timeout=30) for _ in range(8)]
        try:
            for call in calls:
                next(call)
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                peak = max(peak, gateway.rss_kib())
                time.sleep(0.1)
        finally:
            for call in calls:
                call.cancel()
    assert peak - baseline < RSS_BUDGET_KIB, f"RSS grew by {peak - baseline} KiB"
    assert_healthy(stubs, gateway)
