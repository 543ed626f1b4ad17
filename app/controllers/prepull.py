"""Image pre-pull: a DaemonSet `vdi-prepull-<template>` per template with `prepull: true`, so
that its image is on every GPU node before a user needs it; replaced when its spec (image,
placement) changes, deleted when the template is gone or stops asking."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cluster import manifests
from app.cluster.kube import KubeCluster
from app.config import Settings
from app.templates import repository as templates_repository
from app.templates.service import template_spec

log = structlog.get_logger("vdi.pools")


class PrepullKeeper:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        cluster: KubeCluster,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.cluster = cluster
        self._made: dict[str, str] | None = None  # name -> spec hash, last pass
        self._checked_at = 0.0

    async def keep_prepulls(self, *, unless_unchanged: bool = False) -> int:
        """Create, replace and delete the pre-pull DaemonSets; how many changed.
        `unless_unchanged`: nothing (not even a list call) when the templates ask for what the
        last pass made and the orphan sweep's interval has not passed since."""
        async with self.sessionmaker() as db:
            templates = await templates_repository.list_prepulled(db)
        wanted = {
            manifests.prepull_name(t.name): manifests.prepull_daemonset(
                t.name, template_spec(t), self.settings
            )
            for t in templates
        }
        hashes = {
            n: b["metadata"]["annotations"][manifests.SPEC_HASH_ANNOTATION]
            for n, b in wanted.items()
        }
        now = asyncio.get_running_loop().time()
        if (
            unless_unchanged
            and hashes == self._made
            and now - self._checked_at < self.settings.orphan_sweep_interval_s
        ):
            return 0
        existing: dict[str, str] = {}
        async for page in self.cluster.list_metadata("DaemonSet", manifests.PREPULL_SELECTOR):
            for metadata in page:
                annotations = metadata.get("annotations") or {}
                existing[metadata.get("name", "")] = annotations.get(
                    manifests.SPEC_HASH_ANNOTATION, ""
                )
        changed = 0
        for name, digest in existing.items():
            body = wanted.get(name)
            if body is None or body["metadata"]["annotations"][manifests.SPEC_HASH_ANNOTATION] != (
                digest
            ):
                await self.cluster.delete("DaemonSet", name)
                log.info("pre-pull DaemonSet deleted", name=name, replaced=body is not None)
                changed += 1
                if body is None:
                    continue
                await self.cluster.create("DaemonSet", body)
        for name, body in wanted.items():
            if name not in existing:
                await self.cluster.create("DaemonSet", body)
                log.info("pre-pull DaemonSet created", name=name)
                changed += 1
        self._made, self._checked_at = hashes, now  # all applied
        return changed
