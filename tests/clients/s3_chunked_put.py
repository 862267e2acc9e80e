"""PUT an object with a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body (aws-chunked, every
chunk signed), as the AWS SDKs for Java and Go and MinIO clients send over plain HTTP,
written from the specification (no SDK sends it from Python), streamed in pieces.

usage: s3_chunked_put.py URL KEY_ID SECRET SIZE [--tamper N] [--ca FILE]
URL is https://host:port/bucket/key; the body is SIZE bytes of a fixed pattern; with
--tamper N, one byte of chunk N (1-based) is changed after it was signed; with
--die-after N, the client exits abruptly after N chunks (the kernel closes its socket,
as when it is killed).
Prints the HTTP status, the SHA-256 of the body sent, and the response body.
"""
import argparse
import datetime
import hashlib
import hmac
import http.client
import os
import random
import ssl
import sys
import urllib.parse

CHUNK = 64 * 1024
EMPTY = hashlib.sha256(b"").hexdigest()


def hmac256(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def pattern(size):
    return random.Random(size).randbytes(size)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("key_id")
    p.add_argument("secret")
    p.add_argument("size", type=int)
    p.add_argument("--tamper", type=int, default=0)
    p.add_argument("--die-after", type=int, default=0,
                   help="exit abruptly (as if killed) after sending this many chunks")
    p.add_argument("--ca")
    a = p.parse_args()
    u = urllib.parse.urlsplit(a.url)
    host = u.netloc
    region, service = "us-east-1", "s3"
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    scope = f"{day}/{region}/{service}/aws4_request"
    data = pattern(a.size)
    pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] + [b""]
    length = sum(len(f"{len(c):x};chunk-signature=") + 64 + 2 + len(c) + 2 for c in pieces)
    headers = {
        "content-encoding": "aws-chunked",
        "content-length": str(length),
        "host": host,
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amz-date": amz_date,
        "x-amz-decoded-content-length": str(a.size),
    }
    names = sorted(headers)
    canonical = "\n".join([
        "PUT",
        u.path,
        "",
        "".join(f"{n}:{headers[n]}\n" for n in names),
        ";".join(names),
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    ])
    to_sign = "\n".join([
        "AWS4-HMAC-SHA256", amz_date, scope,
        hashlib.sha256(canonical.encode()).hexdigest(),
    ])
    key = hmac256(hmac256(hmac256(hmac256(("AWS4" + a.secret).encode(), day), region), service), "aws4_request")
    seed = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={a.key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={seed}"
    )

    def body():
        previous = seed
        for n, chunk in enumerate(pieces, 1):
            string = "\n".join([
                "AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY,
                hashlib.sha256(chunk).hexdigest(),
            ])
            previous = hmac.new(key, string.encode(), hashlib.sha256).hexdigest()
            if n == a.tamper and chunk:
                chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
            yield f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk + b"\r\n"

    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=a.ca)
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=120)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.putrequest("PUT", u.path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    try:
        for n, piece in enumerate(body(), 1):
            conn.send(piece)
            if n == a.die_after:
                os._exit(9)
        response = conn.getresponse()
        print(response.status)
        print(hashlib.sha256(data).hexdigest())
        print(response.read().decode(errors="replace"))
    except OSError as e:
        # The agent (or the server) closed the connection before the body was sent.
        print(0)
        print(hashlib.sha256(data).hexdigest())
        print(f"connection: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
