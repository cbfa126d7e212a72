"""The kubelet simulator: what the kubelet does with HCS's node components, over real unix sockets.

One home for the demo (``hcs demo``), the tests and the bench scripts; the real kubelet is exercised
by the cluster and e2e suites.

- :mod:`hcs.kubeletsim.deviceplugin`: ``KubeletSim``, the device manager (``v1beta1.Registration``,
  ``ListAndWatch``, admission with ``GetPreferredAllocation``/``Allocate``/``PreStartContainer``) and
  the ``v1.PodResourcesLister`` socket;
- :mod:`hcs.kubeletsim.dra`: ``DraKubeletSim``, the plugin watcher and DRA manager (registration
  handshake, ``NodePrepareResources``/``NodeUnprepareResources``, the resource-health stream, and the
  kubelet's wipe of its node's ResourceSlices).
"""

from hcs.kubeletsim.deviceplugin import AdmissionError, KubeletSim, PluginConn, SimPod
from hcs.kubeletsim.dra import DraKubeletSim, RegisteredPlugin, SimError, wipe_node_slices

__all__ = ["AdmissionError", "DraKubeletSim", "KubeletSim", "PluginConn", "RegisteredPlugin", "SimError",
           "SimPod", "wipe_node_slices"]
