"""One module per `dstack` command; each exposes `configure(parser)` that sets `handler`."""
