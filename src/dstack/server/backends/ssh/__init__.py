"""The SSH backend: on-prem hosts from a fleet's `ssh_config` (see backend.py)."""
