#!/usr/bin/python3
"""SSH ProxyCommand that bridges stdin/stdout to the gateway's ForwardTcp.

    forward_proxy.py --gateway 127.0.0.1:PORT --sandbox-id ID --token-file FILE \
                     --stubs-dir DIR [--tcp HOST:PORT] [--timeout SECONDS]

Opens ForwardTcp on a plaintext (h2c) gateway with an init frame for the
sandbox's built-in SSH server (or --tcp HOST:PORT inside the sandbox),
authorized by the SSH-session token read from FILE (kept off the command
line). Bytes read from stdin go out as data frames; end of stdin
half-closes the call; data frames received are written to stdout. Exits 0
when the gateway ends the stream with OK, 1 (with the status on stderr)
otherwise. --stubs-dir holds the Python modules generated from proto/.
"""

import argparse
import os
import queue
import sys
import threading
from pathlib import Path


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway", required=True, help="HOST:PORT of a plaintext gateway")
    p.add_argument("--sandbox-id", required=True)
    p.add_argument("--token-file", required=True, help="file holding the SSH-session token")
    p.add_argument("--stubs-dir", required=True, help="generated openshell_pb2 modules")
    p.add_argument("--tcp", help="HOST:PORT target inside the sandbox instead of SSH")
    p.add_argument("--timeout", type=float, default=300.0, help="bound on the whole call")
    args = p.parse_args(argv)
    if args.tcp is not None:
        host, sep, port = args.tcp.rpartition(":")
        if not sep or not host or not port.isdigit():
            p.error(f"--tcp wants HOST:PORT, got {args.tcp!r}")
        args.tcp = (host, int(port))
    return args


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def main(argv):
    args = parse_args(argv)
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as e:
        sys.stderr.write(f"forward_proxy: cannot read the token: {e}\n")
        return 1
    if not token:
        sys.stderr.write(f"forward_proxy: {args.token_file} is empty\n")
        return 1
    sys.path.insert(0, args.stubs_dir)
    import grpc
    import openshell_pb2 as pb
    import openshell_pb2_grpc as pb_grpc

    if args.tcp is None:
        init = pb.TcpForwardInit(sandbox_id=args.sandbox_id, authorization_token=token,
                                 ssh=pb.SshRelayTarget())
    else:
        init = pb.TcpForwardInit(sandbox_id=args.sandbox_id, authorization_token=token,
                                 tcp=pb.TcpRelayTarget(host=args.tcp[0], port=args.tcp[1]))

    # A small queue: a gateway that stops taking data stops the stdin reader.
    chunks = queue.Queue(maxsize=8)

    def read_stdin():
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            chunks.put(data if data else None)
            if not data:
                return

    def requests():
        yield pb.TcpForwardFrame(init=init)
        while True:
            data = chunks.get()
            if data is None:
                return
            yield pb.TcpForwardFrame(data=data)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    channel = grpc.insecure_channel(args.gateway)
    code = 0
    try:
        call = pb_grpc.OpenShellStub(channel).ForwardTcp(requests(), timeout=args.timeout)
        for frame in call:
            if frame.WhichOneof("payload") == "data" and frame.data:
                write_all(1, frame.data)
    except grpc.RpcError as e:
        sys.stderr.write(f"forward_proxy: ForwardTcp failed: {e.code().name}: {e.details()}\n")
        code = 1
    except BrokenPipeError:
        code = 1
    finally:
        channel.close()
    try:
        os.close(1)
    except OSError:
        pass
    return code


if __name__ == "__main__":
    # os._exit: the stdin reader may still be blocked in read().
    status = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(status)
