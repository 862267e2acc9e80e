#!/usr/bin/python3
"""A MySQL-8-like test server for caching_sha2_password: a fixture, not a database.

No MySQL 8 server can be installed here (MariaDB 10.11 has no caching_sha2_password
server plugin; there is no docker engine and no network), so the MySQL tests of
caching_sha2_password's full authentication over plain TCP talk to this.

What it does, as MySQL 8.0 does it (sql/auth/sha2_password.cc):
  * greets with handshake v10, a fresh 20-byte scramble and `caching_sha2_password`
    (no TLS offered: every connection is plain TCP); an auth switch to it when a client
    answers with another plugin;
  * fast authentication: when the user's SHA256(SHA256(password)) is in its in-memory
    cache, the client's scramble SHA256(p) XOR SHA256(SHA256(SHA256(p)) + scramble) is
    checked against it: 0x01 0x03 then OK (a mismatch falls through to full
    authentication, as MySQL's does);
  * otherwise full authentication (0x01 0x04): a 0x02 from the client is answered
    0x01 + the PEM public key; the next packet is RSA-OAEP(SHA-1) decrypted with the
    private key, XORed with the scramble, and must be the password + NUL: OK (and the
    cache filled), else ERR 1045;
  * after that, COM_QUERY answers `SELECT a, b, ...` with one text row (integers and
    quoted strings as themselves, CURRENT_USER() as user@%, anything else as its own
    text), SET/USE/other statements with OK; COM_PING and COM_INIT_DB with OK; COM_QUIT
    closes; other commands get ERR 1047.

Limits (what a real server does and this does not): no TLS, no SQL, no databases or
privileges, one user, no CLIENT_DEPRECATE_EOF, no prepared statements, no multi-packet
(16 MiB) payloads. The cache lives in the process: starting it again is a server restart
with a cold cache.

Usage: caching_sha2_server.py --port N --key private.pem --user U --password-file F
       --log events.jsonl
Prints "ready <port>" on stdout once listening; one JSON line per authentication in
the log: {"user", "plugin", "auth": "fast"|"full"|"full_key_requested"|..., "ok"}.
"""
import argparse
import hashlib
import json
import os
import re
import socket
import socketserver
import struct
import sys
import threading

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

CLIENT_LONG_PASSWORD = 1
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC = 1 << 21
CAPABILITIES = (CLIENT_LONG_PASSWORD | CLIENT_FOUND_ROWS | CLIENT_LONG_FLAG
                | CLIENT_CONNECT_WITH_DB | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS
                | CLIENT_SECURE_CONNECTION | CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS
                | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_ATTRS | CLIENT_PLUGIN_AUTH_LENENC)
PLUGIN = b"caching_sha2_password"
SERVER_STATUS_AUTOCOMMIT = 2


class Closed(Exception):
    pass


class Conn:
    """Packet IO with sequence ids."""

    def __init__(self, sock):
        self.sock = sock
        self.seq = 0

    def read_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise Closed()
            out += chunk
        return out

    def read(self):
        head = self.read_exact(4)
        length = head[0] | head[1] << 8 | head[2] << 16
        self.seq = (head[3] + 1) & 0xFF
        return self.read_exact(length)

    def write(self, payload):
        n = len(payload)
        self.sock.sendall(bytes([n & 0xFF, (n >> 8) & 0xFF, n >> 16, self.seq]) + payload)
        self.seq = (self.seq + 1) & 0xFF


def lenenc_int(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def lenenc_str(b):
    return lenenc_int(len(b)) + b


def read_lenenc(buf, pos):
    first = buf[pos]
    if first < 251:
        return first, pos + 1
    if first == 0xFC:
        return struct.unpack_from("<H", buf, pos + 1)[0], pos + 3
    if first == 0xFD:
        return int.from_bytes(buf[pos + 1:pos + 4], "little"), pos + 4
    if first == 0xFE:
        return struct.unpack_from("<Q", buf, pos + 1)[0], pos + 9
    raise ValueError("bad length-encoded integer")


def ok_packet():
    return b"\x00\x00\x00" + struct.pack("<HH", SERVER_STATUS_AUTOCOMMIT, 0)


def err_packet(code, state, message):
    return b"\xff" + struct.pack("<H", code) + b"#" + state + message.encode()


def eof_packet():
    return b"\xfe" + struct.pack("<HH", 0, SERVER_STATUS_AUTOCOMMIT)


def sha256(b):
    return hashlib.sha256(b).digest()


def xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


class State:
    def __init__(self, user, password, private_key, public_pem, log):
        self.user = user
        self.password = password
        self.private_key = private_key
        self.public_pem = public_pem
        self.log_path = log
        self.cache = {}  # user -> SHA256(SHA256(password)), filled by full authentication
        self.lock = threading.Lock()
        self.next_id = 1

    def log(self, **event):
        with self.lock:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(event) + "\n")


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        st = self.server.state
        conn = Conn(self.request)
        try:
            user = self.authenticate(conn, st)
            if user is not None:
                self.commands(conn, user)
        except (Closed, ConnectionError):
            pass

    def authenticate(self, conn, st):
        scramble = bytes(0x21 + b % 90 for b in os.urandom(20))
        with st.lock:
            conn_id = st.next_id
            st.next_id += 1
        greeting = (b"\x0a" + b"8.0.36-nhi-fixture\x00" + struct.pack("<I", conn_id)
                    + scramble[:8] + b"\x00" + struct.pack("<H", CAPABILITIES & 0xFFFF)
                    + bytes([255]) + struct.pack("<H", SERVER_STATUS_AUTOCOMMIT)
                    + struct.pack("<H", CAPABILITIES >> 16) + bytes([21]) + b"\x00" * 10
                    + scramble[8:] + b"\x00" + PLUGIN + b"\x00")
        conn.write(greeting)
        resp = conn.read()
        caps = struct.unpack_from("<I", resp, 0)[0]
        pos = 32
        end = resp.index(b"\x00", pos)
        user = resp[pos:end].decode()
        pos = end + 1
        if caps & CLIENT_PLUGIN_AUTH_LENENC:
            n, pos = read_lenenc(resp, pos)
        else:
            n, pos = resp[pos], pos + 1
        answer = resp[pos:pos + n]
        pos += n
        if caps & CLIENT_CONNECT_WITH_DB and pos < len(resp):
            pos = resp.index(b"\x00", pos) + 1
        plugin = b""
        if caps & CLIENT_PLUGIN_AUTH and pos < len(resp):
            end = resp.find(b"\x00", pos)
            plugin = resp[pos:end if end >= 0 else len(resp)]
        if plugin != PLUGIN:
            conn.write(b"\xfe" + PLUGIN + b"\x00" + scramble + b"\x00")
            answer = conn.read()

        def deny(how):
            st.log(user=user, plugin=plugin.decode(), auth=how, ok=False)
            conn.write(err_packet(1045, b"28000",
                                  "Access denied for user '%s'@'127.0.0.1' (using password: %s)"
                                  % (user, "YES" if answer else "NO")))
            return None

        if user != st.user:
            return deny("unknown_user")
        stage2 = sha256(sha256(st.password))
        with st.lock:
            cached = st.cache.get(user)
        if not answer:
            return deny("empty")
        if cached is not None:
            # Fast authentication: SHA256(p) = answer XOR SHA256(stage2 + scramble), and
            # SHA256 of that must be the cached stage2. A mismatch is not a refusal: as
            # MySQL does, the server asks for the password itself (full authentication).
            stage1 = xor(answer, sha256(cached + scramble))
            if sha256(stage1) == cached:
                conn.write(b"\x01\x03")
                conn.write(ok_packet())
                st.log(user=user, plugin=plugin.decode(), auth="fast", ok=True)
                return user
        conn.write(b"\x01\x04")
        how = "full"
        packet = conn.read()
        if packet == b"\x02":
            how = "full_key_requested"
            conn.write(b"\x01" + st.public_pem)
            packet = conn.read()
        try:
            clear = st.private_key.decrypt(packet, padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
        except ValueError:
            return deny(how + "_undecryptable")
        password = bytes(c ^ scramble[i % len(scramble)] for i, c in enumerate(clear))
        if password != st.password + b"\x00":
            return deny(how)
        with st.lock:
            st.cache[user] = stage2
        conn.write(ok_packet())
        st.log(user=user, plugin=plugin.decode(), auth=how, ok=True)
        return user

    def commands(self, conn, user):
        while True:
            packet = conn.read()
            if not packet:
                return
            command, body = packet[0], packet[1:]
            if command == 0x01:  # COM_QUIT
                return
            if command in (0x0e, 0x02):  # COM_PING, COM_INIT_DB
                conn.write(ok_packet())
            elif command == 0x03:  # COM_QUERY
                self.query(conn, user, body.decode(errors="replace"))
            else:
                conn.write(err_packet(1047, b"08S01", "Unknown command"))

    def query(self, conn, user, sql):
        m = re.match(r"\s*select\s+(.*?)\s*(limit\s+\d+\s*)?;?\s*$", sql, re.I | re.S)
        if not m:
            conn.write(ok_packet())
            return
        exprs = [e.strip() for e in re.findall(r"'[^']*'|[^,]+", m.group(1))]
        exprs = [e for e in exprs if e]
        values = []
        for e in exprs:
            if re.fullmatch(r"-?\d+", e):
                values.append(e.encode())
            elif len(e) >= 2 and e[0] == e[-1] == "'":
                values.append(e[1:-1].encode())
            elif e.lower() == "current_user()":
                values.append(("%s@%%" % user).encode())
            else:
                values.append(e.encode())
        conn.write(lenenc_int(len(exprs)))
        for e in exprs:
            name = e.encode()
            conn.write(lenenc_str(b"def") + lenenc_str(b"") * 3 + lenenc_str(name)
                       + lenenc_str(b"") + b"\x0c" + struct.pack("<HIBHB", 255, 1024, 0xFD, 0, 0)
                       + b"\x00\x00")
        conn.write(eof_packet())
        conn.write(b"".join(lenenc_str(v) for v in values))
        conn.write(eof_packet())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    with open(args.key, "rb") as f:
        private_key = serialization.load_pem_private_key(f.read(), password=None)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with open(args.password_file, "rb") as f:
        password = f.read().rstrip(b"\n")
    state = State(args.user, password, private_key, public_pem, args.log)
    server = Server(("127.0.0.1", args.port), Handler)
    server.state = state
    print("ready %d" % args.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
