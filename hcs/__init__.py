"""HCS (Hetero-Compute-Router): abstract accelerator requests for Kubernetes."""

__version__ = "0.1.0"
