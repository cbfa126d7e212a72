"""The docs say what the code does: metric names and labels in PromQL, ComputeNode fields, the
`hcs alloc explain` sample, the demo sample in the README, and the examples they point to."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "README_CN.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "helm" / "hcs" / "README.md", ROOT / "examples" / "README.md"]
#: ``hcs_*`` words in the docs that are not metrics (a C header, a bench JSON key, a module).
NOT_METRICS = {"hcs_vendor_abi", "hcs_interceptor", "hcs_cluster", "hcs_pods_per_s", "hcs_bind_p99_s",
               "hcs_create_s"}
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def code_metrics() -> dict[str, set[str]]:
    """Every metric the code registers (node agent, webhook, allocator) -> its label names."""
    from hcs.allocator.metrics import AllocatorMetrics
    from hcs.node.metrics import NodeMetrics
    from hcs.webhook.server import Metrics

    out: dict[str, set[str]] = {}
    from hcs.allocator.state import AllocatorState

    for registry in (NodeMetrics().registry, Metrics().registry, AllocatorMetrics(AllocatorState()).registry):
        for collector in list(registry._collector_to_names):  # the collectors themselves carry label names
            labels = set(getattr(collector, "_labelnames", ()))
            for name in registry._collector_to_names[collector]:
                out[name] = labels
        for family in registry.collect():  # scrape-time collectors (the allocator's state gauges)
            out.setdefault(family.name, set(getattr(family, "_labelnames", ())))
    return out


def doc_metric_refs() -> list[tuple[str, str, set[str]]]:
    """(doc, metric, label names) for every ``hcs_...`` metric reference, with ``{a, b}`` or ``{a="x"}``."""
    refs = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"(?<![\w/.-])(hcs_[a-z0-9_]*[a-z0-9])(\{[^}]*\})?", text):
            name, selector = m.group(1), m.group(2) or ""
            if name in NOT_METRICS or text[m.end():m.end() + 1] in (".", "/"):
                continue
            if text[m.end():m.end() + 1] == "_":  # a prefix such as `hcs_webhook_*`
                name += "_"
            labels = {part.split("=")[0].strip().strip('"') for part in selector.strip("{}").split(",") if part.strip()}
            refs.append((doc.name, name, labels))
    return refs


def test_the_metric_check_sees_the_alert_examples() -> None:
    names = {name for _, name, labels in doc_metric_refs() if labels}
    assert "hcs_allocate_requests_total" in names  # operations.md's alerts are checked, not skipped


def test_every_promql_metric_and_label_in_the_docs_exists() -> None:
    metrics = code_metrics()
    problems = []
    for doc, name, labels in doc_metric_refs():
        if name.endswith("_"):
            if not any(k.startswith(name) for k in metrics):
                problems.append(f"{doc}: no metric starts with {name}")
            continue
        family = next((name[: len(name) - len(s)] for s in SUFFIXES if s and name.endswith(s)
                       and name[: len(name) - len(s)] in metrics), name)
        if family not in metrics and name not in metrics:
            problems.append(f"{doc}: {name} is not a metric the code registers")
            continue
        known = metrics.get(family, metrics.get(name, set()))
        problems += [f"{doc}: {name}{{{label}}}: no such label (has {sorted(known)})" for label in labels - known
                     if label not in ("le", "quantile")]
    assert not problems, "\n".join(problems)


def crd_properties() -> set[str]:
    crd = yaml.safe_load((ROOT / "hcs" / "node" / "crds" / "computenode.yaml").read_text())
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in (node.get("properties") or {}).items():
                names.add(key)
                walk(value)
            walk(node.get("items"))
            for value in node.values():
                if isinstance(value, dict | list):
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for version in crd["spec"]["versions"]:
        walk(version["schema"]["openAPIV3Schema"])
    return names


def test_every_computenode_field_named_in_the_api_reference_exists_in_the_crd() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## ComputeNode", 1)[1].split("\n## ", 1)[0]
    fields = crd_properties()
    assert {"vramAllocatableBytes", "healthScore"} <= fields  # the walk found the schema
    missing = []
    for span in re.findall(r"`([^`]+)`", section):
        if any(c in span for c in "|-/:") or span.startswith(("kubectl", "hcs/")):
            continue  # enum values, examples (`nvidia-0`, `560Gi/640Gi`), commands, paths
        for word in re.findall(r"[A-Za-z][A-Za-z0-9]*", span):
            if word not in fields and word not in ("spec", "status"):
                missing.append(f"`{span}`: {word}")
    assert not missing, "docs/api.md names ComputeNode fields the CRD does not have:\n" + "\n".join(missing)


def test_the_alloc_explain_sample_in_operations_is_what_it_prints(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from explain_scenario import scenario

    from hcs.allocator.service import AllocatorService, serve
    from hcs.cli import main

    text = (ROOT / "docs" / "operations.md").read_text()
    sample = text.split("$ hcs alloc explain team/train\n", 1)[1].split("```", 1)[0]
    lines = [ln.strip() for ln in sample.splitlines() if ln.strip()]
    state, want = scenario()
    sock = tmp_path / "a.sock"
    server = serve(AllocatorService(state, resolve_pod=lambda _u, ns, n: want if (ns, n) == ("team", "train")
                                    else None), f"unix://{sock}")
    try:
        assert main(["alloc", "explain", "team/train", "--allocator", f"unix://{sock}"]) == 0
    finally:
        server.stop(None)
    printed = [ln.strip() for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert printed == lines


@pytest.mark.skipif(not (ROOT / "driver/build/lib/libnvidia-ml.so.1").exists(),
                    reason="simulated drivers not built (run `make dev`)")
def test_readme_demo_sample_is_real_demo_output(tmp_path: Path) -> None:
    """Every line of the README's sample (bar elisions and timings) is printed by `hcs demo` as is."""
    import subprocess

    text = (ROOT / "README.md").read_text()
    sample = text.split("<!-- demo-sample -->", 1)[1].split("```", 2)[1]
    res = subprocess.run([sys.executable, "-m", "hcs.cli", "--log-level", "warning", "demo", "--workdir",
                          str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    printed = {ln.rstrip() for ln in res.stdout.splitlines()}
    wanted = [ln.rstrip() for ln in sample.splitlines()
              if ln.strip() and "..." not in ln and not ln.startswith(("$", "done in"))]
    assert len(wanted) > 10
    missing = [ln for ln in wanted if ln not in printed]
    assert not missing, "README demo sample lines the demo does not print:\n" + "\n".join(missing)


def test_the_readmes_point_to_files_that_exist() -> None:
    for doc in (ROOT / "README.md", ROOT / "README_CN.md", ROOT / "docs" / "api.md", ROOT / "examples" / "README.md"):
        for path in re.findall(r"`((?:examples|docs|helm|e2e|bench)/[\w./-]+)`", doc.read_text()):
            assert (ROOT / path.rstrip("/")).exists() or list(ROOT.glob(path)), f"{doc.name}: {path} does not exist"
