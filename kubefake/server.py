"""FakeKubernetes: kmock's KubernetesEmulator extended where a controller needs a real API server.

This module is the API server: authentication, the request path (discovery, OpenAPI, lists
with selectors and pages, watches with watch-list and tables, creates, patches and graceful pod
deletion), the indexes, and the tick that runs the rest. The rest is by job: `admission`
(schemas and defaults), `scheduler` (GPU capacity, claims), `kubelet` (the node, pulls,
starts, crashes, termination), `controllers` (EndpointSlices, DaemonSets, garbage
collection), `events` (the Event recorder), `faults` (injected latency and failures),
`selectors` (label and field selectors), `tables` (kubectl's table output)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import hmac
import json
import math
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock import Bus  # type: ignore[attr-defined]  # exported at its top level, not in __all__

from kubefake import errors, kubelet, openapi, resources, selectors, tables, tls
from kubefake.admission import Admission
from kubefake.autoscaler import Autoscaler, NodeGroup
from kubefake.controllers import DaemonSets, EndpointSlices, collect_garbage
from kubefake.events import EventRecorder
from kubefake.faults import FaultInjector, FaultPlan
from kubefake.kubelet import NODE_IP, NODE_NAME, Kubelet
from kubefake.resources import K8S_VERSION, Kind
from kubefake.scheduler import Scheduler
from kubefake.store import (
    DAEMONSET,
    ENDPOINTSLICE,
    EVENT,
    NODE,
    POD,
    Index,
    Key,
    Raw,
)

METADATA_LIST = "as=PartialObjectMetadataList"  # in Accept: list metadata only (as kubectl can)
RBAC_VERBS = {"FETCH": "get", "UPDATE": "patch"}  # kmock action -> RBAC verb (others: lowercased)


def _check_selectors(request: kmock.Request) -> None:
    """400 for a label or field selector the API server would refuse."""
    try:
        selectors.parse(request.params.get("labelSelector"))
        selectors.parse_fields(
            request.params.get("fieldSelector"),
            str(request.resource.plural if request.resource else ""),
        )
    except ValueError as error:
        raise errors.bad_request(str(error)) from None


class _HookedBus(Bus[Any]):
    """A watch bus that shows every change to a hook before its watchers see it."""

    def __init__(self, hook: Callable[[Any, dict[str, Any]], None], resource: Any) -> None:
        super().__init__()
        self._hook = hook
        self._resource = resource

    async def put(self, *items: Any) -> None:
        for item in items:
            self._hook(self._resource, item)
        await super().put(*items)


class _HookedBuses(dict[Any, _HookedBus]):
    def __init__(self, hook: Callable[[Any, dict[str, Any]], None]) -> None:
        super().__init__()
        self._hook = hook

    def __missing__(self, resource: Any) -> _HookedBus:
        bus = self[resource] = _HookedBus(self._hook, resource)
        return bus


# The request a task serves (FakeKubernetes.__iter__).
_CURRENT_REQUEST: contextvars.ContextVar[kmock.Request | None] = contextvars.ContextVar(
    "fake_kubernetes_request", default=None
)


@attrs.define(kw_only=True)
class FakeKubernetes(kmock.KubernetesEmulator):
    gpu_capacity: int = 4
    # A cluster autoscaler's node group (kubefake.autoscaler): nodes that join later for the
    # pods left Pending for lack of GPUs. None: a cluster without one (no scale-up, no events).
    autoscaler_group: NodeGroup | None = None
    faults: FaultPlan = attrs.field(factory=FaultPlan)
    kubelet_interval_s: float = 0.02
    termination_delay_s: float = 0.05
    failing_images: tuple[str, ...] = ("does-not-exist",)
    crashing_images: tuple[str, ...] = ("crashes",)
    on_pod_running: Callable[[dict[str, Any]], Coroutine[Any, Any, None]] | None = None
    # A container runtime behind the kubelet (app.runtimes.local): told of each pod admitted
    # (it may annotate it), and of each pod being deleted, which stays until that returns.
    on_pod_admitted: Callable[[dict[str, Any]], None] | None = None
    on_pod_terminating: Callable[[dict[str, Any]], Coroutine[Any, Any, None]] | None = None
    # The node's image store: a pod whose image is there starts at once ("already present on
    # machine"); any other pulls it for `image_pull_s` first. `keep_pulled_images=False` is a
    # fleet of fresh nodes: every pod pulls (but a pre-pull DaemonSet still fills the store).
    image_pull_s: float = 0.0
    keep_pulled_images: bool = True
    node_images: set[str] = attrs.field(factory=set)
    keep_request_log: bool = False
    validate: bool = True  # admission against the official schemas (pure Python: ~30 ms a Pod)
    # The address the kubelet gives a pod that starts (an end-to-end test gives its network
    # namespace's); None or unset: the next of the pod network's, 10.42.0.0/16.
    pod_ip: Callable[[dict[str, Any]], str | None] | None = None
    # A bearer token every request must carry (401 otherwise), as a real API server asks of
    # its clients; None: open (tests on loopback).
    token: str | None = attrs.field(default=None, repr=False)
    ca_pem: bytes | None = attrs.field(default=None, init=False)  # its CA, when it has TLS
    api_calls: int = attrs.field(default=0, init=False)
    verbs: set[tuple[str, str, str]] = attrs.field(factory=set, init=False)

    # The parts, by job (made in __attrs_post_init__).
    index: Index = attrs.field(factory=Index, init=False)
    admission: Admission = attrs.field(init=False)
    injector: FaultInjector = attrs.field(init=False)
    events: EventRecorder = attrs.field(init=False)
    scheduler: Scheduler = attrs.field(init=False)
    autoscaler: Autoscaler | None = attrs.field(default=None, init=False)
    kubelet: Kubelet = attrs.field(init=False)
    endpoint_slices: EndpointSlices = attrs.field(init=False)
    daemonsets: DaemonSets = attrs.field(init=False)
    _resource_version: int = attrs.field(default=1, init=False)
    _tick_task: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    _runtime_tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind in resources.KINDS:
            self.resources[f"{kind.api_version}/{kind.plural}"] = kmock.ResourceInfo(
                kind=kind.kind,
                namespaced=kind.namespaced,
                singular=kind.singular_name,
                verbs=set(resources.VERBS),
                shortnames=set(kind.short_names),
                categories=set(kind.categories),
            )
        self.admission = Admission(validate=self.validate, next_version=self.next_version)
        self.injector = FaultInjector(self.faults.seed)
        self.events = EventRecorder(self, NODE_NAME)
        self.scheduler = Scheduler(
            self,
            self.events,
            node_name=NODE_NAME,
            node_ip=NODE_IP,
            gpu_capacity=self.gpu_capacity,
        )
        if self.autoscaler_group is not None:
            self.autoscaler = Autoscaler(self, self.events, self.scheduler, self.autoscaler_group)
        self.kubelet = Kubelet(
            self,
            self.events,
            self.scheduler,
            node_images=self.node_images,
            image_pull_s=self.image_pull_s,
            keep_pulled_images=self.keep_pulled_images,
            failing_images=self.failing_images,
            crashing_images=self.crashing_images,
            pod_ip=self.pod_ip,
        )
        self.endpoint_slices = EndpointSlices(self)
        self.daemonsets = DaemonSets(self, self.node_images, self.image_pull_s)
        # Every change of every kind passes the hook (the EndpointSlice controller's informer).
        self._buses = _HookedBuses(self.endpoint_slices.observe)  # type: ignore[assignment]
        key: Key = (NODE, None, NODE_NAME)
        self.objects[key] = kubelet.node(self.gpu_capacity, self.next_version())
        self.remember(key)

    async def __aenter__(self) -> FakeKubernetes:
        await super().__aenter__()
        self._tick_task = asyncio.create_task(self._tick(), name="fake-kubelet")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        await super().__aexit__(*exc_info)

    @property
    def faults_injected(self) -> int:
        """How many calls the fault plan failed or held so far."""
        return self.injector.injected

    async def add_node(self, gpus: int) -> str:
        """A GPU node joins now (Ready, its GPUs advertised): its name."""
        async with self._lock:
            number = len(self.scheduler.nodes) + 1
            name, ip = f"fake-gpu-node-{number}", f"10.0.0.{10 + number % 240}"
            self.scheduler.add_node(name, ip, gpus)
            key: Key = (NODE, None, name)
            self.objects[key] = kubelet.node(gpus, self.next_version(), name=name, ip=ip)
            self.remember(key)
            raw = self.objects[key].raw
        await self._buses[NODE].put({"type": "ADDED", "object": raw})
        return name

    # --- inspection, for tests and the simulated agent ------------------------------------

    def live(self, plural: str | None = None) -> Iterator[dict[str, Any]]:
        """The live objects (of one kind, by its plural)."""
        return self.index.live(plural)

    def find(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A live object by kind (plural), namespace and name, or None."""
        return self.index.find(plural, namespace, name)

    # --- the store, as the parts see it (kubefake.store.Store) ----------------------------

    def live_object(self, key: Key) -> kmock.Object | None:
        return self.index.get(key)

    def exists(self, plural: str, namespace: str, name: str) -> bool:
        return self.find(plural, namespace, name) is not None

    def next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def remember(self, key: Key) -> None:
        """A created object joins the indexes, and its controller's work."""
        if key not in self.objects or self.objects[key].deleted:
            return  # deleted before its create finished answering
        self.index.add(key, self.objects[key])
        if key[0] == POD:
            self.kubelet.add(key)
        elif key[0] == DAEMONSET:
            self.daemonsets.add(key, asyncio.get_running_loop().time())

    def forget(self, key: Key, raw: Raw) -> None:
        """A deleted object leaves the indexes, its controller's work, and memory (kmock would
        keep its history)."""
        self.index.remove(key, raw)
        if key[0] == POD:
            self.kubelet.drop(key, raw)
        elif key[0] == DAEMONSET:
            self.daemonsets.drop(key)
        if key in self.objects:
            del self.objects[key]

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """A Status as the API server writes it; no traceback for its own refusals (kmock adds
        one where `details` is empty)."""
        if isinstance(exc, kmock.KubernetesError):
            return aiohttp.web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": exc.message or "",
                    "reason": exc.reason or "",
                    "details": exc.details or {},
                    "code": exc.status,
                },
                status=exc.status or 500,
            )
        return await super()._render_error(exc)

    # --- discovery and the OpenAPI documents --------------------------------------------

    async def _serve_version(self, request: kmock.Request) -> Any:
        assert request.resource is not None
        document = resources.resource_list(
            str(request.resource.group or ""), str(request.resource.version or "")
        )
        if document is None:
            raise errors.no_such_resource()
        return document

    async def _serve_group(self, request: kmock.Request) -> Any:
        assert request.resource is not None
        document = resources.group(str(request.resource.group or ""))
        if document is None:
            raise errors.no_such_resource()
        return document

    async def _serve_apis(self, request: kmock.Request) -> Any:
        return resources.group_list()

    async def _serve_server_version(self, request: kmock.Request) -> Any:
        major, minor = K8S_VERSION.split(".")
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{K8S_VERSION}.0-vdi-fake",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "fake",
            "platform": "linux/amd64",
        }

    def _serve_openapi(self, request: kmock.Request) -> aiohttp.web.Response:
        """`/openapi/v3` and its group versions (JSON); `/openapi/v2` is protobuf only for
        client-go, which the fake does not speak: 404, as a server without it answers."""
        path = request.url.path.rstrip("/")
        if path == "/openapi/v3":
            return aiohttp.web.json_response(openapi.root())
        document = openapi.group_version(path.removeprefix("/openapi/v3/"))
        if not path.startswith("/openapi/v3/") or document is None:
            raise errors.no_such_resource()
        return aiohttp.web.Response(body=document, content_type="application/json")

    # --- the request path ----------------------------------------------------------------

    def __iter__(self) -> Iterator[kmock.Request]:
        """The requests kmock's reactions are matched against. kmock finds a request's reaction
        by iterating every request it keeps (`request in reaction`), so each call cost as much
        as the log was long, or, with only the calls in flight kept, as many as were in flight
        (at 20 ms of latency most of the fake's CPU). Without a log, a request sees only itself
        (the task's own request)."""
        if self.keep_request_log:
            yield from super().__iter__()
            return
        current = _CURRENT_REQUEST.get()
        if current is not None:
            yield current

    async def _handle(self, request: kmock.Request) -> Any:
        if not self.keep_request_log:
            self._requests.clear()  # kmock appended it; nothing reads the log but assertions
        token = _CURRENT_REQUEST.set(request)
        try:
            return await self._serve(request)
        finally:
            _CURRENT_REQUEST.reset(token)

    async def _serve(self, request: kmock.Request) -> Any:
        if self.token is not None:
            given = _header(request, "authorization")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                raise errors.unauthorized()
        hold_s = 0.0
        if request.url.path.startswith("/openapi/"):
            return self._serve_openapi(request)
        if request.resource is not None and request.resource.plural is not None:
            kind = self._kind(request)
            self.api_calls += 1
            if request.action is not None:
                # what RBAC calls the verb; the chart's Role is checked against this log
                verb = RBAC_VERBS.get(request.action.name, request.action.name.lower())
                self.verbs.add((str(request.resource.group), str(request.resource.plural), verb))
            hold_s = await self.injector.inject(
                self.faults, watch=request.action == kmock.action.WATCH
            )
            if request.name is not None and request.action in (
                kmock.action.FETCH,
                kmock.action.UPDATE,
                kmock.action.DELETE,
            ):
                if self.live_object(_key(request)) is None:
                    raise errors.not_found(kind, request.name)
            if request.action == kmock.action.CREATE:
                self._admit(request, kind)
            elif request.action == kmock.action.WATCH:
                _check_selectors(request)
                return await self._watch(request, kind, hold_s)
            elif request.action == kmock.action.UPDATE and isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = self.next_version()
            elif request.action == kmock.action.LIST:
                _check_selectors(request)
            elif (
                request.action == kmock.action.DELETE
                and request.resource == POD
                and self.termination_delay_s
            ):
                response = await self._begin_pod_termination(request)
                await asyncio.sleep(hold_s)
                return response
        response = await super()._handle(request)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            self.remember(_key(request))
            if response.status == 200 and not response.prepared:
                response.set_status(201)  # Created, as the API server answers a create
        elif request.action == kmock.action.DELETE and request.name is not None:
            key = _key(request)
            if key in self.objects and self.objects[key].deleted:
                raw = self.objects[key].last.raw
                self.forget(key, raw)
                await self._collect_garbage([raw["metadata"]["uid"]])
        if hold_s:
            await asyncio.sleep(hold_s)
        return response

    def _kind(self, request: kmock.Request) -> Kind:
        """The kind a request addresses; 404 for one this server does not serve."""
        assert request.resource is not None
        kind = resources.find(
            request.resource.group, request.resource.version, request.resource.plural
        )
        if kind is None:
            raise errors.no_such_resource()
        return kind

    def _admit(self, request: kmock.Request, kind: Kind) -> None:
        """A create's body through admission; 409 when the object exists already; the
        runtime told of a pod admitted."""
        self.admission.admit(
            request.data,
            kind,
            request.namespace,
            request.params.get("fieldValidation") or "Strict",
        )
        if self.live_object(_key(request)) is not None:
            raise errors.already_exists(kind, _key(request)[2])
        if kind.kind == "Pod" and self.on_pod_admitted is not None:
            self.on_pod_admitted(request.data)

    async def _serve_list(self, request: kmock.Request) -> Any:
        """A list: label selector, `limit` and `continue` pages in name order (served from the
        live state, not from a snapshot as etcd does), and metadata only when the Accept header
        asks for a PartialObjectMetadataList."""
        matches = _matcher(request)
        limit = int(request.params.get("limit") or 0)
        after = _decode_continue(request.params.get("continue"))
        items: list[dict[str, Any]] = []
        more = False
        async with self._lock:
            for raw in self.index.matching(request.resource, request.namespace, after):
                if not matches(raw):
                    continue
                if limit and len(items) == limit:
                    more = True
                    break
                items.append(raw)
            version = str(self._resource_version)
        kind = self._kind(request)
        metadata: dict[str, Any] = {"resourceVersion": version}
        if more:
            last = items[-1]["metadata"]
            metadata["continue"] = _encode_continue(last.get("namespace"), last["name"])
        accept = _accept(request)
        if tables.wants_table(accept):
            include = request.params.get("includeObject") or "Metadata"
            return tables.table(kind.plural, items, metadata, include_object=include)
        if METADATA_LIST in accept.replace(" ", ""):
            meta = "meta.k8s.io/v1"
            return {
                "apiVersion": meta,
                "kind": "PartialObjectMetadataList",
                "metadata": metadata,
                "items": [
                    {"apiVersion": meta, "kind": "PartialObjectMetadata", "metadata": i["metadata"]}
                    for i in items
                ],
            }
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": metadata,
            "items": items,
        }

    # kmock's own lookups scan every object; these use the index.
    async def _serve_fetch(self, request: kmock.Request) -> Any:
        kind = self._kind(request)
        obj = self.live_object(_key(request))
        if obj is None:
            raise errors.not_found(kind, str(request.name))
        if tables.wants_table(_accept(request)):
            include = request.params.get("includeObject") or "Metadata"
            metadata = {"resourceVersion": obj.raw["metadata"].get("resourceVersion", "")}
            return tables.table(kind.plural, [obj.raw], metadata, include_object=include)
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> Any:
        return self.objects[_key(request)].raw

    async def _serve_update(self, request: kmock.Request) -> Any:
        return self.objects[_key(request)].last.raw

    async def _serve_delete(self, request: kmock.Request) -> Any:
        return self.objects[_key(request)].last.raw

    async def _watch(
        self, request: kmock.Request, kind: Kind, hold_s: float
    ) -> aiohttp.web.StreamResponse:
        """A watch, as newline-delimited JSON (`application/json`, as client-go requires):
        ADDED for the objects changed since `resourceVersion` (all of them without one), then
        every change. With `sendInitialEvents=true` (watch-list, as client-go's informers ask)
        the initial events end with a BOOKMARK annotated `k8s.io/initial-events-end`. Tables
        (kubectl get -w) when the Accept header asks for them."""
        matches = _matcher(request)
        params = request.params
        timeout_s = float(params.get("timeoutSeconds") or 0) or None
        since_text = str(params.get("resourceVersion") or "")
        since = int(since_text) if since_text.isdigit() else 0
        watch_list = params.get("sendInitialEvents") == "true"
        as_table = tables.wants_table(_accept(request))
        include = params.get("includeObject") or "Metadata"
        assert request.resource is not None
        assert request._raw_request is not None
        bus = self._buses[request.resource]
        mark = await bus.mark()  # before the snapshot: no change falls between the two

        def render(kind_of_event: str, raw: dict[str, Any]) -> bytes:
            obj = raw
            if as_table:
                meta = {"resourceVersion": raw["metadata"].get("resourceVersion", "")}
                obj = tables.table(kind.plural, [raw], meta, include_object=include)
            return json.dumps({"type": kind_of_event, "object": obj}).encode() + b"\n"

        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        try:
            async with self._lock:
                initial = [
                    raw
                    for raw in self.index.matching(request.resource, request.namespace)
                    if matches(raw)
                    and (watch_list or int(raw["metadata"].get("resourceVersion", 0)) > since)
                ]
                snapshot = self._resource_version
            if hold_s:
                await asyncio.sleep(hold_s)
            await response.prepare(request._raw_request)
            for raw in initial:
                await response.write(render("ADDED", raw))
            if watch_list:
                bookmark = {
                    "kind": kind.kind,
                    "apiVersion": kind.api_version,
                    "metadata": {
                        "resourceVersion": str(snapshot),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                await response.write(
                    json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    async for event in bus.stream(since=mark):
                        raw = event.get("object", {})
                        metadata = raw.get("metadata", {})
                        if (
                            request.namespace is not None
                            and metadata.get("namespace") != request.namespace
                        ):
                            continue
                        if event["type"] != "DELETED" and (
                            int(metadata.get("resourceVersion") or 0) <= snapshot
                        ):
                            continue  # the snapshot has it already
                        if matches(raw):
                            await response.write(render(event["type"], raw))
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the watcher went away
        finally:
            await bus.unmark(mark)
        return response

    # --- deletion, garbage collection, and the tick ---------------------------------------

    async def _begin_pod_termination(self, request: kmock.Request) -> Any:
        """A pod's deletion, gracefully: marked now, deleted by the kubelet's tick when its
        grace period is over, or when the runtime behind the kubelet has stopped it."""
        async with self._lock:
            key = _key(request)
            obj = self.live_object(key)
            if obj is None:
                raise kmock.KubernetesObjectNotFoundError()
            if not obj.raw["metadata"].get("deletionTimestamp"):
                if self.on_pod_terminating is None:
                    delete_at = asyncio.get_running_loop().time() + self.termination_delay_s
                else:
                    delete_at = math.inf  # until its processes are stopped
                    task = asyncio.create_task(self._stop_containers(obj.raw))
                    self._runtime_tasks.add(task)
                    task.add_done_callback(self._runtime_tasks.discard)
                self.kubelet.terminating(key, obj, delete_at=delete_at)
            raw = obj.raw
            events = self.events.drain()
        await self._buses[POD].put({"type": "MODIFIED", "object": raw})
        for event in events:
            await self._buses[EVENT].put({"type": "ADDED", "object": event})
        return aiohttp.web.json_response(raw)

    async def _stop_containers(self, raw: dict[str, Any]) -> None:
        """The runtime stops the pod's processes; then the kubelet may delete it."""
        assert self.on_pod_terminating is not None
        try:
            await self.on_pod_terminating(raw)
        finally:
            self.kubelet.may_delete(raw["metadata"]["uid"])

    async def container_exited(
        self, namespace: str, name: str, exit_code: int | None, message: str
    ) -> None:
        """The runtime says the pod's container died (kubefake.kubelet.Kubelet.container_exited)."""
        async with self._lock:
            obj = self.live_object((POD, namespace, name))
            if obj is None or obj.raw["metadata"].get("deletionTimestamp"):
                return
            self.kubelet.container_exited(obj, exit_code, message)
            raw = obj.raw
            events = self.events.drain()
        await self._buses[POD].put({"type": "MODIFIED", "object": raw})
        for event in events:
            await self._buses[EVENT].put({"type": "ADDED", "object": event})

    async def _collect_garbage(self, gone: list[str]) -> None:
        """Delete the dependents of the objects with uids `gone` whose owners are all gone
        (background propagation), and theirs in turn."""
        while gone:
            async with self._lock:
                deleted, gone = collect_garbage(self, self.index, gone)
            for resource, event in deleted:
                await self._buses[resource].put(event)

    async def _tick(self) -> None:
        """The node's and the controllers' loop: each tick, under the lock, the kubelet, the
        DaemonSet and EndpointSlice controllers; then their changes to the watchers, and the
        dependents of the pods deleted."""
        while True:
            await asyncio.sleep(self.kubelet_interval_s)
            at = asyncio.get_running_loop().time()
            async with self._lock:
                changes = self.kubelet.step(at)
                daemonsets = self.daemonsets.step(at)
                nodes = self.autoscaler.step(at) if self.autoscaler is not None else []
                events = self.events.drain()
                slices = self.endpoint_slices.step()
            gone = []
            for change, raw in changes:
                await self._buses[POD].put({"type": change, "object": raw})
                if change == "DELETED":
                    gone.append(raw["metadata"]["uid"])
                if (
                    change == "MODIFIED"
                    and raw["status"].get("phase") == "Running"
                    and self.on_pod_running
                    and kubelet.just_started(raw)
                ):
                    asyncio.create_task(self.on_pod_running(raw))
            for raw in daemonsets:
                await self._buses[DAEMONSET].put({"type": "MODIFIED", "object": raw})
            for change, raw in nodes:
                await self._buses[NODE].put({"type": change, "object": raw})
            for raw in events:
                await self._buses[EVENT].put({"type": "ADDED", "object": raw})
            for change, raw in slices:
                await self._buses[ENDPOINTSLICE].put({"type": change, "object": raw})
            await self._collect_garbage(gone)


def _header(request: kmock.Request, name: str) -> str:
    """A request header by its lower-case name, or ''."""
    return next((v for k, v in request.headers.items() if k.lower() == name), "")


def _accept(request: kmock.Request) -> str:
    return _header(request, "accept")


def _matcher(request: kmock.Request) -> Callable[[dict[str, Any]], bool]:
    """A list's or watch's label and field selectors, as one predicate on an object."""
    labels = selectors.parse(request.params.get("labelSelector"))
    plural = str(request.resource.plural if request.resource else "")
    fields = selectors.parse_fields(request.params.get("fieldSelector"), plural)
    return lambda raw: labels(raw.get("metadata", {}).get("labels") or {}) and fields(raw)


def _key(request: kmock.Request) -> Key:
    """The object a request addresses: from the URL, or for a create from the body."""
    name = request.name
    namespace = request.namespace
    if name is None and isinstance(request.data, dict):
        metadata = request.data.get("metadata") or {}
        name, namespace = metadata.get("name"), namespace or metadata.get("namespace")
    return (request.resource, namespace, str(name))


def _encode_continue(namespace: str | None, name: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([namespace, name]).encode()).decode()


def _decode_continue(token: str | None) -> tuple[str | None, str] | None:
    if not token:
        return None
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(name, str) or not (namespace is None or isinstance(namespace, str)):
            raise ValueError(token)
    except (ValueError, TypeError, binascii.Error):
        raise errors.bad_request("invalid continue token") from None
    return namespace, name


@asynccontextmanager
async def start_fake_cluster(**options: Any) -> AsyncIterator[tuple[FakeKubernetes, str]]:
    """A FakeKubernetes served on a loopback port: (fake, base URL for the kubernetes client).
    With a `token`, as a real API server: HTTPS (a CA made for it, `fake.ca_pem`) and the
    bearer token asked of every request (clients do not send tokens over plain HTTP)."""
    fake = FakeKubernetes(**options)
    if fake.token is None:
        async with fake, kmock.Server(fake) as server:
            yield fake, str(server.url).rstrip("/")
        return
    certificates = tls.make_certificates(
        "vdi-control in-process API", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
    )
    fake.ca_pem = certificates.ca_pem
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="vdi-fake-tls-") as tmp:  # 0700, gone after load
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(certificates.cert_pem)
        key.write_bytes(certificates.key_pem)
        context.load_cert_chain(cert, key)
    async with fake:
        # open watches are cut at shutdown, not waited for (aiohttp's default: 60 s)
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(fake), shutdown_timeout=1.0)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        try:
            port = runner.addresses[0][1]
            yield fake, f"https://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


__all__ = ["FakeKubernetes", "start_fake_cluster"]
