"""Render the HCS chart with the real ``helm`` binary and pick rendered objects apart.

Used by tests/helm; the e2e suite can use :func:`component_configs` to run HCS components as host
processes with exactly the configuration the chart renders::

    docs = render(values_files=["values-dev.yaml"], set_values={"mode": "both"})
    configs = component_configs(docs)      # {"node": {...}, "allocator": {...}, "webhook": {...},
                                           #  "kube-scheduler": {...}}
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "hcs"
RELEASE = "hcs"
NAMESPACE = "hcs-system"


CLUSTER_SCRIPT = REPO_ROOT / "e2e" / "cluster" / "hcs_cluster.py"


def _cluster_bin_dir() -> str | None:
    """The local cluster's pinned binaries dir (where ``hcs_cluster.py build`` puts helm)."""
    try:
        out = subprocess.run([sys.executable, str(CLUSTER_SCRIPT), "env", "--json"], capture_output=True, text=True,
                             timeout=60, check=False)
        return str(json.loads(out.stdout)["bin_dir"]) if out.returncode == 0 else None
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return None


def find_helm() -> str | None:
    """The helm binary: $HCS_HELM, PATH, the local cluster's pinned binaries (any cached build), then
    ~/.cache/hcs/tools/bin."""
    explicit = os.environ.get("HCS_HELM")
    if explicit:
        return explicit
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    home = Path.home() / ".cache" / "hcs"
    pinned = _cluster_bin_dir() if CLUSTER_SCRIPT.exists() else None
    candidates = [os.path.join(pinned, "helm")] if pinned else []
    candidates += sorted(glob.glob(str(home / "cluster" / "bin" / "*" / "helm")), reverse=True)
    candidates.append(str(home / "tools" / "bin" / "helm"))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


class HelmError(Exception):
    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
        self.stderr = result.stderr
        self.stdout = result.stdout


def helm(*args: str, helm_bin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = helm_bin or find_helm()
    if binary is None:
        raise FileNotFoundError("helm not found (set HCS_HELM or put helm on PATH)")
    env = {**os.environ, "HELM_CACHE_HOME": os.environ.get("HELM_CACHE_HOME", "/tmp/hcs-helm-cache"),
           "HELM_CONFIG_HOME": os.environ.get("HELM_CONFIG_HOME", "/tmp/hcs-helm-config"),
           "HELM_DATA_HOME": os.environ.get("HELM_DATA_HOME", "/tmp/hcs-helm-data")}
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, env=env, check=False)
    if check and result.returncode != 0:
        raise HelmError(args, result)
    return result


def _set_args(set_values: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in set_values.items():
        if isinstance(value, bool):
            out += ["--set", f"{key}={'true' if value else 'false'}"]
        elif isinstance(value, str):
            out += ["--set-string", f"{key}={value}"]
        else:
            out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def template_args(values_files: Iterable[str] = (), set_values: Mapping[str, Any] | None = None,
                  namespace: str = NAMESPACE, release: str = RELEASE,
                  api_versions: Iterable[str] = ()) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", "1.37.2"]
    for f in values_files:
        args += ["-f", str(CHART / f) if not os.path.isabs(f) else f]
    for v in api_versions:
        args += ["--api-versions", v]
    return args + _set_args(set_values or {})


def render_text(values_files: Iterable[str] = (), set_values: Mapping[str, Any] | None = None,
                namespace: str = NAMESPACE, release: str = RELEASE, api_versions: Iterable[str] = ()) -> str:
    return helm(*template_args(values_files, set_values, namespace, release, api_versions)).stdout


def render(values_files: Iterable[str] = (), set_values: Mapping[str, Any] | None = None,
           namespace: str = NAMESPACE, release: str = RELEASE,
           api_versions: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``helm template`` the chart; every non-empty YAML document as a dict."""
    text = render_text(values_files, set_values, namespace, release, api_versions)
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [dict(d) for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def component_configs(docs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The parsed ``config.yaml`` of each component ConfigMap, keyed by its ``hcs.io/component-config``."""
    out: dict[str, dict[str, Any]] = {}
    for cm in find(docs, "ConfigMap"):
        component = (cm["metadata"].get("labels") or {}).get("hcs.io/component-config")
        if component:
            out[component] = yaml.safe_load(cm["data"]["config.yaml"])
    return out


def container(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    for c in workload["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return dict(c)
    raise KeyError(f"{workload['kind']} {workload['metadata']['name']} has no container {name}")
