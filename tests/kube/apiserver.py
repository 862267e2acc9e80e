#!/usr/bin/env python3
"""A fake kube-apiserver for nhi-agent's Kubernetes tests (Python 3 standard library only).

No real Kubernetes API server can be installed on the test machines, so this one answers
what the real `kubectl` (1.32) asks of a cluster, the way the Kubernetes API reference and
the real server answer it, over HTTPS (HTTP/1.1; ALPN offers only http/1.1):

- authentication: a bearer token (`--token`), a client certificate signed by
  `--client-ca` (requested, not required), or nobody when neither is configured;
  anything else is a 401 `Status`;
- discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`, as
  aggregated discovery (`apidiscovery.k8s.io/v2`) when the client asks for it, as kubectl
  1.32 does and a 1.32 server answers, and in the legacy format otherwise;
- objects in memory (namespaces, pods, secrets, configmaps, deployments), seeded with a
  small cluster: get, list (label and field selectors), watch (chunked newline-delimited
  events), create, update, merge patch, delete, deletecollection; request bodies in JSON
  or in Kubernetes protobuf (kubectl's typed clients send protobuf); server-side printing
  (`meta.k8s.io/v1 Table`) when the client asks for it; errors as `Status` objects;
- `pods/log`, `deployments/scale`, `selfsubjectreviews` (`kubectl auth whoami`) and
  `selfsubjectaccessreviews` (`kubectl auth can-i`, always allowed);
- `pods/exec` over WebSocket (`v5.channel.k8s.io` and older channel protocols) and over
  SPDY/3.1 (`v4.channel.k8s.io` and older), running the command for real on this host
  (its output, stdin and exit status are genuine);
- `pods/attach` over the same transports and protocols: the client joins the main
  process of the container, a real cat-like process started when the container is first
  attached to and kept running across attaches (see MainProcess: it echoes its stdin to
  stdout and counts lines on stderr);
- `pods/portforward` over SPDY/3.1 (`portforward.k8s.io`) and over SPDY/3.1 tunnelled in
  WebSocket (subprotocol `SPDY/3.1+portforward.k8s.io`, kubectl's default since 1.31),
  each forwarded connection connected for real to the loopback port `--pod-port
  PORT=HOSTPORT` maps the pod's port to (the same mapping for every pod; an unmapped
  port refuses, as a pod where nothing listens).

Every request is recorded as one JSON line in `--record` (flushed per line): method,
path, raw query, all headers (lowercase names; repeated headers joined with ", "), body
(text, first 64 KiB; a protobuf body also decoded, as `body_decoded`), the
authenticated identity and how, impersonation headers, the status answered, and for exec
the command, transport, subprotocol, stdin received, stdout/stderr produced and exit
code, for attach the transport, subprotocol, the main process (pid, whether this attach
started it), stdin received, stdout/stderr sent and how the attach ended, and for
port-forward the transport, protocol, the ports and streams the client opened, and per
forwarded connection its port, where it went, the bytes each way (and their text, first
64 KiB) and how it ended. A request is recorded before its answer leaves (a watch when
it starts, an exec once its command has exited, an attach once it ends, before the
status goes out): a client that has its answer finds its request on record. A
port-forward, whose answer is the whole connection, is recorded when that connection
has ended.

Where it differs from a real server: answers are always JSON (never protobuf, even to a
client that prefers it; kubectl accepts JSON); a client certificate not signed by
`--client-ca` fails the TLS handshake (Python's ssl module verifies during the
handshake) where a real server answers 401; everything authenticated is authorized;
deletion is immediate (pods and namespaces are answered with the object, marked for
deletion, as the real server does, but are gone at once); strategic merge patches are
applied as JSON merge patches; a watch without `timeoutSeconds` ends after
`--watch-timeout` (5 s) rather than 30 to 60 minutes; an attach whose client closes
stdin is detached once the main process has answered all it was sent (containerd
detaches it at once, racing the answer); port-forward over plain WebSocket is not served
(the kubelet's channel protocols, which need `ports=` in the query: no kubectl speaks
them); a forwarded connection whose client closes its side has its pod connection shut
down for writing (containerd closes it after at most 1 s; here the pod sees the
half-close, and the close follows at most 1 s later).

Usage: apiserver.py --port P [--host H] --cert F --key F [--client-ca F] [--token T]
                    --record FILE [--watch-timeout SECONDS] [--legacy-discovery]
                    [--pod-port PORT=HOSTPORT ...]
"""

import argparse
import base64
import calendar
import copy
import errno
import fcntl
import hashlib
import http.server
import json
import os
import pty
import queue
import random
import select
import socket
import ssl
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.parse
import uuid
import zlib

ARGS = None
START = time.time()

# --------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


class Resource:
    """One API resource: what discovery says about it and how its objects look."""

    def __init__(self, group, version, plural, kind, singular, namespaced, verbs,
                 short=(), categories=(), subresources=()):
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.singular = singular
        self.namespaced = namespaced
        self.verbs = list(verbs)
        self.short = list(short)
        self.categories = list(categories)
        # (name, group, version, kind, verbs)
        self.subresources = list(subresources)

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self):
        """How error messages name the resource: `secrets`, `deployments.apps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def details(self, name):
        d = {"name": name}
        if self.group:
            d["group"] = self.group
        d["kind"] = self.plural
        return d


RESOURCES = [
    Resource("", "v1", "namespaces", "Namespace", "namespace", False,
             ["create", "delete", "get", "list", "patch", "update", "watch"], short=["ns"],
             subresources=[("finalize", "", "v1", "Namespace", ["update"]),
                           ("status", "", "v1", "Namespace", ["get", "patch", "update"])]),
    Resource("", "v1", "pods", "Pod", "pod", True, ALL_VERBS, short=["po"], categories=["all"],
             subresources=[("attach", "", "v1", "PodAttachOptions", ["create", "get"]),
                           ("exec", "", "v1", "PodExecOptions", ["create", "get"]),
                           ("log", "", "v1", "Pod", ["get"]),
                           ("portforward", "", "v1", "PodPortForwardOptions", ["create", "get"]),
                           ("status", "", "v1", "Pod", ["get", "patch", "update"])]),
    Resource("", "v1", "secrets", "Secret", "secret", True, ALL_VERBS),
    Resource("", "v1", "configmaps", "ConfigMap", "configmap", True, ALL_VERBS, short=["cm"]),
    Resource("apps", "v1", "deployments", "Deployment", "deployment", True, ALL_VERBS,
             short=["deploy"], categories=["all"],
             subresources=[("scale", "autoscaling", "v1", "Scale", ["get", "patch", "update"]),
                           ("status", "apps", "v1", "Deployment", ["get", "patch", "update"])]),
    Resource("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview",
             "selfsubjectreview", False, ["create"]),
    Resource("authorization.k8s.io", "v1", "selfsubjectaccessreviews",
             "SelfSubjectAccessReview", "selfsubjectaccessreview", False, ["create"]),
]
GROUPS = ["apps", "authentication.k8s.io", "authorization.k8s.io"]


def find_resource(group, version, plural):
    for r in RESOURCES:
        if r.group == group and r.version == version and r.plural == plural:
            return r
    return None


def resource_named(plural):
    return next(r for r in RESOURCES if r.plural == plural)


# --------------------------------------------------------------------------------------
# Time and identifiers
# --------------------------------------------------------------------------------------


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_rfc3339(s):
    try:
        return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return time.time()


def human_duration(seconds):
    """apimachinery's duration.HumanDuration, as the real server prints ages."""
    seconds = int(seconds)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def age(obj):
    return human_duration(time.time() - parse_rfc3339(obj["metadata"].get("creationTimestamp")))


def b64(text):
    return base64.b64encode(text.encode()).decode()


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as a `Status` object."""

    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self):
        s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": self.message, "reason": self.reason}
        if self.details is not None:
            s["details"] = self.details
        s["code"] = self.code
        return s


def not_found(res, name):
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', res.details(name))


def bad_request(message):
    return ApiError(400, "BadRequest", message)


def no_such_path():
    return ApiError(404, "NotFound", "the server could not find the requested resource",
                    {})


def method_not_allowed():
    return ApiError(405, "MethodNotAllowed",
                    "the server does not allow this method on the requested resource", {})


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class Store:
    """Objects in memory, a global resourceVersion, and the event history watches read."""

    def __init__(self):
        self.cond = threading.Condition()
        self.rv = 1000
        self.objects = {}  # (plural, namespace or "", name) -> object
        self.events = []  # (rv, type, plural, namespace or "", object)

    def next_rv(self):
        self.rv += 1
        return str(self.rv)

    def current_rv(self):
        with self.cond:
            return str(self.rv)

    def _record(self, kind, res, obj):
        self.events.append((int(obj["metadata"]["resourceVersion"]), kind, res.plural,
                            obj["metadata"].get("namespace", ""), copy.deepcopy(obj)))
        self.cond.notify_all()

    def get(self, res, ns, name):
        with self.cond:
            obj = self.objects.get((res.plural, ns or "", name))
            if obj is None:
                raise not_found(res, name)
            return copy.deepcopy(obj)

    def list(self, res, ns):
        with self.cond:
            items = [copy.deepcopy(o) for (p, n, _), o in sorted(self.objects.items())
                     if p == res.plural and (ns is None or n == ns)]
            return items, str(self.rv)

    def namespace_exists(self, ns):
        with self.cond:
            return ("namespaces", "", ns) in self.objects

    def create(self, res, ns, obj, dry_run=False):
        with self.cond:
            meta = obj["metadata"]
            if res.namespaced and ("namespaces", "", ns) not in self.objects:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                               {"name": ns, "kind": "namespaces"})
            key = (res.plural, ns or "", meta["name"])
            if key in self.objects:
                raise ApiError(409, "AlreadyExists",
                               f'{res.qualified} "{meta["name"]}" already exists',
                               res.details(meta["name"]))
            if dry_run:
                meta["resourceVersion"] = ""
                return copy.deepcopy(obj)
            meta["resourceVersion"] = self.next_rv()
            self.objects[key] = obj
            self._record("ADDED", res, obj)
            return copy.deepcopy(obj)

    def replace(self, res, ns, name, obj):
        with self.cond:
            key = (res.plural, ns or "", name)
            old = self.objects.get(key)
            if old is None:
                raise not_found(res, name)
            want = obj["metadata"].get("resourceVersion")
            if want and want != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {res.qualified} "{name}": '
                               "the object has been modified; please apply your changes to "
                               "the latest version and try again", res.details(name))
            for field in ("uid", "creationTimestamp", "namespace", "name"):
                if field in old["metadata"]:
                    obj["metadata"][field] = old["metadata"][field]
            if obj.get("spec") != old.get("spec") and "generation" in old["metadata"]:
                obj["metadata"]["generation"] = old["metadata"]["generation"] + 1
            obj["metadata"]["resourceVersion"] = self.next_rv()
            self.objects[key] = obj
            self._record("MODIFIED", res, obj)
            return copy.deepcopy(obj)

    def delete(self, res, ns, name):
        with self.cond:
            key = (res.plural, ns or "", name)
            obj = self.objects.pop(key, None)
            if obj is None:
                raise not_found(res, name)
            obj["metadata"]["resourceVersion"] = self.next_rv()
            self._record("DELETED", res, obj)
            if res.plural == "namespaces":
                # The namespace controller's work, done at once.
                for k in [k for k in self.objects if k[1] == name and k[0] != "namespaces"]:
                    gone = self.objects.pop(k)
                    gone["metadata"]["resourceVersion"] = self.next_rv()
                    self._record("DELETED", resource_named(k[0]), gone)
            return copy.deepcopy(obj)


STORE = Store()


def new_meta(name, ns, created, uid=None, labels=None, annotations=None):
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    meta["uid"] = uid or str(uuid.uuid4())
    meta["resourceVersion"] = ""
    meta["creationTimestamp"] = rfc3339(created)
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return meta


def fixed_uid(*parts):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "nhi-test-kube/" + "/".join(parts)))


def pod_object(name, ns, containers, created, labels=None, uid=None):
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": new_meta(name, ns, created, uid, labels),
        "spec": {
            "containers": containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": "node-1",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": pod_status(containers, created),
    }


def pod_status(containers, created):
    started = rfc3339(created + 5)
    return {
        "phase": "Running",
        "conditions": [
            {"type": t, "status": "True", "lastProbeTime": None,
             "lastTransitionTime": started}
            for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                      "PodScheduled")
        ],
        "hostIP": "10.0.0.10",
        "hostIPs": [{"ip": "10.0.0.10"}],
        "podIP": "10.244.0.5",
        "podIPs": [{"ip": "10.244.0.5"}],
        "startTime": rfc3339(created + 1),
        "containerStatuses": [
            {"name": c.get("name", ""), "state": {"running": {"startedAt": started}},
             "lastState": {}, "ready": True, "restartCount": 0,
             "image": c.get("image", ""),
             "imageID": c.get("image", "") + "@sha256:" + hashlib.sha256(
                 c.get("image", "").encode()).hexdigest(),
             "containerID": "containerd://" + hashlib.sha256(
                 (c.get("name", "") + started).encode()).hexdigest(),
             "started": True}
            for c in containers
        ],
        "qosClass": "BestEffort",
    }


def container(name, image, port=None, stdin=False):
    c = {"name": name, "image": image}
    if port:
        c["ports"] = [{"containerPort": port, "protocol": "TCP"}]
    c.update({"resources": {}, "terminationMessagePath": "/dev/termination-log",
              "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"})
    if stdin:
        # The main process reads stdin (what an attach sends it); not once: it stays
        # open across attaches (`stdinOnce` false).
        c["stdin"] = True
    return c


def deployment_status(replicas, generation):
    return {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True",
             "lastUpdateTime": rfc3339(START), "lastTransitionTime": rfc3339(START),
             "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability."},
        ],
    }


def seed():
    day = 86400
    for ns in ("default", "prod", "staging"):
        STORE.create(resource_named("namespaces"), "", {
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": new_meta(ns, None, START - 10 * day, fixed_uid("ns", ns),
                                 {"kubernetes.io/metadata.name": ns}),
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        })
    STORE.create(resource_named("pods"), "prod", pod_object(
        "web-0", "prod", [container("app", "registry.example/web:1.0", 8080, stdin=True)],
        START - 2 * 3600, {"app": "web"}, fixed_uid("pod", "prod", "web-0")))
    STORE.create(resource_named("secrets"), "prod", {
        "kind": "Secret", "apiVersion": "v1",
        "metadata": new_meta("db-creds", "prod", START - 3 * day,
                             fixed_uid("secret", "prod", "db-creds")),
        "data": {"password": b64("s3cr3t-Pa55"), "username": b64("app")},
        "type": "Opaque",
    })
    STORE.create(resource_named("configmaps"), "prod", {
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": new_meta("app-config", "prod", START - 3 * day,
                             fixed_uid("configmap", "prod", "app-config")),
        "data": {"mode": "production"},
    })
    template = {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container("app", "registry.example/web:1.0", 8080)],
                         "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                         "dnsPolicy": "ClusterFirst", "securityContext": {},
                         "schedulerName": "default-scheduler"}}
    STORE.create(resource_named("deployments"), "prod", {
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": dict(new_meta("web", "prod", START - 3 * day,
                                  fixed_uid("deployment", "prod", "web"), {"app": "web"},
                                  {"deployment.kubernetes.io/revision": "1"}), generation=1),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template,
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
        "status": deployment_status(2, 1),
    })
    STORE.create(resource_named("secrets"), "default", {
        "kind": "Secret", "apiVersion": "v1",
        "metadata": new_meta("other", "default", START - 5 * day,
                             fixed_uid("secret", "default", "other")),
        "data": {"token": b64("other-token")},
        "type": "Opaque",
    })
    STORE.create(resource_named("pods"), "default", pod_object(
        "tool", "default", [container("app", "registry.example/tool:2.3", stdin=True)],
        START - 3600, {"app": "tool"}, fixed_uid("pod", "default", "tool")))


def complete_new_object(res, ns, obj):
    """What the real server fills in on create: metadata, defaults, and for pods and
    deployments the status their controllers would report."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        raise bad_request("the object has no metadata")
    if obj.get("kind") not in (None, "", res.kind):
        raise bad_request(f"the API version in the data ({obj.get('apiVersion')}) does not "
                          f"match the expected API version ({res.api_version})")
    obj["kind"] = res.kind
    obj["apiVersion"] = res.api_version
    meta = obj["metadata"]
    if not meta.get("name"):
        if meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        else:
            raise ApiError(422, "Invalid",
                           f'{res.kind} "" is invalid: metadata.name: Required value: name '
                           "or generateName is required",
                           {"kind": res.kind, "causes": [
                               {"reason": "FieldValueRequired",
                                "message": "Required value: name or generateName is required",
                                "field": "metadata.name"}]})
    if res.namespaced:
        if meta.get("namespace") not in (None, "", ns):
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        meta["namespace"] = ns
    else:
        meta.pop("namespace", None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = rfc3339(time.time())
    for drop in ("resourceVersion", "deletionTimestamp", "selfLink", "generation"):
        meta.pop(drop, None)
    if res.plural == "secrets":
        data = dict(obj.get("data") or {})
        for k, v in (obj.pop("stringData", None) or {}).items():
            data[k] = b64(v)
        obj["data"] = dict(sorted(data.items()))
        obj.setdefault("type", "Opaque")
    elif res.plural == "namespaces":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
    elif res.plural == "pods":
        spec = obj.setdefault("spec", {})
        spec.setdefault("containers", [])
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("nodeName", "node-1")
        obj["status"] = pod_status(spec["containers"], time.time())
    elif res.plural == "deployments":
        meta["generation"] = 1
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        obj["status"] = deployment_status(spec["replicas"], 1)
    return obj


# --------------------------------------------------------------------------------------
# Protobuf request bodies
# --------------------------------------------------------------------------------------
# kubectl's typed clients (`create secret`, `create configmap`, `create namespace`,
# `create deployment`, `auth whoami`, `auth can-i`, ...) send their bodies as Kubernetes
# protobuf (`application/vnd.kubernetes.protobuf`), which a real server accepts; answers
# stay JSON (those clients accept it too). The messages below are the ones those commands
# send, with their field numbers from k8s.io/api and k8s.io/apimachinery
# (generated.proto, v0.32): name -> {number: (json name, type, repeated)}. A type is a
# scalar, another message, or ("map", key type, value type).

PB = {
    "Unknown": {1: ("typeMeta", "RuntimeTypeMeta", False), 2: ("raw", "bytes", False),
                3: ("contentEncoding", "string", False), 4: ("contentType", "string", False)},
    "RuntimeTypeMeta": {1: ("apiVersion", "string", False), 2: ("kind", "string", False)},
    "ObjectMeta": {1: ("name", "string", False), 2: ("generateName", "string", False),
                   3: ("namespace", "string", False), 4: ("selfLink", "string", False),
                   5: ("uid", "string", False), 6: ("resourceVersion", "string", False),
                   7: ("generation", "int64", False), 8: ("creationTimestamp", "Time", False),
                   9: ("deletionTimestamp", "Time", False),
                   10: ("deletionGracePeriodSeconds", "int64", False),
                   11: ("labels", ("map", "string", "string"), False),
                   12: ("annotations", ("map", "string", "string"), False),
                   13: ("ownerReferences", "OwnerReference", True),
                   14: ("finalizers", "string", True)},
    "OwnerReference": {5: ("apiVersion", "string", False), 1: ("kind", "string", False),
                       3: ("name", "string", False), 4: ("uid", "string", False),
                       6: ("controller", "bool", False),
                       7: ("blockOwnerDeletion", "bool", False)},
    "LabelSelector": {1: ("matchLabels", ("map", "string", "string"), False),
                      2: ("matchExpressions", "LabelSelectorRequirement", True)},
    "LabelSelectorRequirement": {1: ("key", "string", False), 2: ("operator", "string", False),
                                 3: ("values", "string", True)},
    "Secret": {1: ("metadata", "ObjectMeta", False), 5: ("immutable", "bool", False),
               2: ("data", ("map", "string", "bytes"), False),
               4: ("stringData", ("map", "string", "string"), False),
               3: ("type", "string", False)},
    "ConfigMap": {1: ("metadata", "ObjectMeta", False), 4: ("immutable", "bool", False),
                  2: ("data", ("map", "string", "string"), False),
                  3: ("binaryData", ("map", "string", "bytes"), False)},
    "Namespace": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "NamespaceSpec", False)},
    "NamespaceSpec": {1: ("finalizers", "string", True)},
    "Pod": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "PodSpec", False)},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "PodSpec", False)},
    "PodSpec": {20: ("initContainers", "Container", True), 2: ("containers", "Container", True),
                3: ("restartPolicy", "string", False),
                4: ("terminationGracePeriodSeconds", "int64", False),
                5: ("activeDeadlineSeconds", "int64", False), 6: ("dnsPolicy", "string", False),
                7: ("nodeSelector", ("map", "string", "string"), False),
                8: ("serviceAccountName", "string", False),
                9: ("serviceAccount", "string", False),
                21: ("automountServiceAccountToken", "bool", False),
                10: ("nodeName", "string", False), 11: ("hostNetwork", "bool", False),
                12: ("hostPID", "bool", False), 13: ("hostIPC", "bool", False),
                15: ("imagePullSecrets", "LocalObjectReference", True),
                16: ("hostname", "string", False), 17: ("subdomain", "string", False),
                19: ("schedulerName", "string", False),
                24: ("priorityClassName", "string", False),
                29: ("runtimeClassName", "string", False),
                30: ("enableServiceLinks", "bool", False),
                31: ("preemptionPolicy", "string", False)},
    "LocalObjectReference": {1: ("name", "string", False)},
    "Container": {1: ("name", "string", False), 2: ("image", "string", False),
                  3: ("command", "string", True), 4: ("args", "string", True),
                  5: ("workingDir", "string", False), 6: ("ports", "ContainerPort", True),
                  7: ("env", "EnvVar", True), 8: ("resources", "ResourceRequirements", False),
                  24: ("restartPolicy", "string", False),
                  13: ("terminationMessagePath", "string", False),
                  20: ("terminationMessagePolicy", "string", False),
                  14: ("imagePullPolicy", "string", False), 16: ("stdin", "bool", False),
                  17: ("stdinOnce", "bool", False), 18: ("tty", "bool", False)},
    "ContainerPort": {1: ("name", "string", False), 2: ("hostPort", "int32", False),
                      3: ("containerPort", "int32", False), 4: ("protocol", "string", False),
                      5: ("hostIP", "string", False)},
    "EnvVar": {1: ("name", "string", False), 2: ("value", "string", False)},
    "ResourceRequirements": {1: ("limits", ("map", "string", "Quantity"), False),
                             2: ("requests", ("map", "string", "Quantity"), False)},
    "Deployment": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "DeploymentSpec", False)},
    "DeploymentSpec": {1: ("replicas", "int32", False), 2: ("selector", "LabelSelector", False),
                       3: ("template", "PodTemplateSpec", False),
                       4: ("strategy", "DeploymentStrategy", False),
                       5: ("minReadySeconds", "int32", False),
                       6: ("revisionHistoryLimit", "int32", False),
                       7: ("paused", "bool", False),
                       9: ("progressDeadlineSeconds", "int32", False)},
    "DeploymentStrategy": {1: ("type", "string", False),
                           2: ("rollingUpdate", "RollingUpdateDeployment", False)},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "IntOrString", False),
                                2: ("maxSurge", "IntOrString", False)},
    "SelfSubjectReview": {1: ("metadata", "ObjectMeta", False)},
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta", False),
                                2: ("spec", "SelfSubjectAccessReviewSpec", False)},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes", False),
                                    2: ("nonResourceAttributes", "NonResourceAttributes",
                                        False)},
    "ResourceAttributes": {1: ("namespace", "string", False), 2: ("verb", "string", False),
                           3: ("group", "string", False), 4: ("version", "string", False),
                           5: ("resource", "string", False),
                           6: ("subresource", "string", False), 7: ("name", "string", False)},
    "NonResourceAttributes": {1: ("path", "string", False), 2: ("verb", "string", False)},
    "DeleteOptions": {1: ("gracePeriodSeconds", "int64", False),
                      3: ("orphanDependents", "bool", False),
                      4: ("propagationPolicy", "string", False),
                      5: ("dryRun", "string", True)},
}
PROTOBUF = "application/vnd.kubernetes.protobuf"


def pb_fields(data):
    """(field number, wire type, value) of each field of a protobuf message."""
    at = 0

    def varint():
        nonlocal at
        shift = value = 0
        while True:
            b = data[at]
            at += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 1:
            yield number, wire, data[at:at + 8]
            at += 8
        elif wire == 2:
            n = varint()
            yield number, wire, data[at:at + n]
            at += n
        elif wire == 5:
            yield number, wire, data[at:at + 4]
            at += 4
        else:
            raise ValueError(f"protobuf wire type {wire}")


def pb_scalar(typ, value):
    if typ == "string":
        return bytes(value).decode("utf-8", errors="replace")
    if typ == "bytes":
        return base64.b64encode(bytes(value)).decode()
    if typ == "bool":
        return bool(value)
    if typ in ("int32", "int64"):
        return value - (1 << 64) if value >= 1 << 63 else value
    if typ == "Time":
        t = pb_message("Time", value)
        return rfc3339(t.get("seconds", 0)) if t.get("seconds") else None
    if typ == "Quantity":
        return pb_message("Quantity", value).get("string", "")
    if typ == "IntOrString":
        v = pb_message("IntOrString", value)
        return v.get("strVal", "") if v.get("type") == 1 else v.get("intVal", 0)
    return pb_message(typ, value)


PB.update({
    "Time": {1: ("seconds", "int64", False), 2: ("nanos", "int32", False)},
    "Quantity": {1: ("string", "string", False)},
    "IntOrString": {1: ("type", "int64", False), 2: ("intVal", "int32", False),
                    3: ("strVal", "string", False)},
})


def pb_message(name, data):
    schema = PB.get(name, {})
    out = {}
    for number, _, value in pb_fields(bytes(data)):
        if number not in schema:
            continue
        field, typ, repeated = schema[number]
        if isinstance(typ, tuple):
            entry = dict((n, v) for n, _, v in pb_fields(bytes(value)))
            k = pb_scalar(typ[1], entry.get(1, b""))
            out.setdefault(field, {})[k] = pb_scalar(typ[2], entry.get(2, b""))
        elif repeated:
            out.setdefault(field, []).append(pb_scalar(typ, value))
        else:
            out[field] = pb_scalar(typ, value)
    return out


def prune(value):
    """Drops what gogo-protobuf writes for unset plain fields and JSON omits: empty
    strings, zero times, empty maps and lists."""
    if isinstance(value, dict):
        pruned = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ("", None, {}, [])}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def decode_protobuf(body):
    """A Kubernetes protobuf body (magic `k8s\\0`, then a runtime.Unknown) as JSON."""
    if body[:4] != b"k8s\x00":
        raise bad_request("the body of the request was in an unknown format")
    unknown = pb_message("Unknown", body[4:])
    meta = unknown.get("typeMeta", {})
    kind = meta.get("kind", "")
    if kind not in PB:
        raise ApiError(415, "UnsupportedMediaType",
                       f"the test API server cannot decode protobuf {kind!r}; send JSON", {})
    obj = {"kind": kind, "apiVersion": meta.get("apiVersion", "")}
    raw = base64.b64decode(unknown.get("raw", ""))
    obj.update(prune(pb_message(kind, raw)))
    obj.setdefault("metadata", {})
    return obj


# --------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------


def split_top(text):
    """Splits a selector on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_matcher(selector):
    reqs = []
    for part in split_top(selector or ""):
        words = part.split()
        if len(words) >= 2 and words[1] in ("in", "notin"):
            values = {v.strip() for v in " ".join(words[2:]).strip("() ").split(",")}
            key, op = words[0], words[1]
            reqs.append(lambda l, k=key, o=op, vs=values: (l.get(k) in vs) == (o == "in"))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(lambda l, k=k.strip(), v=v.strip(): l.get(k) != v)
        elif "==" in part or "=" in part:
            k, v = part.split("==", 1) if "==" in part else part.split("=", 1)
            reqs.append(lambda l, k=k.strip(), v=v.strip(): l.get(k) == v)
        elif part.startswith("!"):
            reqs.append(lambda l, k=part[1:].strip(): k not in l)
        else:
            reqs.append(lambda l, k=part: k in l)
    return lambda obj: all(r(obj["metadata"].get("labels") or {}) for r in reqs)


FIELDS = {
    "*": ["metadata.name", "metadata.namespace"],
    "pods": ["spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
             "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
             "status.nominatedNodeName"],
    "secrets": ["type"],
    "namespaces": ["status.phase"],
}


def field_matcher(res, selector):
    reqs = []
    for part in split_top(selector or ""):
        if "!=" in part:
            k, v = part.split("!=", 1)
            neg = True
        elif "==" in part:
            k, v = part.split("==", 1)
            neg = False
        elif "=" in part:
            k, v = part.split("=", 1)
            neg = False
        else:
            raise bad_request(f'invalid selector: \'{selector}\'; can\'t understand \'{part}\'')
        k = k.strip()
        if k not in FIELDS["*"] + FIELDS.get(res.plural, []):
            raise bad_request(f'field label not supported: {k}')

        def value(obj, path=k):
            cur = obj
            for step in path.split("."):
                cur = cur.get(step) if isinstance(cur, dict) else None
            if isinstance(cur, bool):
                return "true" if cur else "false"
            return "" if cur is None else str(cur)

        reqs.append(lambda o, value=value, v=v.strip(), neg=neg: (value(o) == v) != neg)
    return lambda obj: all(r(obj) for r in reqs)


# --------------------------------------------------------------------------------------
# Server-side printing (meta.k8s.io/v1 Table)
# --------------------------------------------------------------------------------------

NAME_COLUMN = {"name": "Name", "type": "string", "format": "name",
               "description": "Name must be unique within a namespace. Is required when "
                              "creating resources, although some resources may allow a "
                              "client to request the generation of an appropriate name "
                              "automatically. Name is primarily intended for creation "
                              "idempotence and configuration definition. Cannot be updated. "
                              "More info: https://kubernetes.io/docs/concepts/overview/"
                              "working-with-objects/names#names",
               "priority": 0}
AGE_COLUMN = {"name": "Age", "type": "string", "format": "",
              "description": "CreationTimestamp is a timestamp representing the server time "
                             "when this object was created.",
              "priority": 0}


def column(name, typ, description, priority=0, fmt=""):
    return {"name": name, "type": typ, "format": fmt, "description": description,
            "priority": priority}


def table_columns(res):
    if res.plural == "pods":
        return [NAME_COLUMN,
                column("Ready", "string", "The aggregate readiness state of this pod for "
                                          "accepting traffic."),
                column("Status", "string", "The aggregate status of the containers in this "
                                           "pod."),
                column("Restarts", "string", "The number of times the containers in this "
                                             "pod have been restarted and when the last "
                                             "container in this pod has restarted."),
                AGE_COLUMN,
                column("IP", "string", "IP address allocated to the pod.", 1),
                column("Node", "string", "Name of the node this pod is scheduled on.", 1),
                column("Nominated Node", "string", "Name of the node this pod is nominated "
                                                   "for.", 1),
                column("Readiness Gates", "string", "Readiness gates of the pod.", 1)]
    if res.plural == "secrets":
        return [NAME_COLUMN, column("Type", "string", "The type of the secret"),
                column("Data", "integer", "The number of entries in the secret data"),
                AGE_COLUMN]
    if res.plural == "configmaps":
        return [NAME_COLUMN,
                column("Data", "integer", "The number of entries in the configmap data"),
                AGE_COLUMN]
    if res.plural == "namespaces":
        return [NAME_COLUMN,
                column("Status", "string", "The status of the namespace"), AGE_COLUMN]
    if res.plural == "deployments":
        return [NAME_COLUMN,
                column("Ready", "string", "Number of the pod with ready state"),
                column("Up-to-date", "integer", "Total number of non-terminated pods "
                                                "targeted by this deployment that have the "
                                                "desired template spec."),
                column("Available", "integer", "Total number of available pods (ready for "
                                               "at least minReadySeconds) targeted by this "
                                               "deployment."),
                AGE_COLUMN,
                column("Containers", "string", "Names of each container in the template.", 1),
                column("Images", "string", "Images referenced by each container in the "
                                           "template.", 1),
                column("Selector", "string", "Label selector for pods. Existing ReplicaSets "
                                             "whose pods are selected by this will be the "
                                             "ones affected by this deployment.", 1)]
    return [NAME_COLUMN,
            column("Created At", "date", "CreationTimestamp is a timestamp representing the "
                                         "server time when this object was created.")]


def table_cells(res, obj):
    meta = obj["metadata"]
    if res.plural == "pods":
        statuses = obj.get("status", {}).get("containerStatuses") or []
        containers = obj.get("spec", {}).get("containers") or []
        ready = sum(1 for s in statuses if s.get("ready"))
        restarts = sum(s.get("restartCount", 0) for s in statuses)
        phase = obj.get("status", {}).get("phase", "Unknown")
        if meta.get("deletionTimestamp"):
            phase = "Terminating"
        return [meta["name"], f"{ready}/{len(containers)}", phase, str(restarts), age(obj),
                obj.get("status", {}).get("podIP") or "<none>",
                obj.get("spec", {}).get("nodeName") or "<none>", "<none>", "<none>"]
    if res.plural == "secrets":
        return [meta["name"], obj.get("type", ""), len(obj.get("data") or {}), age(obj)]
    if res.plural == "configmaps":
        return [meta["name"], len(obj.get("data") or {}) + len(obj.get("binaryData") or {}),
                age(obj)]
    if res.plural == "namespaces":
        return [meta["name"], obj.get("status", {}).get("phase", ""), age(obj)]
    if res.plural == "deployments":
        spec, status = obj.get("spec", {}), obj.get("status", {})
        cs = spec.get("template", {}).get("spec", {}).get("containers") or []
        sel = spec.get("selector", {}).get("matchLabels") or {}
        return [meta["name"], f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
                status.get("updatedReplicas", 0), status.get("availableReplicas", 0), age(obj),
                ",".join(c.get("name", "") for c in cs),
                ",".join(c.get("image", "") for c in cs),
                ",".join(f"{k}={v}" for k, v in sel.items()) or "<none>"]
    return [meta["name"], meta.get("creationTimestamp")]


def partial_metadata(obj):
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"]}


def to_table(res, objs, rv, include, headers=True, version="v1"):
    rows = []
    for o in objs:
        row = {"cells": table_cells(res, o)}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = partial_metadata(o)
        rows.append(row)
    t = {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": {}}
    if rv:
        t["metadata"]["resourceVersion"] = rv
    t["columnDefinitions"] = table_columns(res) if headers else None
    t["rows"] = rows
    return t


def accepts(accept, **params):
    """The first media range of `accept` (in order) that is application/json with all of
    `params` (a value of None: any version of meta.k8s.io)."""
    for rng in (accept or "").split(","):
        parts = [p.strip() for p in rng.split(";")]
        if parts[0] not in ("application/json", "*/*", "application/*"):
            continue
        got = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if all(got.get(k) == v for k, v in params.items()):
            return got
    return None


# --------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------


def version_info():
    return {"major": "1", "minor": "32", "gitVersion": "v1.32.4",
            "gitCommit": "59526cd4867447956156ae3a602fcbac10a2c335", "gitTreeState": "clean",
            "buildDate": "2025-04-22T16:02:27Z", "goVersion": "go1.23.6", "compiler": "gc",
            "platform": "linux/amd64"}


def resource_list(group, version):
    out = []
    for r in RESOURCES:
        if r.group != group or r.version != version:
            continue
        entry = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                 "kind": r.kind, "verbs": r.verbs}
        if r.short:
            entry["shortNames"] = r.short
        if r.categories:
            entry["categories"] = r.categories
        out.append(entry)
        for sub, g, v, kind, verbs in r.subresources:
            e = {"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced}
            if g != group or v != version:
                e["group"], e["version"] = g, v
            e["kind"], e["verbs"] = kind, verbs
            out.append(e)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": out}


def aggregated(groups):
    """An apidiscovery.k8s.io/v2 APIGroupDiscoveryList for `groups` ("" is the core)."""
    items = []
    for group in groups:
        resources = []
        for r in RESOURCES:
            if r.group != group:
                continue
            d = {"resource": r.plural,
                 "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                 "scope": "Namespaced" if r.namespaced else "Cluster",
                 "singularResource": r.singular, "verbs": r.verbs}
            if r.short:
                d["shortNames"] = r.short
            if r.categories:
                d["categories"] = r.categories
            if r.subresources:
                d["subresources"] = [
                    {"subresource": sub, "responseKind": {"group": g, "version": v,
                                                          "kind": kind}, "verbs": verbs}
                    for sub, g, v, kind, verbs in r.subresources]
            resources.append(d)
        meta = {"name": group, "creationTimestamp": None} if group else {
            "creationTimestamp": None}
        items.append({"metadata": meta, "versions": [
            {"version": "v1", "resources": resources, "freshness": "Current"}]})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {}, "items": items}


def api_group(name):
    gv = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


# --------------------------------------------------------------------------------------
# The recording
# --------------------------------------------------------------------------------------

RECORD_LOCK = threading.Lock()


def record(entry):
    with RECORD_LOCK:
        with open(ARGS.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()


def text_of(data, limit=64 * 1024):
    return bytes(data[:limit]).decode("utf-8", errors="replace")


def log(*words):
    sys.stderr.write(" ".join(str(w) for w in words) + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------
# exec: running the command
# --------------------------------------------------------------------------------------


class Process:
    """The exec'd command: stdin fed by a writer thread (so the connection's one I/O
    loop never blocks on the child), stdout and stderr read by that loop."""

    def __init__(self, argv, want_stdin, tty):
        self.tty = tty
        self.stdin_q = queue.Queue()
        self.master = None
        if tty:
            self.master, slave = pty.openpty()
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                         start_new_session=True, close_fds=True)
            os.close(slave)
            self.outputs = {self.master: 1}
            self.stdin_fd = self.master if want_stdin else None
        else:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
            self.outputs = {self.proc.stdout.fileno(): 1, self.proc.stderr.fileno(): 2}
            self.stdin_fd = self.proc.stdin.fileno() if want_stdin else None
        if self.stdin_fd is not None:
            threading.Thread(target=self._feed, daemon=True).start()

    def _feed(self):
        while True:
            data = self.stdin_q.get()
            if data is None:
                if self.tty:
                    return
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
                return
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self.stdin_fd, view)
                    view = view[n:]
            except OSError:
                return

    def write_stdin(self, data):
        if self.stdin_fd is not None and data:
            self.stdin_q.put(bytes(data))

    def close_stdin(self):
        if self.stdin_fd is not None:
            self.stdin_q.put(None)

    def resize(self, size):
        if self.master is not None:
            try:
                fcntl.ioctl(self.master, termios.TIOCSWINSZ,
                            struct.pack("HHHH", int(size.get("Height", 0)),
                                        int(size.get("Width", 0)), 0, 0))
            except (OSError, ValueError, TypeError):
                pass

    def read(self, fd):
        """(channel, data); empty data at end of file."""
        try:
            return self.outputs[fd], os.read(fd, 65536)
        except OSError as e:
            if e.errno == errno.EIO:  # the pty's other side is gone
                return self.outputs[fd], b""
            raise

    def kill(self):
        try:
            self.proc.kill()
        except OSError:
            pass

    def wait(self):
        rc = self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        if self.master is not None:
            os.close(self.master)
        return rc


def exec_status(argv, rc, error=None):
    """The metav1.Status the kubelet writes on the error stream (v4 and later)."""
    if error is not None:
        message = ("error executing command in container: failed to exec in container: "
                   f"failed to start exec: {error}")
        return {"metadata": {}, "status": "Failure",
                "message": f"Internal error occurred: {message}", "reason": "InternalError",
                "details": {"causes": [{"message": message}]}, "code": 500}
    if rc == 0:
        return {"metadata": {}, "status": "Success"}
    code = rc if rc > 0 else 128 - rc
    return {"metadata": {}, "status": "Failure",
            "message": "command terminated with non-zero exit code: command "
                       f"'{' '.join(argv)}' exited with {code}: ",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def v1_error_text(status):
    """Before v4, the error stream carries the error's text, and nothing on success."""
    if status["status"] == "Success":
        return b""
    return status["message"].encode()


# --------------------------------------------------------------------------------------
# exec over WebSocket (RFC 6455, the channel.k8s.io subprotocols)
# --------------------------------------------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io",
                "channel.k8s.io", "base64.channel.k8s.io"]


class WebSocketTransport:
    name = "websocket"

    def __init__(self, sock, protocol):
        self.sock = sock
        self.protocol = protocol
        self.base64 = "base64" in protocol
        self.buf = bytearray()
        self.fragments = None
        self.peer_closed = False
        self.close_sent = False

    def frame(self, opcode, payload):
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        self.sock.sendall(head + bytes(payload))

    def send_channel(self, channel, data):
        if self.base64:
            self.frame(1, str(channel).encode() + base64.b64encode(data))
        else:
            self.frame(2, bytes([channel]) + bytes(data))

    # What the loop calls.
    def ready(self):
        return True

    def opened(self, session):
        # The kubelet's first message: an empty one on the lowest writable channel.
        first = 1 if session.stdout else 2 if session.stderr else 3
        self.send_channel(first, b"")

    def output(self, channel, data):
        if data:
            self.send_channel(channel, data)

    def finish(self, status):
        body = (json.dumps(status, separators=(",", ":")).encode()
                if self.protocol.startswith(("v4.", "v5.")) else v1_error_text(status))
        if body:
            self.send_channel(3, body)
        self.close()

    def close(self):
        if not self.close_sent:
            self.close_sent = True
            self.frame(8, struct.pack("!H", 1000))

    def feed(self, data, session):
        self.buf += data
        while True:
            if len(self.buf) < 2:
                return
            b0, b1 = self.buf[0], self.buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, at = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
            masked = b1 & 0x80
            if masked:
                at += 4
            if len(self.buf) < at + n:
                return
            payload = bytearray(self.buf[at:at + n])
            if masked:
                key = self.buf[at - 4:at]
                for i in range(n):
                    payload[i] ^= key[i % 4]
            del self.buf[:at + n]
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if opcode == 8:
                self.peer_closed = True
                if not self.close_sent:
                    self.close_sent = True
                    self.frame(8, bytes(payload[:2]))
                return
            if opcode == 9:
                self.frame(10, payload)
                continue
            if opcode == 10:
                continue
            if opcode == 0:
                if self.fragments is None:
                    continue
                self.fragments += payload
            else:
                self.fragments = payload
            if fin:
                message, self.fragments = self.fragments, None
                self.message(bytes(message), session)

    def message(self, message, session):
        if not message:
            return
        if self.base64:
            channel = message[0] - ord("0")
            try:
                data = base64.b64decode(message[1:])
            except ValueError:
                return
        else:
            channel, data = message[0], message[1:]
        if channel == 0:
            session.stdin_data(data)
        elif channel == 4:
            session.resize_data(data)
        elif channel == 255 and self.protocol.startswith("v5.") and data[:1] == b"\x00":
            session.stdin_closed()


# --------------------------------------------------------------------------------------
# exec over SPDY/3.1 (as github.com/moby/spdystream speaks it)
# --------------------------------------------------------------------------------------


def spdy_dictionary():
    """The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1):
    length-prefixed words, then a raw tail."""
    words = ("options head post put delete trace accept accept-charset accept-encoding "
             "accept-language accept-ranges age allow authorization cache-control connection "
             "content-base content-encoding content-language content-length content-location "
             "content-md5 content-range content-type date etag expect expires from host "
             "if-match if-modified-since if-none-match if-range if-unmodified-since "
             "last-modified location max-forwards pragma proxy-authenticate "
             "proxy-authorization range referer retry-after server te trailer "
             "transfer-encoding upgrade user-agent vary via warning www-authenticate method "
             "get status").split() + ["200 OK", "version", "HTTP/1.1", "url", "public",
                                      "set-cookie", "keep-alive", "origin"]
    tail = ("100101201202205206300302303304305306307402405406407408409410411412413414415416"
            "417502504505203 Non-Authoritative Information204 No Content301 Moved "
            "Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal "
            "Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun "
            "Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, "
            "GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,"
            "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,"
            "deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
    out = b"".join(struct.pack("!I", len(w)) + w.encode() for w in words) + tail.encode()
    assert hashlib.sha256(out).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"), "SPDY dictionary"
    return out


SPDY_DICT = spdy_dictionary()
SPDY_PROTOCOLS = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
                  "channel.k8s.io"]
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9)
FLAG_FIN = 0x01


class SpdyFramer:
    """SPDY/3.1 frames as spdystream writes and reads them, over any byte stream: frames
    go out through `send`; `frames` cuts what arrives into whole frames. Header blocks
    are compressed with the SPDY/3 dictionary, one zlib stream per direction."""

    def __init__(self, send):
        self.send = send
        self.buf = bytearray()
        self.inflate = zlib.decompressobj(zdict=SPDY_DICT)
        self.deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                        SPDY_DICT)

    def control(self, ftype, flags, payload):
        head = struct.pack("!HHI", 0x8000 | 3, ftype, (flags << 24) | len(payload))
        self.send(head + payload)

    def data(self, stream, payload, flags=0):
        while True:
            chunk, payload = payload[:65536], payload[65536:]
            last = not payload
            self.send(struct.pack("!II", stream & 0x7FFFFFFF,
                                  ((flags if last else 0) << 24) | len(chunk)) + chunk)
            if last:
                return

    def header_block(self, headers):
        raw = struct.pack("!I", len(headers))
        for k, v in headers.items():
            raw += struct.pack("!I", len(k)) + k.encode() + struct.pack("!I", len(v)) + v.encode()
        return self.deflate.compress(raw) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    def parse_headers(self, block):
        raw = self.inflate.decompress(block)
        headers, at = {}, 4
        count = struct.unpack("!I", raw[:4])[0]
        for _ in range(count):
            n = struct.unpack("!I", raw[at:at + 4])[0]
            name = raw[at + 4:at + 4 + n].decode(errors="replace")
            at += 4 + n
            n = struct.unpack("!I", raw[at:at + 4])[0]
            headers[name.lower()] = raw[at + 4:at + 4 + n].decode(errors="replace")
            at += 4 + n
        return headers

    def frames(self, data):
        """The whole frames of what has arrived so far (`data` appended): (control type,
        flags, payload) for a control frame, (None, flags, (stream id, payload)) for
        DATA."""
        self.buf += data
        return self._whole_frames()

    def _whole_frames(self):
        while len(self.buf) >= 8:
            length = struct.unpack("!I", self.buf[4:8])[0] & 0xFFFFFF
            if len(self.buf) < 8 + length:
                return
            head, payload = bytes(self.buf[:8]), bytes(self.buf[8:8 + length])
            del self.buf[:8 + length]
            flags = head[4]
            if head[0] & 0x80:
                yield struct.unpack("!H", head[2:4])[0], flags, payload
            else:
                yield None, flags, (struct.unpack("!I", head[:4])[0] & 0x7FFFFFFF, payload)


class SpdyTransport(SpdyFramer):
    name = "spdy"

    def __init__(self, sock, protocol, expected):
        super().__init__(sock.sendall)
        self.sock = sock
        self.protocol = protocol
        self.expected = expected  # the stream types the client must open
        self.streams = {}  # type -> stream id
        self.types = {}  # stream id -> type
        self.last_id = 0
        self.peer_closed = False
        self.close_sent = False
        self.finished = set()

    def ready(self):
        return all(t in self.streams for t in self.expected)

    def opened(self, session):
        pass

    def output(self, channel, data):
        stream = self.streams.get({1: "stdout", 2: "stderr"}[channel])
        if stream is None:
            return
        if data:
            self.data(stream, data)
        else:
            self.fin(stream)

    def fin(self, stream):
        if stream not in self.finished:
            self.finished.add(stream)
            self.data(stream, b"", FLAG_FIN)

    def finish(self, status):
        body = (json.dumps(status, separators=(",", ":")).encode()
                if self.protocol == "v4.channel.k8s.io" else v1_error_text(status))
        error = self.streams.get("error")
        if error is not None:
            if body:
                self.data(error, body)
            self.fin(error)
        for t in ("stdout", "stderr", "stdin", "resize"):
            if t in self.streams:
                self.fin(self.streams[t])
        self.close()

    def close(self):
        if not self.close_sent:
            self.close_sent = True
            self.control(GOAWAY, 0, struct.pack("!II", self.last_id, 0))

    def feed(self, data, session):
        for ftype, flags, payload in self.frames(data):
            if ftype is not None:
                self.on_control(ftype, flags, payload, session)
            else:
                stream, payload = payload
                kind = self.types.get(stream)
                if kind == "stdin":
                    session.stdin_data(payload)
                    if flags & FLAG_FIN:
                        session.stdin_closed()
                elif kind == "resize":
                    session.resize_data(payload)

    def on_control(self, ftype, flags, payload, session):
        if ftype == SYN_STREAM:
            stream = struct.unpack("!I", payload[:4])[0] & 0x7FFFFFFF
            headers = self.parse_headers(payload[10:])
            kind = headers.get("streamtype", "")
            self.last_id = max(self.last_id, stream)
            self.types[stream] = kind
            self.streams.setdefault(kind, stream)
            session.streams_opened.append({"id": stream, "headers": headers})
            self.control(SYN_REPLY, 0, struct.pack("!I", stream) + self.header_block({}))
            if kind == "stdin" and flags & FLAG_FIN:
                session.stdin_closed()
        elif ftype == PING:
            self.control(PING, 0, payload[:4])
        elif ftype == GOAWAY:
            self.peer_closed = True
        elif ftype == RST_STREAM:
            stream = struct.unpack("!I", payload[:4])[0] & 0x7FFFFFFF
            if self.types.get(stream) == "stdin":
                session.stdin_closed()
        elif ftype == HEADERS:
            self.parse_headers(payload[4:])  # keeps the decompression context in step
        # SETTINGS, WINDOW_UPDATE: spdystream has no flow control; nothing to do.


# --------------------------------------------------------------------------------------
# exec: one session over either transport
# --------------------------------------------------------------------------------------


class ChannelSession:
    """What exec and attach sessions share: reading the client's side of the connection
    into the transport (which calls back `stdin_data`, `stdin_closed`, `resize_data`)."""

    sock = None

    def recv(self, transport, timeout):
        """Reads what the client sent within `timeout` and feeds it to the transport;
        False once the client is gone."""
        pending = getattr(self.sock, "pending", lambda: 0)()
        if not pending:
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                return True
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            transport.peer_closed = True
            return False
        transport.feed(data, self)
        return not transport.peer_closed

    def drain(self, transport):
        """After the status and the close, reads until the client closes (at most 10 s),
        answering its pings."""
        deadline = time.time() + 10
        while time.time() < deadline and not transport.peer_closed:
            if not self.recv(transport, max(0.0, deadline - time.time())):
                break


class ExecSession(ChannelSession):
    def __init__(self, sock, argv, opts, done):
        self.sock = sock
        self.done = done  # called with (exit code, status, error) before the status is sent
        self.argv = argv
        self.stdin = opts["stdin"]
        self.stdout = opts["stdout"]
        self.stderr = opts["stderr"] and not opts["tty"]
        self.tty = opts["tty"]
        self.proc = None
        self.stdin_bytes = bytearray()
        self.out = {1: bytearray(), 2: bytearray()}
        self.resizes = []
        self.pending_stdin = []
        self.stdin_done = False
        self.streams_opened = []

    # Called by the transports.
    def stdin_data(self, data):
        if not data:
            return
        self.stdin_bytes += data
        if self.proc:
            self.proc.write_stdin(data)
        else:
            self.pending_stdin.append(bytes(data))

    def stdin_closed(self):
        if self.stdin_done:
            return
        self.stdin_done = True
        if self.proc:
            self.proc.close_stdin()

    def resize_data(self, data):
        for line in bytes(data).decode(errors="replace").splitlines():
            try:
                size = json.loads(line)
            except ValueError:
                continue
            self.resizes.append(size)
            if self.proc:
                self.proc.resize(size)

    def run(self, transport):
        """Runs the session to its end."""
        deadline = time.time() + 30
        while not transport.ready():
            if time.time() > deadline or not self.recv(transport, 1.0):
                self.done(None, None, "the client did not open its streams")
                return
        try:
            self.proc = Process(self.argv, self.stdin, self.tty)
        except OSError as e:
            error = f'exec: "{self.argv[0] if self.argv else ""}": {e.strerror}'
            status = exec_status(self.argv, None, error)
            self.done(None, status, error)
            transport.finish(status)
            self.drain(transport)
            return
        for data in self.pending_stdin:
            self.proc.write_stdin(data)
        if self.stdin_done:
            self.proc.close_stdin()
        if self.resizes:
            self.proc.resize(self.resizes[-1])
        transport.opened(self)
        outputs = dict(self.proc.outputs)
        client_gone = False
        while outputs:
            watch = list(outputs) + ([] if client_gone else [self.sock])
            pending = not client_gone and getattr(self.sock, "pending", lambda: 0)()
            ready = [self.sock] if pending else select.select(watch, [], [], 1.0)[0]
            for fd in ready:
                if fd is self.sock:
                    if not self.recv(transport, 0):
                        client_gone = True
                        self.proc.kill()
                    continue
                channel, data = self.proc.read(fd)
                if not data:
                    del outputs[fd]
                self.out[channel] += data[:max(0, 64 * 1024 - len(self.out[channel]))]
                wanted = self.stdout if channel == 1 else self.stderr
                if not client_gone and wanted:
                    try:
                        transport.output(channel, data)
                    except OSError:
                        client_gone = True
                        self.proc.kill()
        rc = self.proc.wait()
        status = exec_status(self.argv, rc)
        self.done(rc, status, None if not client_gone else "the client went away")
        if not client_gone:
            try:
                transport.finish(status)
                self.drain(transport)
            except OSError:
                pass


# --------------------------------------------------------------------------------------
# attach: the containers' main processes
# --------------------------------------------------------------------------------------
# `pods/{name}/attach` connects the client to the main process of a container (as the
# kubelet and containerd do: the process's stdout and stderr are broadcast to every
# attach, an attach's stdin goes to the process's stdin) over the same transports and
# channel protocols as exec. Each container's main process is started when the
# container is first attached to (per pod uid and container) and keeps running: an
# attach ending (its client closed stdin, went away, or was refused) changes nothing
# for the process, and the next attach finds the same one. The process, MAIN_PROCESS,
# is cat-like: what it reads it writes to stdout as it is, and for each whole line it
# writes `<container>: line <n>` to stderr, n counting the lines of its whole life (so a
# second attach shows it is the same process). Output no attach is there for is
# discarded (a real container's goes to its log). A process that exits (only when this
# server goes: its stdin is this server's pipe) ends the attaches to it with `Success`,
# as the kubelet's do; the next attach starts a new one.
#
# Where it differs from containerd: with `stdinOnce` false (these containers), an
# attach whose client closes stdin is detached at once, racing the answer to what it
# sent. Here the process reports on a pipe of its own (the fd its first argument
# names) how many bytes it has handled, after it has written their answer; an attach
# whose client closed stdin is detached once the process has handled everything fed to
# it so far and that answer has gone to the client: a client sees the whole answer to
# its input, deterministically. A container whose spec has no `stdin: true` takes an
# attach's stdin and drops it, as containerd does; a terminal is never allocated (no
# container here asks for one).

MAIN_PROCESS = r"""
import os, sys

ack, name, lines = int(sys.argv[1]), sys.argv[2], 0


def write(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


while True:
    data = os.read(0, 65536)
    if not data:
        break
    write(1, data)
    for _ in range(data.count(b"\n")):
        lines += 1
        write(2, f"{name}: line {lines}\n".encode())
    write(ack, b"%d\n" % len(data))
"""

MAIN_PROCESSES = {}  # (pod uid, container) -> MainProcess
MAIN_LOCK = threading.Lock()


def main_process(pod, container_name):
    """The main process of `container_name` in `pod`, started if it is not running;
    (process, whether it was started now)."""
    key = (pod["metadata"].get("uid"), container_name)
    with MAIN_LOCK:
        proc = MAIN_PROCESSES.get(key)
        if proc is not None and proc.exit_code is None:
            return proc, False
        proc = MainProcess(key, container_name)
        MAIN_PROCESSES[key] = proc
        return proc, True


class MainProcess:
    """One container's main process: stdin fed by a writer thread, stdout, stderr and
    the acknowledgements read by a reader thread that broadcasts them to the attached
    sessions."""

    def __init__(self, key, name):
        self.key = key
        self.cond = threading.Condition()
        ack_r, ack_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MAIN_PROCESS, str(ack_w), name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(ack_w,), close_fds=True)
        os.close(ack_w)
        self.ack = ack_r
        self.pid = self.proc.pid
        self.fed = 0  # stdin bytes given to the process
        self.handled = 0  # stdin bytes the process has answered
        self.attached = set()
        self.exit_code = None
        self.stdin_q = queue.Queue()
        threading.Thread(target=self._feed, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()

    def _feed(self):
        fd = self.proc.stdin.fileno()
        while True:
            data = self.stdin_q.get()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                return

    def attach(self, session):
        with self.cond:
            self.attached.add(session)
            if self.exit_code is not None:
                session.push(("exited", self.exit_code))

    def detach(self, session):
        with self.cond:
            self.attached.discard(session)

    def write_stdin(self, data):
        with self.cond:
            self.fed += len(data)
            self.stdin_q.put(bytes(data))

    def stdin_closed(self, session):
        """`session`'s client will send nothing more: it is detached once all fed so far
        is answered."""
        with self.cond:
            session.stdin_target = self.fed
            if self.handled >= self.fed:
                session.push(("answered",))

    def _broadcast(self, channel, data):
        with self.cond:
            for session in self.attached:
                session.push(("output", channel, data))

    def _drain(self, fd, channel):
        """Reads all `fd` holds now; False at its end."""
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._broadcast(channel, data)

    def _read(self):
        outputs = {self.proc.stdout.fileno(): 1, self.proc.stderr.fileno(): 2}
        for fd in outputs:
            os.set_blocking(fd, False)
        open_fds = [*outputs, self.ack]
        acks = b""
        while open_fds:
            ready = select.select(open_fds, [], [])[0]
            for fd in ready:
                if fd in outputs and not self._drain(fd, outputs[fd]):
                    open_fds.remove(fd)
            if self.ack not in ready:
                continue
            data = os.read(self.ack, 4096)
            if not data:
                open_fds.remove(self.ack)
                continue
            # The answer to what is acknowledged was written before the acknowledgement:
            # it is in the pipes now, and goes out before anyone is detached.
            for fd, channel in outputs.items():
                if fd in open_fds and not self._drain(fd, channel):
                    open_fds.remove(fd)
            acks += data
            *counts, acks = acks.split(b"\n")
            with self.cond:
                self.handled += sum(int(c) for c in counts if c)
                for session in self.attached:
                    if session.stdin_target is not None and \
                            self.handled >= session.stdin_target:
                        session.push(("answered",))
        rc = self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        os.close(self.ack)
        with self.cond:
            self.exit_code = rc
            for session in self.attached:
                session.push(("exited", rc))


ATTACH_SUCCESS = {"metadata": {}, "status": "Success"}


class AttachSession(ChannelSession):
    """One attach to a container's main process, over either transport."""

    def __init__(self, sock, main, opts, deliver_stdin, done):
        self.sock = sock
        self.main = main
        self.done = done  # called with (how it ended, status) before the status is sent
        self.stdin = opts["stdin"]
        self.stdout = opts["stdout"]
        self.stderr = opts["stderr"] and not opts["tty"]
        self.deliver_stdin = deliver_stdin
        self.stdin_bytes = bytearray()
        self.out = {1: bytearray(), 2: bytearray()}
        self.resizes = []
        self.streams_opened = []
        self.stdin_done = False
        self.stdin_target = None  # set by the process once stdin is closed
        self.events = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def push(self, event):
        """Called by the process's reader thread (under its lock)."""
        self.events.put(event)
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass  # a wake-up is pending already

    # Called by the transports.
    def stdin_data(self, data):
        if not data or not self.stdin or self.stdin_done:
            return
        self.stdin_bytes += data
        if self.deliver_stdin:
            self.main.write_stdin(data)

    def stdin_closed(self):
        if self.stdin_done or not self.stdin:
            return
        self.stdin_done = True
        self.main.stdin_closed(self)

    def resize_data(self, data):
        for line in bytes(data).decode(errors="replace").splitlines():
            try:
                self.resizes.append(json.loads(line))
            except ValueError:
                continue

    def run(self, transport):
        """Runs the attach to its end; the process goes on."""
        self.main.attach(self)
        try:
            self._run(transport)
        finally:
            self.main.detach(self)
            os.close(self.wake_r)
            os.close(self.wake_w)

    def _run(self, transport):
        deadline = time.time() + 30
        while not transport.ready():
            if time.time() > deadline or not self.recv(transport, 1.0):
                self.done("the client did not open its streams", None)
                return
        transport.opened(self)
        end = None
        while end is None:
            pending = getattr(self.sock, "pending", lambda: 0)()
            ready = [self.sock] if pending else select.select(
                [self.sock, self.wake_r], [], [], 1.0)[0]
            if self.sock in ready and not self.recv(transport, 0):
                end = "client gone"
                break
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
            while end is None:
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    break
                if event[0] == "output":
                    _, channel, data = event
                    self.out[channel] += data[:max(0, 64 * 1024 - len(self.out[channel]))]
                    if self.stdout if channel == 1 else self.stderr:
                        try:
                            transport.output(channel, data)
                        except OSError:
                            end = "client gone"
                elif event[0] == "answered":
                    end = "stdin closed"
                elif event[0] == "exited":
                    end = "process exited"
        if end == "client gone":
            self.done(end, None)
            return
        self.done(end, ATTACH_SUCCESS)
        try:
            transport.finish(ATTACH_SUCCESS)
            self.drain(transport)
        except OSError:
            pass


# --------------------------------------------------------------------------------------
# port-forward (SPDY/3.1, raw or tunnelled in WebSocket)
# --------------------------------------------------------------------------------------
# kubectl (client-go tools/portforward) speaks SPDY/3.1 with the stream protocol
# `portforward.k8s.io` either on the upgraded connection itself (`Upgrade: SPDY/3.1`,
# `X-Stream-Protocol-Version: portforward.k8s.io`, a POST) or, from 1.31 on by default
# (KEP-4006), tunnelled in WebSocket (a GET, subprotocol `SPDY/3.1+portforward.k8s.io`:
# the SPDY byte stream cut anywhere into binary messages, client-go's
# TunnelingConnection, which the API server unwraps before it talks SPDY to the
# kubelet). Either way, each local connection kubectl accepts opens two streams, `error`
# then `data`, with the headers `streamtype`, `port` and `requestid`. Served here as the
# kubelet serves them (pkg/kubelet/cri/streaming/portforward/httpstream.go, with
# containerd's forwarder): once both streams of a request id are open, the data stream
# is connected to the pod's port, here the loopback port `--pod-port PORT=HOSTPORT`
# maps it to (a port no mapping names refuses the connection, as a pod where nothing
# listens); the error stream carries a message if the connection fails, and both
# streams are closed (FIN) when the forwarded connection ends.

PORTFORWARD_PROTOCOL = "portforward.k8s.io"
SPDY_TUNNEL_PREFIX = "SPDY/3.1+"
# containerd waits this long, once one direction of a forwarded connection has ended,
# for the other to end before it closes the connection.
FORWARD_GRACE = 1.0


class RawSpdyWire:
    """The upgraded connection carries SPDY itself."""

    name = "spdy"

    def __init__(self, sock):
        self.sock = sock
        self.peer_closed = False

    def send(self, data):
        self.sock.sendall(data)

    def spdy_bytes(self, data):
        return data


class WebSocketTunnel(WebSocketTransport):
    """The upgraded connection is a WebSocket whose binary messages carry the SPDY byte
    stream (each write of the server one message, as gorilla's writer sends it)."""

    name = "websocket"

    def __init__(self, sock, protocol):
        super().__init__(sock, protocol)
        self.arrived = bytearray()
        self.messages = {"from_client": 0, "to_client": 0}

    def send(self, data):
        self.messages["to_client"] += 1
        self.frame(2, data)

    def spdy_bytes(self, data):
        """What the WebSocket frames in `data` carried (pings answered, a close echoed)."""
        self.feed(data, self)
        out = bytes(self.arrived)
        self.arrived.clear()
        return out

    def message(self, message, session):
        self.messages["from_client"] += 1
        self.arrived += message


class Forward:
    """One forwarded connection: the `error` and `data` streams of one request id and the
    TCP connection to the pod's port."""

    def __init__(self, request_id):
        self.request_id = request_id
        self.port = None
        self.error_id = None
        self.data_id = None
        self.sock = None
        self.writes = None  # bytes for the pod's connection; None: shut it down
        self.early = []  # data that arrived before the pod's connection was made
        self.client_done = False  # the client closed the data stream (FIN)
        self.pod_done = False  # the pod's connection reached end of file
        self.deadline = None
        self.ended = False
        self.record = {"request_id": request_id, "port": None, "to": None,
                       "bytes_to_pod": 0, "bytes_from_pod": 0, "to_pod": "",
                       "from_pod": "", "error": None, "end": None}

    def complete(self):
        return self.error_id is not None and self.data_id is not None

    def _feed(self):
        while True:
            data = self.writes.get()
            try:
                if data is None:
                    self.sock.shutdown(socket.SHUT_WR)
                    return
                self.sock.sendall(data)
            except OSError:
                return


class PortForwardSession:
    """One upgraded port-forward connection, served until the client goes away."""

    def __init__(self, sock, wire, info, pod_id):
        self.sock = sock
        self.wire = wire
        self.spdy = SpdyFramer(wire.send)
        self.info = info
        self.pod_id = pod_id  # how error messages name the pod (the kubelet: its sandbox)
        self.forwards = {}  # request id -> Forward
        self.streams = {}  # stream id -> (Forward, "error" | "data")
        self.goaway_at = None

    def run(self):
        try:
            self.loop()
        except (ssl.SSLError, OSError) as e:
            self.info["end"] = f"connection error: {e}"
        finally:
            for f in self.forwards.values():
                self.end(f, "the client connection ended", fins=False)

    def loop(self):
        while True:
            now = time.time()
            for f in list(self.forwards.values()):
                if f.deadline is not None and now >= f.deadline and not f.ended:
                    self.end(f, "one side ended, the other did not within the grace")
            if self.goaway_at is not None and now - self.goaway_at > 10:
                self.info["end"] = "GOAWAY, then nothing for 10 s"
                return
            reading = {f.sock: f for f in self.forwards.values()
                       if f.sock is not None and not f.pod_done and not f.ended}
            deadlines = [f.deadline for f in self.forwards.values()
                         if f.deadline is not None and not f.ended]
            timeout = max(0.0, min(deadlines) - now) if deadlines else 1.0
            pending = getattr(self.sock, "pending", lambda: 0)()
            ready = [self.sock] if pending else select.select(
                [self.sock] + list(reading), [], [], min(timeout, 1.0))[0]
            for fd in ready:
                if fd is self.sock:
                    data = self.sock.recv(65536)
                    if not data:
                        self.info["end"] = "the client closed the connection"
                        return
                    for ftype, flags, payload in self.spdy.frames(self.wire.spdy_bytes(data)):
                        self.on_frame(ftype, flags, payload)
                    if self.wire.peer_closed:
                        self.info["end"] = "the client closed the WebSocket"
                        return
                else:
                    self.from_pod(reading[fd])

    # From the client -------------------------------------------------------------

    def on_frame(self, ftype, flags, payload):
        if ftype is None:
            stream, data = payload
            return self.client_data(stream, flags, data)
        if ftype == SYN_STREAM:
            stream = struct.unpack("!I", payload[:4])[0] & 0x7FFFFFFF
            headers = self.spdy.parse_headers(payload[10:])
            self.info["streams"].append({"id": stream, "headers": headers})
            self.open_stream(stream, headers)
        elif ftype == PING:
            self.spdy.control(PING, 0, payload[:4])
        elif ftype == GOAWAY:
            self.goaway_at = time.time()
        elif ftype == RST_STREAM:
            stream = struct.unpack("!I", payload[:4])[0] & 0x7FFFFFFF
            if stream in self.streams:
                self.end(self.streams[stream][0], "the client reset a stream", fins=False)
        elif ftype == HEADERS:
            self.spdy.parse_headers(payload[4:])  # keeps the decompression context in step
        # SETTINGS, WINDOW_UPDATE: spdystream has no flow control; nothing to do.

    def open_stream(self, stream, headers):
        """The kubelet's httpStreamReceived and run: a stream without a valid `port` or
        `streamtype` is refused (reset); otherwise answered, and paired with the other
        stream of its request id."""
        port, kind = headers.get("port", ""), headers.get("streamtype", "")
        valid = port.isdigit() and 0 < int(port) < 65536 and kind in ("error", "data")
        if not valid:
            self.spdy.control(RST_STREAM, 0, struct.pack("!II", stream, 5))  # CANCEL
            return
        self.spdy.control(SYN_REPLY, 0, struct.pack("!I", stream) + self.spdy.header_block({}))
        request_id = headers.get("requestid")
        if request_id is None:
            # Clients before request ids: the kubelet pairs stream n (error) and n + 2.
            request_id = str(stream if kind == "error" else stream - 2)
        f = self.forwards.get(request_id)
        if f is None:
            f = self.forwards[request_id] = Forward(request_id)
        if (kind == "error" and f.error_id is not None) or (
                kind == "data" and f.data_id is not None):
            error = f"error processing stream for request {request_id}: {kind} stream " \
                    "already assigned"
            if f.error_id is not None:
                self.spdy.data(f.error_id, error.encode())
            return
        if kind == "error":
            f.error_id = stream
        else:
            f.data_id = stream
            f.port = int(port)
        self.streams[stream] = (f, kind)
        if port not in self.info["ports"]:
            self.info["ports"].append(port)
        if f.complete():
            self.connect(f)

    def connect(self, f):
        f.record["port"] = f.port
        self.info["connections"].append(f.record)
        host_port = ARGS.pod_port.get(f.port)
        target = f"127.0.0.1:{host_port}" if host_port else None
        f.record["to"] = target
        try:
            if host_port is None:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused")
            f.sock = socket.create_connection(("127.0.0.1", host_port), timeout=5)
            f.sock.settimeout(None)
        except OSError as e:
            message = (f"error forwarding port {f.port} to pod {self.pod_id}, uid : failed "
                       f"to execute portforward in network namespace: failed to connect to "
                       f"localhost:{f.port} inside namespace: dial tcp4 "
                       f"{target or f'127.0.0.1:{f.port}'}: connect: "
                       f"{(e.strerror or str(e)).lower()}")
            f.record["error"] = message
            self.spdy.data(f.error_id, message.encode())
            self.end(f, "the pod's port refused the connection")
            return
        f.writes = queue.Queue()
        threading.Thread(target=f._feed, daemon=True).start()
        for data in f.early:
            f.writes.put(data)
        f.early = []
        if f.client_done:
            self.client_closed(f)

    def client_data(self, stream, flags, data):
        f, kind = self.streams.get(stream, (None, None))
        if f is None or kind != "data" or f.ended:
            return  # the error stream: kubectl closes its side at once, writes nothing
        if data:
            f.record["bytes_to_pod"] += len(data)
            f.record["to_pod"] = clip(f.record["to_pod"], data)
            self.info["bytes_to_pod"] += len(data)
            if f.writes is not None:
                f.writes.put(bytes(data))
            else:
                f.early.append(bytes(data))
        if flags & FLAG_FIN:
            f.client_done = True
            if f.writes is not None:
                self.client_closed(f)

    def client_closed(self, f):
        f.writes.put(None)
        if f.pod_done:
            self.end(f, "both sides closed")
        elif f.deadline is None:
            f.deadline = time.time() + FORWARD_GRACE

    # From the pod ----------------------------------------------------------------

    def from_pod(self, f):
        try:
            data = f.sock.recv(65536)
        except OSError:
            data = b""
        if data:
            f.record["bytes_from_pod"] += len(data)
            f.record["from_pod"] = clip(f.record["from_pod"], data)
            self.info["bytes_from_pod"] += len(data)
            self.spdy.data(f.data_id, data)
            return
        f.pod_done = True
        if f.client_done:
            self.end(f, "both sides closed")
        elif f.deadline is None:
            f.deadline = time.time() + FORWARD_GRACE

    def end(self, f, why, fins=True):
        """The kubelet's portForward returning: the pod's connection closed, then the
        error and the data streams (FIN, in that order)."""
        if f.ended:
            return
        f.ended = True
        f.record["end"] = why
        if f.record not in self.info["connections"]:
            self.info["connections"].append(f.record)
        if f.sock is not None:
            try:
                f.sock.close()
            except OSError:
                pass
        if fins:
            for stream in (f.error_id, f.data_id):
                if stream is not None:
                    self.spdy.data(stream, b"", FLAG_FIN)


def clip(kept, data, limit=64 * 1024):
    """`kept` with the text of `data` added, up to `limit` characters."""
    if len(kept) >= limit:
        return kept
    return kept + text_of(data, limit - len(kept))


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------


def truthy(v):
    return v in ("1", "true", "True", "yes")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Unbuffered: after an upgrade, every byte the client sent after the request head is
    # still in the socket for the exec loop.
    rbufsize = 0

    def log_message(self, fmt, *args):
        pass

    def version_string(self):
        return ""

    # Reading -------------------------------------------------------------------------

    def read_exact(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = self.rfile.read(n - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.read_exact(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.read_exact(n) if n else b""

    # Writing -------------------------------------------------------------------------

    def head(self, code, content_type, length=None, extra=()):
        self.status_code = code
        self.write_record()
        self.send_response_only(code)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        if content_type:
            self.send_header("Content-Type", content_type)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("X-Kubernetes-Pf-Flowschema-Uid", fixed_uid("flowschema"))
        self.send_header("X-Kubernetes-Pf-Prioritylevel-Uid", fixed_uid("prioritylevel"))
        self.send_header("Date", self.date_time_string())
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def send_json(self, code, obj, content_type="application/json"):
        body = json.dumps(obj).encode() + b"\n"
        self.head(code, content_type, len(body))
        self.wfile.write(body)

    def send_text(self, code, text, content_type="text/plain; charset=utf-8"):
        body = text.encode()
        self.head(code, content_type, len(body), [("X-Content-Type-Options", "nosniff")])
        self.wfile.write(body)

    # Requests ------------------------------------------------------------------------

    def do_GET(self):
        self.serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def identify(self):
        """(identity, how, groups) of the client, or None when unauthenticated."""
        cert = None
        if isinstance(self.connection, ssl.SSLSocket):
            cert = self.connection.getpeercert()
        if cert:
            subject = dict(x[0] for x in cert.get("subject", ()))
            groups = [v for rdn in cert.get("subject", ()) for k, v in rdn
                      if k == "organizationName"]
            return subject.get("commonName"), "client-certificate", groups
        auth = self.headers.get("authorization", "")
        if ARGS.token is not None:
            if auth == f"Bearer {ARGS.token}":
                return ARGS.token, "token", ["system:authenticated"]
            return None
        if ARGS.client_ca is None:
            return "system:anonymous", "anonymous", ["system:unauthenticated"]
        return None

    def serve(self):
        self.status_code = None
        self.exec_info = None
        self.attach_info = None
        self.portforward_info = None
        self.decoded_body = None
        self.recorded = False
        url = urllib.parse.urlsplit(self.path)
        self.url_path = url.path
        self.params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        self.body = self.read_body()
        self.who = self.identify()
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        self.impersonation = {}
        for k, v in self.headers.items():
            if k.lower().startswith("impersonate-"):
                self.impersonation.setdefault(k.lower(), []).append(v)
        self.entry = {
            "time": rfc3339(time.time()),
            "peer": "%s:%s" % self.client_address[:2],
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": headers,
            "body": text_of(self.body),
            "identity": self.who[0] if self.who else None,
            "auth": self.who[1] if self.who else None,
            "impersonation": self.impersonation,
        }
        try:
            if self.who is None:
                self.send_json(401, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                     "status": "Failure", "message": "Unauthorized",
                                     "reason": "Unauthorized", "code": 401})
            else:
                self.route()
        except ApiError as e:
            if self.status_code is None:
                self.send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a test server reports, never dies
            log("error serving", self.command, self.path, repr(e))
            if self.status_code is None:
                self.send_json(500, ApiError(500, "InternalError",
                                             f"Internal error occurred: {e}").status())
            self.close_connection = True
        self.write_record()

    def write_record(self):
        """Records the request once: before its answer leaves (so a client never sees an
        answer whose request is not on record yet), for an exec before its status."""
        if self.recorded:
            return
        self.recorded = True
        entry = dict(self.entry, status=self.status_code)
        if self.decoded_body is not None:
            entry["body_decoded"] = self.decoded_body
        if self.exec_info is not None:
            entry["exec"] = self.exec_info
        if self.attach_info is not None:
            entry["attach"] = self.attach_info
        if self.portforward_info is not None:
            entry["portforward"] = self.portforward_info
        record(entry)

    def route(self):
        path = self.url_path
        parts = [p for p in path.split("/") if p]
        if path in ("/version", "/version/"):
            return self.send_json(200, version_info())
        if path in ("/healthz", "/livez", "/readyz"):
            return self.send_text(200, "ok")
        if not parts or parts[0] not in ("api", "apis"):
            return self.send_text(404, "404 page not found\n")
        if self.command not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise method_not_allowed()
        accept = self.headers.get("accept", "")
        want_v2 = (not ARGS.legacy_discovery) and accepts(
            accept, g="apidiscovery.k8s.io", v="v2", **{"as": "APIGroupDiscoveryList"})
        v2_type = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        if parts[0] == "api":
            if len(parts) == 1:
                if want_v2:
                    return self.send_json(200, aggregated([""]), v2_type)
                host = self.headers.get("host", "")
                return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                            "serverAddressByClientCIDRs": [
                                                {"clientCIDR": "0.0.0.0/0",
                                                 "serverAddress": host}]})
            if parts[1] != "v1":
                raise no_such_path()
            if len(parts) == 2:
                return self.send_json(200, resource_list("", "v1"))
            group, version, rest = "", "v1", parts[2:]
        else:
            if len(parts) == 1:
                if want_v2:
                    return self.send_json(200, aggregated(GROUPS), v2_type)
                return self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                            "groups": [api_group(g) for g in GROUPS]})
            if parts[1] not in GROUPS:
                raise no_such_path()
            if len(parts) == 2:
                return self.send_json(200, dict(kind="APIGroup", apiVersion="v1",
                                                **api_group(parts[1])))
            if parts[2] != "v1":
                raise no_such_path()
            if len(parts) == 3:
                return self.send_json(200, resource_list(parts[1], "v1"))
            group, version, rest = parts[1], parts[2], parts[3:]
        self.resource_request(group, version, rest)

    def resource_request(self, group, version, rest):
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status",
                                                                          "finalize"):
            ns, rest = rest[1], rest[2:]
        res = find_resource(group, version, rest[0])
        if res is None or len(rest) > 3 or (ns is not None and not res.namespaced):
            raise no_such_path()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if res.namespaced and name is not None and ns is None:
            raise no_such_path()
        m = self.command
        if sub is not None:
            return self.subresource(res, ns, name, sub)
        if res.plural == "selfsubjectreviews" and m == "POST" and name is None:
            return self.whoami()
        if res.plural == "selfsubjectaccessreviews" and m == "POST" and name is None:
            return self.can_i()
        if res.verbs == ["create"]:
            raise method_not_allowed()
        if name is None:
            if m == "GET":
                if truthy(self.param("watch")):
                    return self.watch(res, ns)
                return self.list(res, ns)
            if m == "POST":
                return self.create(res, ns)
            if m == "DELETE":
                return self.delete_collection(res, ns)
            raise method_not_allowed()
        if m == "GET":
            return self.send_object(res, STORE.get(res, ns, name))
        if m == "PUT":
            return self.update(res, ns, name)
        if m == "PATCH":
            return self.patch(res, ns, name)
        if m == "DELETE":
            return self.delete(res, ns, name)
        raise method_not_allowed()

    def param(self, name, default=None):
        values = self.params.get(name)
        return values[0] if values else default

    def json_body(self):
        ctype = self.headers.get("content-type", "").split(";")[0].strip()
        if ctype == PROTOBUF:
            self.decoded_body = decode_protobuf(self.body)
            return copy.deepcopy(self.decoded_body)
        try:
            obj = json.loads(self.body or b"null")
        except ValueError as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}")
        if not isinstance(obj, dict):
            raise bad_request("the body of the request was in an unknown format")
        return obj

    # Objects -------------------------------------------------------------------------

    def table_request(self):
        accept = self.headers.get("accept", "")
        for version in ("v1", "v1beta1"):
            if accepts(accept, g="meta.k8s.io", v=version, **{"as": "Table"}) is not None:
                first = None
                for rng in accept.split(","):
                    p = dict(x.strip().split("=", 1) for x in rng.split(";")[1:] if "=" in x)
                    if p.get("as") == "Table" and p.get("g") == "meta.k8s.io":
                        first = p.get("v")
                        break
                return first or version
        return None

    def metadata_request(self, kind):
        return accepts(self.headers.get("accept", ""), g="meta.k8s.io",
                       **{"as": kind}) is not None

    def table_type(self, version):
        return f"application/json;as=Table;v={version};g=meta.k8s.io"

    def send_object(self, res, obj, code=200):
        version = self.table_request()
        if version:
            include = self.param("includeObject", "Metadata")
            return self.send_json(code, to_table(res, [obj], obj["metadata"].get(
                "resourceVersion"), include, version=version), self.table_type(version))
        if self.metadata_request("PartialObjectMetadata"):
            return self.send_json(code, partial_metadata(obj),
                                  "application/json;as=PartialObjectMetadata;v=v1;"
                                  "g=meta.k8s.io")
        self.send_json(code, obj)

    def selected(self, res, ns):
        items, rv = STORE.list(res, ns)
        labels = label_matcher(self.param("labelSelector"))
        fields = field_matcher(res, self.param("fieldSelector"))
        return [o for o in items if labels(o) and fields(o)], rv

    def list(self, res, ns):
        items, rv = self.selected(res, ns)
        version = self.table_request()
        if version:
            include = self.param("includeObject", "Metadata")
            return self.send_json(200, to_table(res, items, rv, include, version=version),
                                  self.table_type(version))
        if self.metadata_request("PartialObjectMetadataList"):
            return self.send_json(200, {"kind": "PartialObjectMetadataList",
                                        "apiVersion": "meta.k8s.io/v1",
                                        "metadata": {"resourceVersion": rv},
                                        "items": [partial_metadata(o) for o in items]},
                                  "application/json;as=PartialObjectMetadataList;v=v1;"
                                  "g=meta.k8s.io")
        self.send_json(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                             "metadata": {"resourceVersion": rv}, "items": items})

    def watch(self, res, ns):
        labels = label_matcher(self.param("labelSelector"))
        fields = field_matcher(res, self.param("fieldSelector"))
        timeout = float(self.param("timeoutSeconds") or ARGS.watch_timeout)
        deadline = time.time() + min(timeout, 3600)
        since = self.param("resourceVersion", "")
        initial = truthy(self.param("sendInitialEvents")) or since in ("", "0")
        table = self.table_request()
        include = self.param("includeObject", "Metadata")
        first = [True]

        def shape(obj):
            if table:
                t = to_table(res, [obj], obj["metadata"]["resourceVersion"], include,
                             headers=first[0], version=table)
                first[0] = False
                return t
            return obj

        def matches(plural, ons, obj):
            return plural == res.plural and (ns is None or ons == ns) and labels(
                obj) and fields(obj)

        with STORE.cond:
            start = len(STORE.events)
            if since not in ("", "0"):
                start = next((i for i, e in enumerate(STORE.events) if e[0] > int(since)),
                             len(STORE.events))
            current = [copy.deepcopy(o) for (p, n, _), o in sorted(STORE.objects.items())
                       if matches(p, n, o)] if initial else []
            rv_now = str(STORE.rv)
        self.head(200, "application/json", extra=[("Transfer-Encoding", "chunked")])

        def chunk(data):
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")

        def event(kind, obj):
            chunk(json.dumps({"type": kind, "object": shape(obj)}).encode() + b"\n")

        for obj in current:
            event("ADDED", obj)
        if truthy(self.param("sendInitialEvents")) and truthy(
                self.param("allowWatchBookmarks")):
            chunk(json.dumps({"type": "BOOKMARK", "object": {
                "kind": res.kind, "apiVersion": res.api_version,
                "metadata": {"resourceVersion": rv_now,
                             "annotations": {"k8s.io/initial-events-end": "true"}}}}).encode()
                  + b"\n")
        at = start
        while True:
            with STORE.cond:
                while at >= len(STORE.events) and time.time() < deadline:
                    STORE.cond.wait(max(0.0, deadline - time.time()))
                fresh = STORE.events[at:]
                at = len(STORE.events)
            for _, kind, plural, ons, obj in fresh:
                if matches(plural, ons, obj):
                    event(kind, obj)
            if time.time() >= deadline:
                break
        self.wfile.write(b"0\r\n\r\n")

    def create(self, res, ns):
        obj = complete_new_object(res, ns, self.json_body())
        dry = "All" in self.params.get("dryRun", [])
        self.send_object(res, STORE.create(res, ns, obj, dry_run=dry), 201)

    def update(self, res, ns, name):
        obj = self.json_body()
        if obj.get("metadata", {}).get("name") not in (None, name):
            raise bad_request("the name of the object does not match the name on the URL")
        obj.setdefault("metadata", {})
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        self.send_object(res, STORE.replace(res, ns, name, obj))

    def patch(self, res, ns, name):
        ctype = self.headers.get("content-type", "").split(";")[0].strip()
        if ctype not in ("application/merge-patch+json",
                         "application/strategic-merge-patch+json"):
            raise ApiError(415, "UnsupportedMediaType",
                           f'the body of the request was in an unknown format - accepted '
                           f'media types include: application/merge-patch+json, '
                           f'application/strategic-merge-patch+json', {})
        obj = merge_patch(STORE.get(res, ns, name), self.json_body())
        obj["metadata"].pop("resourceVersion", None)
        self.send_object(res, STORE.replace(res, ns, name, obj))

    def delete(self, res, ns, name):
        obj = STORE.delete(res, ns, name)
        if res.plural in ("pods", "namespaces"):
            # Graceful deletion: the real server answers with the object, marked.
            obj["metadata"]["deletionTimestamp"] = rfc3339(time.time())
            if res.plural == "pods":
                options = self.json_body() if self.body else {}
                grace = options.get("gracePeriodSeconds", 30)
                obj["metadata"]["deletionGracePeriodSeconds"] = grace
            else:
                obj["status"] = {"phase": "Terminating"}
            return self.send_object(res, obj)
        details = res.details(name)
        details["uid"] = obj["metadata"]["uid"]
        self.send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Success", "details": details})

    def delete_collection(self, res, ns):
        if "deletecollection" not in res.verbs:
            raise method_not_allowed()
        items, _ = self.selected(res, ns)
        gone = [STORE.delete(res, o["metadata"].get("namespace"), o["metadata"]["name"])
                for o in items]
        self.send_json(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                             "metadata": {"resourceVersion": STORE.current_rv()},
                             "items": gone})

    # Subresources ------------------------------------------------------------------

    def subresource(self, res, ns, name, sub):
        known = {s[0] for s in res.subresources}
        if sub not in known:
            raise no_such_path()
        m = self.command
        if res.plural == "pods" and sub == "log" and m == "GET":
            return self.logs(res, ns, name)
        if res.plural == "pods" and sub == "exec" and m in ("GET", "POST"):
            return self.exec(res, ns, name)
        if res.plural == "pods" and sub == "attach" and m in ("GET", "POST"):
            return self.attach(res, ns, name)
        if res.plural == "pods" and sub == "portforward" and m in ("GET", "POST"):
            return self.portforward(res, ns, name)
        if res.plural == "deployments" and sub == "scale":
            return self.scale(res, ns, name)
        if sub == "status" and m == "GET":
            return self.send_object(res, STORE.get(res, ns, name))
        raise method_not_allowed()

    def container_of(self, pod):
        names = [c.get("name") for c in pod.get("spec", {}).get("containers", [])]
        want = self.param("container")
        if not want:
            if len(names) != 1:
                raise bad_request(f"a container name must be specified for pod "
                                  f"{pod['metadata']['name']}, choose one of: "
                                  f"[{' '.join(names)}]")
            return names[0]
        if want not in names:
            raise bad_request(f"container {want} is not valid for pod "
                              f"{pod['metadata']['name']}")
        return want

    def logs(self, res, ns, name):
        pod = STORE.get(res, ns, name)
        c = self.container_of(pod)
        started = pod.get("status", {}).get("startTime") or rfc3339(START)
        lines = [f"{started} {name}/{c}: starting",
                 f"{started} {name}/{c}: listening on 0.0.0.0:8080",
                 f"{started} {name}/{c}: ready"]
        tail = self.param("tailLines")
        if tail is not None and tail.lstrip("-").isdigit() and int(tail) >= 0:
            lines = lines[len(lines) - min(int(tail), len(lines)):]
        if not truthy(self.param("timestamps")):
            lines = [l.split(" ", 1)[1] for l in lines]
        self.send_text(200, "".join(l + "\n" for l in lines), "text/plain")

    def scale(self, res, ns, name):
        def as_scale(d):
            return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                    "metadata": {k: d["metadata"][k] for k in
                                 ("name", "namespace", "uid", "resourceVersion",
                                  "creationTimestamp")},
                    "spec": {"replicas": d["spec"].get("replicas", 0)},
                    "status": {"replicas": d["status"].get("replicas", 0),
                               "selector": ",".join(f"{k}={v}" for k, v in d["spec"].get(
                                   "selector", {}).get("matchLabels", {}).items())}}

        d = STORE.get(res, ns, name)
        if self.command == "GET":
            return self.send_json(200, as_scale(d))
        if self.command not in ("PUT", "PATCH"):
            raise method_not_allowed()
        body = self.json_body()
        scale = body if self.command == "PUT" else merge_patch(as_scale(d), body)
        replicas = int(scale.get("spec", {}).get("replicas", 0))
        d["spec"]["replicas"] = replicas
        d["metadata"]["generation"] = d["metadata"].get("generation", 1) + 1
        d["status"] = deployment_status(replicas, d["metadata"]["generation"])
        d["metadata"].pop("resourceVersion", None)
        self.send_json(200, as_scale(STORE.replace(res, ns, name, d)))

    def user_info(self):
        name, how, groups = self.who
        user = {"username": name if how != "token" else "token-user",
                "groups": list(groups) + (["system:authenticated"]
                                          if how == "client-certificate" else [])}
        if self.impersonation.get("impersonate-user"):
            user = {"username": self.impersonation["impersonate-user"][0],
                    "groups": self.impersonation.get("impersonate-group", []) + [
                        "system:authenticated"]}
        return user

    def whoami(self):
        self.json_body()  # decoded for the record; a review asks nothing
        self.send_json(201, {"kind": "SelfSubjectReview",
                             "apiVersion": "authentication.k8s.io/v1",
                             "metadata": {"creationTimestamp": None},
                             "status": {"userInfo": self.user_info()}})

    def can_i(self):
        body = self.json_body()
        body["status"] = {"allowed": True, "reason": "the fake API server allows everything"}
        body.setdefault("metadata", {})["creationTimestamp"] = None
        self.send_json(201, body)

    # exec ----------------------------------------------------------------------------

    def exec(self, res, ns, name):
        argv = self.params.get("command", [])
        opts = {k: truthy(self.param(k)) for k in ("stdin", "stdout", "stderr", "tty")}
        info = {"command": argv, "container": self.param("container"), "options": opts,
                "transport": None, "protocol": None, "offered": [], "stdin": "",
                "stdout": "", "stderr": "", "exit_code": None, "status": None, "resize": [],
                "streams": []}
        self.exec_info = info
        pod = STORE.get(res, ns, name)
        info["container"] = self.container_of(pod)
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            raise bad_request(f"cannot exec into a container in a completed pod; current "
                              f"phase is {phase}")
        if not argv:
            raise bad_request("you must specify at least one command for the container")
        if not (opts["stdin"] or opts["stdout"] or opts["stderr"]):
            raise bad_request("you must specify at least 1 of stdin, stdout, stderr")
        upgrade = self.headers.get("upgrade", "").lower()
        connection = self.headers.get("connection", "").lower()
        if upgrade == "websocket" and "upgrade" in connection:
            transport = self.upgrade_websocket(info)
        elif upgrade.startswith("spdy/") and "upgrade" in connection:
            transport = self.upgrade_spdy(info, opts)
        else:
            raise bad_request("Upgrade request required")
        if transport is None:
            return
        self.close_connection = True
        def done(rc, status, error):
            info["stdin"] = text_of(session.stdin_bytes)
            info["stdout"] = text_of(session.out[1])
            info["stderr"] = text_of(session.out[2])
            info["resize"] = session.resizes
            info["streams"] = session.streams_opened
            info["exit_code"] = rc
            info["status"] = status
            if error:
                info["error"] = error
            self.write_record()

        session = ExecSession(self.connection, argv, opts, done)
        session.run(transport)

    # attach ----------------------------------------------------------------------------

    def attach(self, res, ns, name):
        """`pods/{name}/attach`: the client joins the container's main process (see
        MainProcess), over WebSocket or SPDY as exec does; recorded when the attach
        ends, before the status goes out."""
        opts = {k: truthy(self.param(k)) for k in ("stdin", "stdout", "stderr", "tty")}
        info = {"container": self.param("container"), "options": opts, "transport": None,
                "protocol": None, "offered": [], "process": None, "stdin_delivered": None,
                "stdin": "", "stdout": "", "stderr": "", "status": None, "end": None,
                "resize": [], "streams": []}
        self.attach_info = info
        pod = STORE.get(res, ns, name)
        info["container"] = self.container_of(pod)
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            raise bad_request(f"cannot attach to a container in a completed pod; current "
                              f"phase is {phase}")
        if not (opts["stdin"] or opts["stdout"] or opts["stderr"]):
            raise bad_request("you must specify at least 1 of stdin, stdout, stderr")
        spec = next(c for c in pod["spec"]["containers"] if c.get("name") == info["container"])
        upgrade = self.headers.get("upgrade", "").lower()
        connection = self.headers.get("connection", "").lower()
        if upgrade == "websocket" and "upgrade" in connection:
            transport = self.upgrade_websocket(info)
        elif upgrade.startswith("spdy/") and "upgrade" in connection:
            transport = self.upgrade_spdy(info, opts)
        else:
            raise bad_request("Upgrade request required")
        if transport is None:
            return
        self.close_connection = True
        main, started = main_process(pod, info["container"])
        info["process"] = {"pid": main.pid, "started": started}
        info["stdin_delivered"] = bool(spec.get("stdin"))

        def done(end, status):
            info["stdin"] = text_of(session.stdin_bytes)
            info["stdout"] = text_of(session.out[1])
            info["stderr"] = text_of(session.out[2])
            info["resize"] = session.resizes
            info["streams"] = session.streams_opened
            info["status"] = status
            info["end"] = end
            self.write_record()

        session = AttachSession(self.connection, main, opts, info["stdin_delivered"], done)
        session.run(transport)

    def upgrade_websocket(self, info):
        key = self.headers.get("sec-websocket-key", "")
        offered = [p.strip() for v in self.headers.get_all("sec-websocket-protocol") or []
                   for p in v.split(",") if p.strip()]
        info["transport"], info["offered"] = "websocket", offered
        if self.headers.get("sec-websocket-version") != "13" or not key:
            raise bad_request("websocket: not a websocket handshake")
        if "v5.channel.k8s.io" in offered:
            protocol = "v5.channel.k8s.io"
        elif not offered:
            protocol = ""
        else:
            protocol = next((p for p in offered if p in WS_PROTOCOLS), None)
            if protocol is None:
                raise bad_request(f"requested protocol(s) are not supported: {offered}; "
                                  f"supports {WS_PROTOCOLS}")
        info["protocol"] = protocol or "channel.k8s.io"
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.status_code = 101
        self.send_response_only(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        if protocol:
            self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        return WebSocketTransport(self.connection, protocol or "channel.k8s.io")

    def upgrade_spdy(self, info, opts):
        offered = [p.strip() for v in self.headers.get_all("x-stream-protocol-version") or []
                   for p in v.split(",") if p.strip()]
        info["transport"], info["offered"] = "spdy", offered
        if offered:
            protocol = next((p for p in offered if p in SPDY_PROTOCOLS), None)
            if protocol is None:
                self.send_text(403, f"unable to upgrade: unable to negotiate protocol: client "
                                    f"supports {offered}, server accepts {SPDY_PROTOCOLS}")
                return None
        else:
            protocol = "channel.k8s.io"
        info["protocol"] = protocol
        self.status_code = 101
        self.send_response_only(101)
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "SPDY/3.1")
        if offered:
            self.send_header("X-Stream-Protocol-Version", protocol)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", "0")
        self.end_headers()
        expected = ["error"] + [t for t in ("stdin", "stdout", "stderr") if opts[t] and not (
            t == "stderr" and opts["tty"])]
        if opts["tty"] and protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
            expected.append("resize")
        return SpdyTransport(self.connection, protocol, expected)

    # port-forward ----------------------------------------------------------------------

    def portforward(self, res, ns, name):
        """`pods/{name}/portforward` over SPDY or SPDY tunnelled in WebSocket (see
        PortForwardSession), recorded once the connection has ended."""
        info = {"transport": None, "protocol": None, "subprotocol": None, "offered": [],
                "query_ports": self.params.get("ports", []), "ports": [], "streams": [],
                "connections": [], "bytes_to_pod": 0, "bytes_from_pod": 0, "end": None}
        self.portforward_info = info
        pod = STORE.get(res, ns, name)
        upgrade = self.headers.get("upgrade", "").lower()
        connection = self.headers.get("connection", "").lower()
        if upgrade == "websocket" and "upgrade" in connection:
            wire = self.upgrade_portforward_websocket(info)
        elif upgrade.startswith("spdy/") and "upgrade" in connection:
            wire = self.upgrade_portforward_spdy(info)
        else:
            raise bad_request("Upgrade request required")
        if wire is None:
            return
        self.close_connection = True
        # The kubelet names the pod by its sandbox in errors.
        sandbox = hashlib.sha256(pod["metadata"]["uid"].encode()).hexdigest()
        PortForwardSession(self.connection, wire, info, sandbox).run()
        if isinstance(wire, WebSocketTunnel):
            info["messages"] = wire.messages

    def upgrade_portforward_websocket(self, info):
        """The API server's tunneling handler: the SPDY protocols offered behind the
        `SPDY/3.1+` prefix go to the kubelet, whose choice comes back with the prefix."""
        key = self.headers.get("sec-websocket-key", "")
        offered = [p.strip() for v in self.headers.get_all("sec-websocket-protocol") or []
                   for p in v.split(",") if p.strip()]
        info["transport"], info["offered"] = "websocket", offered
        if self.headers.get("sec-websocket-version") != "13" or not key:
            raise bad_request("websocket: not a websocket handshake")
        tunnelled = [p[len(SPDY_TUNNEL_PREFIX):] for p in offered
                     if p.startswith(SPDY_TUNNEL_PREFIX) and p.endswith(".k8s.io")]
        if not tunnelled:
            # The channel protocols of port-forward over plain WebSocket (`ports=` in the
            # query) are the kubelet's; no kubectl speaks them, this server does not.
            self.send_text(400, "unable to upgrade: no tunneling spdy protocols provided\n")
            return None
        if PORTFORWARD_PROTOCOL not in tunnelled:
            self.send_text(403, f"unable to upgrade: unable to negotiate protocol: client "
                                f"supports {tunnelled}, server accepts "
                                f"[{PORTFORWARD_PROTOCOL}]\n")
            return None
        subprotocol = SPDY_TUNNEL_PREFIX + PORTFORWARD_PROTOCOL
        info["protocol"], info["subprotocol"] = PORTFORWARD_PROTOCOL, subprotocol
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.status_code = 101
        self.send_response_only(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", subprotocol)
        self.end_headers()
        return WebSocketTunnel(self.connection, subprotocol)

    def upgrade_portforward_spdy(self, info):
        """The kubelet's handshake (httpstream.Handshake): `portforward.k8s.io` must be
        offered."""
        offered = [p.strip() for v in self.headers.get_all("x-stream-protocol-version") or []
                   for p in v.split(",") if p.strip()]
        info["transport"], info["offered"] = "spdy", offered
        if not offered:
            self.send_text(400, "unable to upgrade: X-Stream-Protocol-Version is required\n")
            return None
        if PORTFORWARD_PROTOCOL not in offered:
            self.send_text(403, f"unable to upgrade: unable to negotiate protocol: client "
                                f"supports {offered}, server accepts "
                                f"[{PORTFORWARD_PROTOCOL}]\n")
            return None
        info["protocol"] = PORTFORWARD_PROTOCOL
        self.status_code = 101
        self.send_response_only(101)
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "SPDY/3.1")
        self.send_header("X-Stream-Protocol-Version", PORTFORWARD_PROTOCOL)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", "0")
        self.end_headers()
        return RawSpdyWire(self.connection)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (also used for strategic merge patches: the same for the
    maps and scalars tests patch)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def close_tls(sock):
    """Ends TLS with a close_notify alert, as Go's tls.Conn.Close does (so a peer reading
    on sees the end of the stream, not a truncation), without waiting for the peer's, then
    closes the socket."""
    try:
        sock.setblocking(False)
        sock.unwrap()
    except (ssl.SSLError, OSError, ValueError):
        pass  # the alert went (the peer's answer is not awaited), or the peer is gone
    try:
        sock.close()
    except OSError:
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, context):
        self.context = context
        super().__init__(addr, Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake happens in the connection's own thread, never in the
        # accepting one.
        if self.context is not None:
            try:
                request.settimeout(30)
                request = self.context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except ssl.SSLEOFError:
                return  # a connection closed before any TLS (a readiness probe)
            except (ssl.SSLError, OSError) as e:
                log("TLS handshake with %s:%s failed:" % client_address[:2], e)
                return
        try:
            Handler(request, client_address, self)
        finally:
            if self.context is not None:
                close_tls(request)

    def handle_error(self, request, client_address):
        log("connection error from %s:%s:" % client_address[:2], repr(sys.exc_info()[1]))


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--client-ca")
    p.add_argument("--token")
    p.add_argument("--record", required=True)
    p.add_argument("--watch-timeout", type=float, default=5.0,
                   help="how long a watch without timeoutSeconds lasts (seconds)")
    p.add_argument("--legacy-discovery", action="store_true",
                   help="never answer aggregated discovery")
    p.add_argument("--pod-port", action="append", default=[], metavar="PORT=HOSTPORT",
                   help="port-forward to any pod's PORT connects to 127.0.0.1:HOSTPORT "
                        "(repeatable)")
    ARGS = p.parse_args()
    pod_ports = {}
    for mapping in ARGS.pod_port:
        pod_port, _, host_port = mapping.partition("=")
        if not (pod_port.isdigit() and host_port.isdigit()):
            p.error(f"--pod-port {mapping!r}: expected PORT=HOSTPORT")
        pod_ports[int(pod_port)] = int(host_port)
    ARGS.pod_port = pod_ports
    context = None
    if ARGS.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ARGS.cert, ARGS.key)
        context.set_alpn_protocols(["http/1.1"])
        if ARGS.client_ca:
            context.load_verify_locations(ARGS.client_ca)
            context.verify_mode = ssl.CERT_OPTIONAL
    open(ARGS.record, "a").close()
    seed()
    server = Server((ARGS.host, ARGS.port), context)
    scheme = "https" if context else "http"
    print(f"listening on {scheme}://{ARGS.host}:{ARGS.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
