"""A fake Kubernetes API server on loopback HTTP: the subset of the core/v1 API that the cncf
provider's KubernetesPodOperator (sync client) and KubernetesPodTrigger / AsyncKubernetesHook
(kubernetes_asyncio) call for one pod, and a kubelet the test drives by hand.

Served: pod create, get, list (``labelSelector``: ``k=v``, ``k!=v``, ``!k``), patch (merge of
labels and annotations), delete, container log, and the pod's events (list and ``watch=true``).
Every request needs the kubeconfig's bearer token and is recorded in :attr:`FakeKubeApi.requests`.

Simulated, not run: the scheduler, the kubelet and the Kata/CoCo runtime. A created pod stays
``Pending`` until the test calls :meth:`FakeKubeApi.schedule`, :meth:`~FakeKubeApi.start` and
:meth:`~FakeKubeApi.finish` (exit code, termination message, log lines); the container's command
is never executed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

TOKEN = "fake-kube-token"  # the kubeconfig's bearer token (a test server's)
_WATCH_HOLD_S = 1.0  # a watch with no new events is held open this long, then ends


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def flag(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter as the API server parses it (Go's strconv.ParseBool)."""
    return query.get(name, ["false"])[0] in ("1", "t", "T", "true", "TRUE", "True")


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


@dataclass(frozen=True)
class Request:
    seq: int
    method: str
    path: str
    query: dict[str, list[str]]


class FakeKubeApi:
    """The fake API server, serving in a thread until :meth:`close`."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict] = {}
        self.deleted: list[tuple[str, str]] = []
        self.requests: list[Request] = []
        self._logs: dict[tuple[str, str], list[str]] = {}
        self._events: dict[tuple[str, str], list[dict]] = {}
        self._version = 0
        self._lock = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the test reads api.requests
                pass

            def do_GET(self) -> None:
                api._handle(self, "GET")

            def do_POST(self) -> None:
                api._handle(self, "POST")

            def do_PATCH(self) -> None:
                api._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                api._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for this server (bearer token auth), written to ``path``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "airflow", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "airflow"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- the simulated scheduler and kubelet -----------------------------------------------------

    def only_pod(self) -> tuple[str, str]:
        """(namespace, name) of the one pod created so far."""
        with self._lock:
            ((key, _),) = self.pods.items()
            return key

    def schedule(self, namespace: str, name: str) -> None:
        """Bound to a node; the sandbox and image pull still pending."""
        self._update(namespace, name, phase="Pending", scheduled=True)
        self._event(namespace, name, "Scheduled", "assigned to the confidential GPU node")

    def start(self, namespace: str, name: str) -> None:
        self._update(
            namespace,
            name,
            phase="Running",
            scheduled=True,
            state={"running": {"startedAt": _now()}},
        )
        self._event(namespace, name, "Started", "started container base")

    def finish(
        self, namespace: str, name: str, *, exit_code: int, message: str = "", logs=()
    ) -> None:
        """The container exits with ``exit_code`` (0: pod Succeeded, else Failed)."""
        with self._lock:
            self._logs.setdefault((namespace, name), []).extend(logs)
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "message": message or None,
            "startedAt": _now(),
            "finishedAt": _now(),
        }
        phase = "Succeeded" if exit_code == 0 else "Failed"
        self._update(namespace, name, phase=phase, scheduled=True, state={"terminated": terminated})

    def wait_for(self, what: str, done: Callable[[], bool], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake Kubernetes API: {what} not seen in {timeout_s} s")
                self._lock.wait(min(left, 0.2))

    def pod_reads(self, name: str, since: int = 0) -> int:
        """GETs of pod ``name`` (by any client) after request number ``since``."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.seq > since and r.method == "GET" and r.path.endswith(f"/pods/{name}")
            )

    def last_seq(self) -> int:
        with self._lock:
            return self.requests[-1].seq if self.requests else 0

    def _update(self, namespace: str, name: str, *, phase: str, scheduled: bool, state=None):
        with self._lock:
            pod = self.pods[(namespace, name)]
            status = pod["status"]
            status["phase"] = phase
            status["conditions"] = [
                {"type": "PodScheduled", "status": "True" if scheduled else "False"}
            ]
            if state is not None:
                container = pod["spec"]["containers"][0]
                status["containerStatuses"] = [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": container["image"],
                        "ready": "running" in state,
                        "restartCount": 0,
                        "started": "running" in state,
                        "state": state,
                    }
                ]
            self._bump(pod)
            self._lock.notify_all()

    def _event(self, namespace: str, name: str, reason: str, message: str) -> None:
        with self._lock:
            self._version += 1
            self._events.setdefault((namespace, name), []).append(
                {
                    "metadata": {
                        "name": f"{name}.{self._version}",
                        "namespace": namespace,
                        "resourceVersion": str(self._version),
                    },
                    "involvedObject": {"kind": "Pod", "name": name, "namespace": namespace},
                    "reason": reason,
                    "message": message,
                    "type": "Normal",
                    "lastTimestamp": _now(),
                }
            )
            self._lock.notify_all()

    def _bump(self, obj: dict) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    # -- HTTP --------------------------------------------------------------------------------------

    def _handle(self, http: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(http.path)
        query = parse_qs(parts.query)
        length = int(http.headers.get("Content-Length") or 0)
        body = json.loads(http.rfile.read(length)) if length else None
        with self._lock:
            self.requests.append(Request(len(self.requests) + 1, method, parts.path, query))
            self._lock.notify_all()
        if http.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(http, 401, _status(401, "Unauthorized", "no valid bearer token"))
        segments = parts.path.strip("/").split("/")
        # api/v1/namespaces/<ns>/<kind>[/<name>[/log]]
        if segments[:3] != ["api", "v1", "namespaces"] or len(segments) < 5:
            return self._send(http, 404, _status(404, "NotFound", f"no route {parts.path}"))
        namespace, kind, rest = segments[3], segments[4], segments[5:]
        if kind == "events" and method == "GET" and not rest:
            return self._events_answer(http, namespace, query)
        if kind != "pods":
            return self._send(http, 404, _status(404, "NotFound", f"no route {parts.path}"))
        if not rest:
            if method == "POST":
                return self._create(http, namespace, body)
            if method == "GET":
                return self._list(http, namespace, query)
        name = rest[0]
        with self._lock:
            pod = self.pods.get((namespace, name))
        if pod is None:
            return self._send(http, 404, _status(404, "NotFound", f'pods "{name}" not found'))
        if rest[1:] == ["log"] and method == "GET":
            return self._log_answer(http, namespace, name, query)
        if rest[1:]:
            return self._send(http, 404, _status(404, "NotFound", f"no route {parts.path}"))
        if method == "GET":
            with self._lock:
                return self._send(http, 200, pod)
        if method == "PATCH":
            with self._lock:
                for field in ("labels", "annotations"):
                    update = (body or {}).get("metadata", {}).get(field) or {}
                    pod["metadata"].setdefault(field, {}).update(update)
                self._bump(pod)
                return self._send(http, 200, pod)
        if method == "DELETE":
            with self._lock:
                del self.pods[(namespace, name)]
                self.deleted.append((namespace, name))
                self._lock.notify_all()
                return self._send(http, 200, pod)
        return self._send(http, 405, _status(405, "MethodNotAllowed", method))

    def _create(self, http, namespace: str, pod: dict) -> None:
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        name = meta.get("name")
        with self._lock:
            if (namespace, name) in self.pods:
                return self._send(http, 409, _status(409, "AlreadyExists", f"pod {name} exists"))
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
            pod["status"] = {"phase": "Pending", "conditions": []}
            self._bump(pod)
            self.pods[(namespace, name)] = pod
            self._lock.notify_all()
            return self._send(http, 201, pod)

    def _list(self, http, namespace: str, query) -> None:
        selector = query.get("labelSelector", [""])[0]
        with self._lock:
            items = [
                p
                for (ns, _), p in self.pods.items()
                if ns == namespace and _selector_matches(selector, p["metadata"].get("labels", {}))
            ]
            body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
            return self._send(http, 200, body)

    def _running(self, key: tuple[str, str]) -> bool:
        pod = self.pods.get(key)
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
        return any("running" in c["state"] for c in statuses)

    def _log_answer(self, http, namespace: str, name: str, query) -> None:
        """The container's log; with ``follow=true`` on a running container the stream stays
        open until the container ends or the pod is deleted, as a real API server's does."""
        key = (namespace, name)
        follow = flag(query, "follow")
        with self._lock:
            lines = list(self._logs.get(key, []))
            running = self._running(key)
        if not (follow and running):
            data = "".join(line + "\n" for line in lines).encode()
            return self._send_raw(http, 200, data, "text/plain")
        http.send_response(200)
        http.send_header("Content-Type", "text/plain")
        http.send_header("Connection", "close")
        http.end_headers()
        sent = 0
        while True:  # a client that hangs up ends the stream (BrokenPipeError below)
            with self._lock:
                lines = list(self._logs.get(key, []))
                still = self._running(key)
                if still and len(lines) == sent:
                    self._lock.wait(0.2)
                    continue
            try:
                http.wfile.write("".join(line + "\n" for line in lines[sent:]).encode())
                http.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                break
            sent = len(lines)
            if not still:
                break
        http.close_connection = True

    def _events_answer(self, http, namespace: str, query) -> None:
        field = query.get("fieldSelector", [""])[0]
        name = field.removeprefix("involvedObject.name=")
        since = int(query.get("resourceVersion", ["0"])[0] or 0)
        with self._lock:
            events = [
                e
                for e in self._events.get((namespace, name), [])
                if int(e["metadata"]["resourceVersion"]) > since
            ]
        if not flag(query, "watch"):
            body = {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": events}
            return self._send(http, 200, body)
        # A watch: the events so far, then the stream stays open a while and ends (the client
        # reconnects from the last resourceVersion, as it does when a real watch times out).
        lines = b"".join(
            json.dumps({"type": "ADDED", "object": e}).encode() + b"\n" for e in events
        )
        http.send_response(200)
        http.send_header("Content-Type", "application/json")
        http.send_header("Connection", "close")
        http.end_headers()
        http.wfile.write(lines)
        http.wfile.flush()
        time.sleep(_WATCH_HOLD_S)
        http.close_connection = True

    @staticmethod
    def _send(http, code: int, body: dict) -> None:
        FakeKubeApi._send_raw(http, code, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send_raw(http, code: int, data: bytes, content_type: str) -> None:
        http.send_response(code)
        http.send_header("Content-Type", content_type)
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)
