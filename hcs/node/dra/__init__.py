"""DRA (Dynamic Resource Allocation) driver: kubelet plugin, ResourceSlices, CDI specs, health."""
