"""A test site's server, uploaded into sandboxes and run there with the system's python3 (stdlib
only): what the gateway must pass through as it is.

- `/` and `/page`: a small Thai page; `/headers`: the request's headers as JSON (with cookies
  set for the host and for a parent domain)
- `/gz`: a gzip-compressed body (`content-encoding: gzip`); `/bytes`: 0..255 × 64 with `Range`
- `/slow`: one chunk, then the rest only once the file `release` exists in the working directory
- `POST /upload`: reads the body in 64 KiB pieces, writing the count read so far to `received`,
  answers the total and its SHA-256
- `/redirect`: a redirect to its own absolute address (from `Host`); `/exit`: the server exits
- `/ws`: a WebSocket echo (subprotocols `echo`/`other`: the first offered wins); a text `close`
  makes it close with code 4001
Listens on 127.0.0.1:$PORT.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import struct
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = "<!doctype html><meta charset=utf-8><title>site</title><h1>บ้านกาแฟ site</h1>\n".encode()
BYTES = bytes(range(256)) * 64
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def send_body(self, status: int, body: bytes, kind: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.path == "/ws":
            self.websocket()
        elif self.path in ("/", "/page"):
            self.send_body(200, PAGE, "text/html; charset=utf-8", {"Cache-Control": "max-age=60"})
        elif self.path == "/headers":
            seen = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(seen)))
            self.send_header("Set-Cookie", "planted=1; Domain=.preview.localhost; Path=/")
            self.send_header("Set-Cookie", "own=2; Path=/")
            self.send_header("Connection", "X-Upstream-Only")
            self.send_header("X-Upstream-Only", "hop")
            self.end_headers()
            self.wfile.write(seen)
        elif self.path == "/exit":
            self.send_body(200, b"bye", "text/plain", {})
            self.wfile.flush()
            os._exit(0)
        elif self.path == "/gz":
            self.send_body(200, gzip.compress(PAGE * 50), "text/html", {"Content-Encoding": "gzip"})
        elif self.path == "/bytes":
            self.ranged()
        elif self.path == "/slow":
            self.slow()
        elif self.path == "/redirect":
            here = f"http://{self.headers['Host']}/page"
            self.send_body(302, b"", "text/plain", {"Location": here})
        else:
            self.send_body(404, b"no such page", "text/plain", {})

    def ranged(self) -> None:
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes="):
            start, end = (int(x) for x in wanted[6:].split("-"))
            part = BYTES[start : end + 1]
            extra = {"Content-Range": f"bytes {start}-{end}/{len(BYTES)}", "Accept-Ranges": "bytes"}
            self.send_body(206, part, "application/octet-stream", extra)
        else:
            self.send_body(200, BYTES, "application/octet-stream", {"Accept-Ranges": "bytes"})

    def slow(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece, wait in ((b"first\n", False), (b"second\n", True)):
            while wait and not os.path.exists("release"):
                time.sleep(0.02)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def pieces(self) -> Iterator[bytes]:
        """The request body as it arrives (a length, or chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                yield self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return
        left = int(self.headers.get("Content-Length", "0"))
        while left and (chunk := self.rfile.read(min(left, 65536))):
            left -= len(chunk)
            yield chunk

    def do_POST(self) -> None:
        digest, total = hashlib.sha256(), 0
        for chunk in self.pieces():
            digest.update(chunk)
            total += len(chunk)
            with open("received.tmp", "w") as f:
                f.write(str(total))
            os.replace("received.tmp", "received")
        body = json.dumps({"bytes": total, "sha256": digest.hexdigest()}).encode()
        self.send_body(200, body, "application/json", {})

    # --- a minimal WebSocket echo (RFC 6455) ----------------------------------------------------

    def websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"]
        digest = hashlib.sha1((key + WS_GUID).encode()).digest()  # noqa: S324 (RFC 6455)
        accept = base64.b64encode(digest).decode()
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        if offered[0]:
            self.send_header("Sec-WebSocket-Protocol", offered[0])
        self.end_headers()
        self.wfile.flush()
        while True:
            opcode, payload = self.read_frame()
            if opcode == 8:
                self.write_frame(8, payload[:2] or struct.pack("!H", 1000))
                return
            if opcode == 9:
                self.write_frame(10, payload)
            elif opcode == 1 and payload == b"close":
                self.write_frame(8, struct.pack("!H", 4001) + b"asked to")
                return
            elif opcode in (1, 2):
                self.write_frame(opcode, payload)

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self.rfile.read(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self.rfile.read(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if second & 0x80 else b"\0\0\0\0"
        data = self.rfile.read(size)
        return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    def write_frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        if len(payload) < 126:
            head += bytes([len(payload)])
        elif len(payload) < 65536:
            head += bytes([126]) + struct.pack("!H", len(payload))
        else:
            head += bytes([127]) + struct.pack("!Q", len(payload))
        self.wfile.write(head + payload)
        self.wfile.flush()


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
