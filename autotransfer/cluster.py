"""The resources a search runs on: Ray nodes, what one trial needs, how many trials fit at once.

Light on purpose (no torch, no Ray import): the door checks ``--cpus-per-trial``,
``--gpus-per-trial`` and ``--max-concurrent`` against the local machine before anything heavy loads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

from autotransfer.errors import UserError
from autotransfer.settings import SearchSettings, local_cpu_count


def short_node(node_id: str) -> str:
    """The first 8 hex digits of a Ray node id (as the Ray dashboard abbreviates them)."""
    return str(node_id)[:8]


@dataclass
class Node:
    """One alive Ray node and what it offers."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    is_head: bool = False


@dataclass
class Cluster:
    """The Ray cluster a search runs on."""

    address: Optional[str]
    dashboard_url: Optional[str]
    cpus: float
    gpus: float
    nodes: list[Node] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        """Joined a cluster the user started (its nodes may not see the driver's files)."""
        return self.address is not None

    def describe(self) -> str:
        """One line: where, how big, per node."""
        where = f"Ray cluster at {self.address}" if self.address else "local Ray"
        per_node = ", ".join(f"{short_node(n.node_id)}{' (head)' if n.is_head else ''} {n.address} "
                             f"{n.cpus:g} CPU{'' if n.cpus == 1 else 's'}" + (f" {n.gpus:g} GPU" if n.gpus else "")
                             for n in self.nodes)
        return (f"{where}: {len(self.nodes)} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs"
                + (f" [{per_node}]" if self.remote or len(self.nodes) > 1 else ""))

    def dashboard_hint(self) -> Optional[str]:
        if not self.dashboard_url:
            return None
        url = self.dashboard_url if self.dashboard_url.startswith("http") else f"http://{self.dashboard_url}"
        if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token":
            return f"{url} (sign in with the token from `ray get-auth-token`, stored in ~/.ray/auth_token)"
        return url


def local_cluster(count_gpus: bool = True) -> Cluster:
    """The resources a search without ``--address`` gets, known before Ray starts: the Ray already running
    in this process, or this machine as a fresh local Ray will see it.  Counting GPUs imports torch
    (seconds); a search that asks for none skips it."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return running_cluster(None, None)
    gpus = 0
    if count_gpus:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Cluster(address=None, dashboard_url=None, cpus=float(local_cpu_count()), gpus=float(gpus))


def concurrency(settings: SearchSettings, cluster: Cluster) -> int:
    """How many trials run at once: what the cluster holds, capped by ``--max-concurrent``."""
    if settings.cpus_per_trial > cluster.cpus:
        raise UserError(f"--cpus-per-trial {settings.cpus_per_trial:g} is more than the cluster has "
                        f"({cluster.cpus:g} CPUs); lower it")
    if settings.gpus_per_trial > 0 and settings.gpus_per_trial > cluster.gpus:
        raise UserError(f"--gpus-per-trial {settings.gpus_per_trial:g} but the cluster has "
                        f"{cluster.gpus:g} GPUs; use --gpus-per-trial 0 or a GPU cluster")
    fit = holds(settings, cluster)
    if fit == 0:
        raise UserError(f"no single node has {settings.cpus_per_trial:g} CPUs"
                        + (f" and {settings.gpus_per_trial:g} GPUs" if settings.gpus_per_trial else "")
                        + " free for one trial (a trial runs on one node); lower --cpus-per-trial/--gpus-per-trial")
    if settings.max_concurrent is not None and settings.max_concurrent > fit:
        raise UserError(f"--max-concurrent {settings.max_concurrent} but the cluster holds {fit} trial(s) "
                        f"at once ({cluster.cpus:g} CPUs / {settings.cpus_per_trial:g} per trial); lower it")
    fit = min(fit, settings.num_samples)
    if settings.max_concurrent is not None:
        return min(fit, settings.max_concurrent)
    return fit


def holds(settings: SearchSettings, cluster: Cluster) -> int:
    """Trials the cluster runs at once: a trial's CPUs and GPUs come from one node, so count per node."""
    nodes = cluster.nodes or [Node("local", "local", cluster.cpus, cluster.gpus)]
    total = 0
    for n in nodes:
        fit = math.floor(n.cpus / settings.cpus_per_trial + 1e-9)
        if settings.gpus_per_trial > 0:
            fit = min(fit, math.floor(n.gpus / settings.gpus_per_trial + 1e-9))
        total += fit
    return total


def running_cluster(address: Optional[str], dashboard: Optional[str]) -> Cluster:
    """The Ray this process is connected to: its resources, node by node."""
    import ray

    resources = ray.cluster_resources()
    nodes = [Node(node_id=n["NodeID"], address=str(n.get("NodeManagerAddress", "?")),
                  cpus=float(n.get("Resources", {}).get("CPU", 0)), gpus=float(n.get("Resources", {}).get("GPU", 0)),
                  is_head="node:__internal_head__" in n.get("Resources", {}))
             for n in ray.nodes() if n.get("Alive")]
    return Cluster(address=address, dashboard_url=dashboard, cpus=float(resources.get("CPU", 0)),
                   gpus=float(resources.get("GPU", 0)), nodes=nodes)
