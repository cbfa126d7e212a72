"""``hcs node``: the per-node agent (kubelet device plugin, ComputeNode reporter, health, metrics)."""
