"""dstack: a control plane for GPU workloads.

Kept empty on purpose: `dstack --version` and `--help` must not pay for imports they do not use.
"""
