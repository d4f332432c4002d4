"""A real gRPC server and client (grpcio) for the proxy's interop test, without generated code:
raw-bytes methods through generic handlers.

  python3 grpc_interop.py serve             prints the port it listens on, serves until killed
  python3 grpc_interop.py call TARGET AUTH  calls through TARGET with :authority AUTH; exit 0 if
                                            every check passed
"""

import sys
from concurrent import futures

import grpc

SERVICE = "trellis.test.Echo"


def say(request, context):
    return b"hello " + request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())


def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()


def serve():
    identity = lambda b: b
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say, identity, identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, identity, identity),
        "Count": grpc.unary_stream_rpc_method_handler(count, identity, identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(target, authority):
    identity = lambda b: b
    with grpc.insecure_channel(target, options=[("grpc.default_authority", authority)]) as channel:
        say_rpc = channel.unary_unary(f"/{SERVICE}/Say", identity, identity)
        fail_rpc = channel.unary_unary(f"/{SERVICE}/Fail", identity, identity)
        count_rpc = channel.unary_stream(f"/{SERVICE}/Count", identity, identity)
        assert say_rpc(b"trellis", timeout=10) == b"hello trellis"
        try:
            fail_rpc(b"x", timeout=10)
            raise AssertionError("Fail did not fail")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
            assert e.details() == "no such thing: x", e.details()
        assert [m for m in count_rpc(b"5", timeout=10)] == [b"0", b"1", b"2", b"3", b"4"]
    print("ok", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(sys.argv[2], sys.argv[3])
