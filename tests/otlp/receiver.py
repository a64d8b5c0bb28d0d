"""A real OTLP trace receiver on loopback, for the gateway's trace-export test.

Serves OTLP/gRPC (TraceService.Export) and OTLP/HTTP protobuf (POST /v1/traces) on free
loopback ports (or those `--grpc-port=N` and `--http-port=N` name: a collector restarted), prints `listening grpc=PORT http=PORT` once both are up, then prints one JSON
line per received span: ids in hex, name, kind, attributes (string, int, bool, float, arrays of
those), the transport it came over, and the request's metadata header names. It decodes with
the official `opentelemetry-proto` bindings, so a malformed export fails here, not silently.
"""

import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

lock = threading.Lock()
# With --count-only (load tests): count spans, print only the total when stdin closes.
COUNT_ONLY = "--count-only" in sys.argv
received = [0]


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind is None:
        return None
    return getattr(v, kind)


def emit(request, transport, headers):
    if COUNT_ONLY:
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with lock:
            received[0] += n
        return
    for rs in request.resource_spans:
        resource = {a.key: value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                line = {
                    "transport": transport,
                    "headers": headers,
                    "service": resource.get("service.name"),
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "status": s.status.code,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "attributes": {a.key: value(a.value) for a in s.attributes},
                    "events": [e.name for e in s.events],
                }
                with lock:
                    sys.stdout.write(json.dumps(line) + "\n")
                    sys.stdout.flush()


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        names = sorted(k for k, _ in context.invocation_metadata())
        emit(request, "grpc", names)
        return trace_service_pb2.ExportTraceServiceResponse()


class Http(BaseHTTPRequestHandler):
    # Connections kept open between exports, as a collector's are.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        emit(request, "http", sorted(k.lower() for k in self.headers.keys()))
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def port(name):
    """The port `--NAME=N` names, else 0 (a free one)."""
    for arg in sys.argv[1:]:
        if arg.startswith(f"--{name}="):
            return int(arg.split("=", 1)[1])
    return 0


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    grpc_port = server.add_insecure_port(f"127.0.0.1:{port('grpc-port')}")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", port("http-port")), Http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    with lock:
        sys.stdout.write(f"listening grpc={grpc_port} http={http.server_address[1]}\n")
        sys.stdout.flush()
    # Until the test closes our stdin (or kills us).
    sys.stdin.read()
    if COUNT_ONLY:
        sys.stdout.write(f"spans {received[0]}\n")
        sys.stdout.flush()
    server.stop(0)
    http.shutdown()


if __name__ == "__main__":
    main()
