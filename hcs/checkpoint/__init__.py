"""Checkpoint recovery: move a workload to another device or node without losing its progress.

The pieces (docs/checkpoint.md): the kubelet's container checkpoint API (containerd + CRIU on the node) makes
an archive; :mod:`hcs.checkpoint.image` turns it into an OCI checkpoint image that containerd's CRI restores
from; :mod:`hcs.checkpoint.controller` decides when (device verdicts, drain, ``hcs migrate``, intervals,
``hcs defrag``) and creates the replacement pod.
"""
