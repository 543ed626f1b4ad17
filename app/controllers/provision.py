"""Provisioning: a claimed session's objects are created in the cluster, then it is Starting
(waiting for its agent). A user's new session waits while the pod of the user's earlier one
still exists: it holds the user's home volume and host name."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.cluster import manifests
from app.cluster.kube import ClusterError, KubeCluster
from app.config import Settings
from app.controllers.queue import Apply, Claim, WorkQueue, retry_or_fail
from app.models import VDISession
from app.security import SecretBox, agent_token, selkies_master_token
from app.sessions import capacity
from app.sessions.records import SessionRef
from app.sessions.schemas import Phase
from app.templates.schemas import TemplateSpec

log = structlog.get_logger("vdi.reconciler")

# A session waiting for the user's previous pod is woken when that session ends; this is the
# safety net (that end was recorded by a replica that died before waking it).
PREVIOUS_POD_RECHECK_S = 10.0


def view_of(session: VDISession) -> manifests.SessionView:
    return manifests.SessionView(
        id=session.id,
        user=session.user,
        template=session.template_name,
        spec=TemplateSpec.model_validate(session.template_spec),
    )


async def create_session_objects(
    cluster: KubeCluster,
    view: manifests.SessionView,
    credentials: manifests.SessionCredentials,
    settings: Settings,
) -> manifests.Manifest:
    """A session's objects (idempotent creates) in rounds, each in parallel: the Pod's uid, the
    others' owner, orders them, and the route comes once its Service exists (a real Traefik
    logs an error for a route whose Service it has not seen). The pod waits for its claim and
    Secret as it would for a slow volume. No home PVC for a template without
    `persistent_home`; no route for a warm pool member (no user yet: the claim routes the
    user's host). The Pod, as created."""
    first = [cluster.create("Pod", manifests.pod(view, settings))]
    if view.spec.persistent_home:
        first.append(cluster.create("PersistentVolumeClaim", manifests.home_claim(view, settings)))
    pod, *_claim = await asyncio.gather(*first)
    await asyncio.gather(
        cluster.create("Secret", manifests.secret(view, credentials, settings, pod)),
        cluster.create("Service", manifests.service(view, settings, pod)),
    )
    if view.user:
        await cluster.create("IngressRoute", manifests.ingress_route(view, settings, pod))
    return pod


class Provisioner:
    def __init__(self, settings: Settings, cluster: KubeCluster, queue: WorkQueue) -> None:
        self.settings = settings
        self.cluster = cluster
        self.queue = queue
        self._secrets = SecretBox(settings.require_secret_key())

    async def provision(self, claim: Claim) -> None:
        session = claim.session
        if claim.previous is not None:
            await self.queue.finish(claim, _waiting_for(claim.previous, session.user))
            return
        view = view_of(session)
        secrets = self._secrets.open(session.secrets_encrypted)
        credentials = manifests.SessionCredentials(
            password=secrets.password,
            agent_token=agent_token(self.settings.require_secret_key(), session.id),
            turn_username=secrets.turn_username,
            turn_password=secrets.turn_password,
            master_token=selkies_master_token(self.settings.require_secret_key(), session.id),
        )
        try:
            pod = await create_session_objects(self.cluster, view, credentials, self.settings)
        except ClusterError as error:
            await self.queue.finish(claim, retry_or_fail(error, "ProvisioningFailed"))
            return

        async def started(db: AsyncSession, row: VDISession, now: datetime) -> None:
            row.attempts = 0
            row.pod_uid = pod["metadata"].get("uid")
            # A local desktop's pod names the address its runtime chose for it.
            local_url = (pod["metadata"].get("annotations") or {}).get(manifests.LOCAL_URL)
            if local_url:
                row.url = local_url
            message = "Secret, PVC, Pod, Service and IngressRoute exist; waiting for the agent"
            reason, message = capacity.starting(row, "ObjectsCreated", message)
            await self.queue.move(db, row, Phase.starting, reason, message, now)
            return None

        await self.queue.finish(claim, started)


def _waiting_for(previous: SessionRef, user: str) -> Apply:
    """One user's home is never mounted by two pods, nor their host name routed twice: wait
    until the earlier session's pod is gone (a real kubelet takes up to 30 s)."""
    message = (
        f"Waiting for the pod of the user's previous session {previous.id} "
        f"({previous.phase}) to be gone: it holds home-{user} and the user's host name"
    )

    async def waiting(db: AsyncSession, row: VDISession, now: datetime) -> datetime:
        if row.reason != "WaitingForPreviousSession":
            log.info("waiting for the user's previous pod", previous=str(previous.id))
        row.reason, row.message, row.updated_at = "WaitingForPreviousSession", message, now
        return now + timedelta(seconds=PREVIOUS_POD_RECHECK_S)

    return waiting
