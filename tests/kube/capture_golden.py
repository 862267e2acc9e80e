#!/usr/bin/env python3
"""Captures the requests the real kubectl sends for a set of commands, against the fake
API server (apiserver.py, started here with its own test CA and a token), into
testdata/kubectl-requests.jsonl: one JSON object per request, in the order the server
answered them, each naming the command that sent it. Every command runs with an empty
HOME and a fresh --cache-dir, so each one does its discovery as a first run does.

Usage: python3 tests/kube/capture_golden.py [--out FILE] [--kubectl PATH]
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "golden-capture-token"

# (environment, arguments, stdin): in this order, against one server.
COMMANDS = [
    ({}, ["get", "pods", "-n", "prod"], None),
    ({}, ["get", "secret", "db-creds", "-n", "prod", "-o", "yaml"], None),
    ({}, ["get", "secrets", "-A"], None),
    ({}, ["get", "pods", "-n", "prod", "-w"], None),
    ({}, ["get", "deployments", "-n", "prod"], None),
    ({}, ["delete", "deployment", "web", "-n", "prod"], None),
    ({}, ["create", "secret", "generic", "x", "--from-literal=a=b", "-n", "staging"], None),
    ({}, ["exec", "web-0", "-n", "prod", "--", "sh", "-c", "id; cat /etc/hostname"], None),
    ({"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"},
     ["exec", "web-0", "-n", "prod", "--", "sh", "-c", "id; cat /etc/hostname"], None),
    ({}, ["exec", "-i", "web-0", "-n", "prod", "--", "cat"], b"hello\n"),
    ({"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"},
     ["exec", "-i", "web-0", "-n", "prod", "--", "cat"], b"hello\n"),
    ({}, ["logs", "web-0", "-n", "prod"], None),
    ({}, ["api-resources"], None),
    ({}, ["auth", "can-i", "get", "secrets", "-n", "prod"], None),
    ({}, ["auth", "whoami"], None),
]


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(d, "req", "-x509", *ec, "-days", "2", "-subj", "/CN=nhi-test-kube-ca",
            "-keyout", "ca.key", "-out", "ca.crt", "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl(d, "req", *ec, "-subj", "/CN=kubernetes.default.svc", "-keyout", "server.key",
            "-out", "server.csr")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\n")
    openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def golden_line(command, r):
    h = r["headers"]
    protocols = h.get("sec-websocket-protocol") or h.get("x-stream-protocol-version")
    return {
        "command": command,
        "method": r["method"],
        "path": r["path"],
        "query": r["query"],
        "accept": h.get("accept"),
        "content_type": h.get("content-type"),
        "upgrade": h.get("upgrade"),
        "protocols": [p.strip() for p in protocols.split(",")] if protocols else None,
        "user_agent_product": h.get("user-agent", "").split("/")[0] or None,
        "status": r["status"],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "testdata", "kubectl-requests.jsonl"))
    p.add_argument("--kubectl", default="/usr/bin/kubectl")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        make_certs(d)
        port = free_port()
        record = os.path.join(d, "requests.jsonl")
        kubeconfig = os.path.join(d, "kubeconfig")
        with open(kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config",
                       "clusters": [{"name": "golden", "cluster": {
                           "server": f"https://127.0.0.1:{port}",
                           "certificate-authority": os.path.join(d, "ca.crt")}}],
                       "users": [{"name": "golden", "user": {"token": TOKEN}}],
                       "contexts": [{"name": "golden", "context": {
                           "cluster": "golden", "user": "golden", "namespace": "default"}}],
                       "current-context": "golden"}, f)
        server = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "apiserver.py"), "--port", str(port),
             "--cert", os.path.join(d, "server.crt"), "--key", os.path.join(d, "server.key"),
             "--token", TOKEN, "--record", record, "--watch-timeout", "1"],
            stdout=subprocess.DEVNULL)
        try:
            deadline = time.time() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        sys.exit("the fake API server did not start")
                    time.sleep(0.05)
            lines, seen = [], 0
            for n, (env, argv, stdin) in enumerate(COMMANDS):
                home = os.path.join(d, f"home-{n}")
                os.mkdir(home)
                environ = dict(os.environ, HOME=home, **env)
                environ.pop("KUBECONFIG", None)
                out = subprocess.run(
                    [args.kubectl, "--kubeconfig", kubeconfig, "--cache-dir",
                     os.path.join(home, "cache"), *argv],
                    input=stdin or b"", env=environ, capture_output=True, timeout=60)
                command = " ".join([f"{k}={v}" for k, v in env.items()] + ["kubectl"]
                                   + [shlex.quote(a) for a in argv])
                if out.returncode != 0:
                    sys.exit(f"{command}: exit {out.returncode}: {out.stderr.decode()}")
                # The server records a request before answering it: once kubectl has
                # returned, all it asked is in the record.
                with open(record) as f:
                    recorded = [json.loads(l) for l in f]
                lines += [golden_line(command, r) for r in recorded[seen:]]
                seen = len(recorded)
        finally:
            server.kill()
            server.wait()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    print(f"{len(lines)} requests of {len(COMMANDS)} commands written to {args.out}")


if __name__ == "__main__":
    main()
