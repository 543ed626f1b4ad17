"""The controllers: the back half of the sessions domain, one job per module. The work queue
(`queue`), provisioning, termination, the pod watch, the pods' events, the orphan sweep, warm
pools and image pre-pull; `reconciler` puts them together in each replica. They reach the
cluster only through the adapter (`app.cluster`)."""

from app.controllers.queue import Claim
from app.controllers.reconciler import Reconciler

__all__ = ["Claim", "Reconciler"]
