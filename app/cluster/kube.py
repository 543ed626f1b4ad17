"""The one adapter to the Kubernetes API (the official client, which is blocking: every call runs
in a thread). Creates are idempotent (409 means done), deletes tolerate 404, and 429, 5xx,
timeouts and connection errors are retried with exponential backoff (tenacity)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import structlog
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

log = structlog.get_logger("vdi.kube")

Kind = Literal[
    "Pod", "Secret", "Service", "PersistentVolumeClaim", "IngressRoute", "DaemonSet", "Event"
]
Items = list[dict[str, Any]]  # (`list` is also a method name below)
T = TypeVar("T")

REQUEST_TIMEOUT = (3.0, 10.0)  # connect, read (seconds)
RETRY_ATTEMPTS = 6
WATCH_TIMEOUT_S = 240
CALL_THREADS = 32
POOL_CONNECTIONS = CALL_THREADS + 3  # and the two watches': none opened and discarded
CORE_PLURALS = {
    "Pod": "pods",
    "Secret": "secrets",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Event": "events",
}
LIST_PAGE = 500  # items per page of a paged list
# Accept header of a metadata-only list (what `kubectl get` asks for): names, labels, owners.
METADATA_LIST_ACCEPT = (
    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
)


class ClusterError(Exception):
    """A call the cluster refused. `temporary`: worth retrying later (the reconciler will)."""

    def __init__(self, message: str, *, status: int | None = None, temporary: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.temporary = temporary


def _is_temporary(error: BaseException) -> bool:
    if isinstance(error, ApiException):
        return error.status in (0, 408, 429) or (error.status or 0) >= 500
    return isinstance(error, urllib3.exceptions.HTTPError | OSError | TimeoutError)


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, ERROR, or RESYNC (the watch restarted: re-list)
    object: dict[str, Any]


class KubeCluster:
    """Namespaced CRUD on the kinds a session needs, plain dicts in and out (camelCase, as the
    API sends them: no client models built on the way in or out, see `_request`)."""

    def __init__(
        self, api_client: client.ApiClient, namespace: str, ingress_api_version: str
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.core = client.CoreV1Api(api_client)
        self.ingress_group, self.ingress_version = ingress_api_version.split("/")
        # Its own threads: blocking cluster calls never starve asyncio.to_thread's small pool.
        self._executor = ThreadPoolExecutor(max_workers=CALL_THREADS, thread_name_prefix="vdi-kube")
        # Told of each call that failed for good (verb, kind, error class): the metrics'
        # `vdi_cluster_errors_total`. A 404 or a 409, which callers expect, is not an error.
        self.on_error: Callable[[str, str, str], None] | None = None

    @classmethod
    def for_host(
        cls,
        host: str,
        namespace: str,
        ingress_api_version: str,
        token: str | None = None,
        ca_file: str | None = None,
    ) -> KubeCluster:
        """A client of the API at `host` (the in-process fake: with its bearer token and the
        file of its CA)."""
        configuration = client.Configuration(host=host)
        configuration.connection_pool_maxsize = POOL_CONNECTIONS
        if ca_file is not None:
            configuration.ssl_ca_cert = ca_file
        if token is not None:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return cls(client.ApiClient(configuration), namespace, ingress_api_version)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()

    async def _call(self, action: str, function: Callable[[], T]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_temporary),
            stop=stop_after_attempt(RETRY_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    loop = asyncio.get_running_loop()
                    return await loop.run_in_executor(self._executor, function)
        except ApiException as error:
            if error.status not in (404, 409):
                self._count_error(action, _error_class(error.status))
            raise ClusterError(
                f"{action}: {_message(error)}", status=error.status, temporary=_is_temporary(error)
            ) from None
        except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as error:
            timeout = isinstance(error, TimeoutError | urllib3.exceptions.TimeoutError)
            self._count_error(action, "timeout" if timeout else "connection")
            raise ClusterError(
                f"{action}: {type(error).__name__}: {error}", temporary=True
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_error(self, action: str, error: str) -> None:
        if self.on_error is not None:
            verb, _, rest = action.partition(" ")
            self.on_error(verb, rest.split(" ")[0] or "-", error)

    def _path(self, kind: Kind, name: str | None = None) -> str:
        if kind == "IngressRoute":
            collection = (
                f"/apis/{self.ingress_group}/{self.ingress_version}/namespaces/{self.namespace}"
                "/ingressroutes"
            )
        elif kind == "DaemonSet":
            collection = f"/apis/apps/v1/namespaces/{self.namespace}/daemonsets"
        else:
            collection = f"/api/v1/namespaces/{self.namespace}/{CORE_PLURALS[kind]}"
        return collection if name is None else f"{collection}/{quote(name, safe='')}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: list[tuple[str, Any]] | None = None,
        accept: str = "application/json",
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> bytes:
        """One call through the official client's transport (its configuration, bearer token
        and its refresh, TLS, urllib3 pool), in the calling thread; the body as received, and
        ApiException for what is not 2xx, as the generated methods raise it. Not through the
        generated methods themselves: from v34 they validate their arguments with pydantic and
        turn a manifest into the client's models and back on every call (pydantic
        `validate_call`, `sanitize_for_serialization`), most of the reconciler's CPU per
        session; our manifests are plain JSON already."""
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        method, url, headers, _body, _post = self.api_client.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(
            method, url, headers, body=body, _request_timeout=timeout
        )
        data: bytes = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return data

    async def create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        """Create, or return the object that already exists under that name (idempotent)."""
        name = body["metadata"]["name"]
        path = self._path(kind)
        try:
            response = await self._call(
                f"create {kind} {name}",
                lambda: json.loads(self._request("POST", path, body=body)),
            )
        except ClusterError as error:
            if error.status != 409:
                raise
            existing = await self.get(kind, name)
            if existing is None:  # deleted in between: the next reconcile creates it again
                raise ClusterError(
                    f"create {kind} {name}: conflict with an object being deleted"
                ) from None
            return existing
        return dict(response)

    async def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        path = self._path(kind, name)
        try:
            response = await self._call(
                f"read {kind} {name}", lambda: json.loads(self._request("GET", path))
            )
        except ClusterError as error:
            if error.status == 404:
                return None
            raise
        return dict(response)

    async def delete(self, kind: Kind, name: str) -> bool:
        """Delete; False when it was already gone."""
        path = self._path(kind, name)
        try:
            await self._call(f"delete {kind} {name}", lambda: self._request("DELETE", path))
        except ClusterError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def list(self, kind: Kind, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """Every object that matches, whole, and the list's resourceVersion (a watch starts
        there). Fetched in pages and parsed in the calling thread, not on the event loop."""
        items: list[dict[str, Any]] = []
        version, token = "", None
        while True:
            body = await self._page(kind, label_selector, token, metadata_only=False)
            items.extend(body.get("items") or [])
            version = version or str(body.get("metadata", {}).get("resourceVersion", ""))
            token = body.get("metadata", {}).get("continue")
            if not token:
                return items, version

    async def list_metadata(self, kind: Kind, label_selector: str) -> AsyncIterator[Items]:
        """The metadata (name, labels, owners) of every object that matches, a page at a time:
        a sweep of thousands of objects never holds megabytes, nor parses them on the loop."""
        token = None
        while True:
            body = await self._page(kind, label_selector, token, metadata_only=True)
            yield [item.get("metadata") or {} for item in body.get("items") or []]
            token = body.get("metadata", {}).get("continue")
            if not token:
                return

    async def latest_version(self, kind: Kind, field_selector: str) -> str:
        """The collection's current resourceVersion (a list of one item): a watch from there
        sees what happens from now on."""
        path = self._path(kind)
        query = [("fieldSelector", field_selector), ("limit", 1)]
        body = await self._call(
            f"list {kind}", lambda: json.loads(self._request("GET", path, query=query))
        )
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def _page(
        self, kind: Kind, label_selector: str, token: str | None, *, metadata_only: bool
    ) -> dict[str, Any]:
        query: list[tuple[str, Any]] = [("labelSelector", label_selector), ("limit", LIST_PAGE)]
        if token:
            query.append(("continue", token))
        accept = METADATA_LIST_ACCEPT if metadata_only else "application/json"
        path = self._path(kind)

        def fetch() -> dict[str, Any]:
            # parsed in the worker thread
            return dict(json.loads(self._request("GET", path, query=query, accept=accept)))

        return await self._call(f"list {kind}", fetch)

    async def ping(self) -> None:
        path = self._path("Pod")
        await self._call(
            "list pods",
            lambda: self._request("GET", path, query=[("limit", 1)], timeout=(2.0, 3.0)),
        )

    def watch_pods(self, label_selector: str, resource_version: str) -> AsyncIterator[WatchEvent]:
        return self.watch("Pod", resource_version, label_selector=label_selector)

    async def watch(
        self,
        kind: Literal["Pod", "Event"],
        resource_version: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Changes of `kind` from `resource_version` until the server ends the watch (then return:
        the caller watches again from the last event's resourceVersion). A 410 Gone (history
        expired) yields RESYNC: the caller re-lists. Events stay plain dicts (`deserialize=
        False`): turning each into client models is what cost KubeSpawner's hub most of its CPU
        at 2,000 servers (kubespawner#423), and only the raw object is used."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()
        stopper = watch.Watch()
        stopped = threading.Event()

        def pump() -> None:
            try:
                lister = (
                    self.core.list_namespaced_pod
                    if kind == "Pod"
                    else self.core.list_namespaced_event
                )
                for event in stopper.stream(
                    lister,
                    self.namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    resource_version=resource_version or None,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    _request_timeout=(REQUEST_TIMEOUT[0], WATCH_TIMEOUT_S + 30),
                    _preload_content=False,
                    deserialize=False,
                ):
                    if stopped.is_set():
                        break
                    raw = event.get("object") or {}
                    loop.call_soon_threadsafe(queue.put_nowait, WatchEvent(event["type"], raw))
            except BaseException as error:
                loop.call_soon_threadsafe(queue.put_nowait, error)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        thread = threading.Thread(target=pump, name=f"vdi-watch-{kind.lower()}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, ApiException) and item.status == 410:
                    yield WatchEvent("RESYNC", {})
                    return
                if isinstance(item, BaseException):
                    raise ClusterError(f"watch {kind}: {item}", temporary=True)
                if item.type == "ERROR" and item.object.get("code") == 410:
                    yield WatchEvent("RESYNC", {})
                    return
                yield item
        finally:
            stopped.set()
            stopper.stop()


def detect_cluster(
    mode: str, *, local_ready: bool = False
) -> Literal["kubernetes", "local", "simulated"]:
    """Where the cluster is: `kubernetes` needs in-cluster config or a kubeconfig; `auto`
    without one runs local desktops when this machine can (`local_ready`), else the
    simulation."""
    if mode == "simulated":
        return "simulated"
    if mode == "local":
        return "local"
    with contextlib.suppress(config.ConfigException):
        config.load_incluster_config()
        return "kubernetes"
    kubeconfig = os.environ.get(
        "KUBECONFIG", os.path.expanduser(config.KUBE_CONFIG_DEFAULT_LOCATION)
    )
    if os.path.exists(kubeconfig.split(os.pathsep)[0]):
        with contextlib.suppress(config.ConfigException):
            config.load_kube_config()
            return "kubernetes"
    if mode == "kubernetes":
        raise ClusterError(
            "VDI_CLUSTER=kubernetes but there is neither an in-cluster service account nor a "
            "kubeconfig (KUBECONFIG or ~/.kube/config)",
            temporary=False,
        )
    return "local" if local_ready else "simulated"


def real_cluster(namespace: str, ingress_api_version: str) -> KubeCluster:
    """After detect_cluster() said `kubernetes`: the loaded default configuration."""
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = POOL_CONNECTIONS
    return KubeCluster(client.ApiClient(configuration), namespace, ingress_api_version)


def _error_class(status: int | None) -> str:
    """A failed call's status as a bounded label: 429, 5xx, 4xx (or `connection`)."""
    if status is None:
        return "connection"
    if status == 429:
        return "429"
    return "5xx" if status >= 500 else "4xx"
