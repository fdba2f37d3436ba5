"""Rendering shared by commands: text formats (`format`), rich tables (`tables`), and the
per-resource layouts (`runs`, `offers`, `fleets`, `plan`)."""
