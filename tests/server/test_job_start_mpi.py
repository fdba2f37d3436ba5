"""The MPI hostfile the server hands the agent for every job (the reference's format)."""

from __future__ import annotations

from dstack.server.reconcilers.job_start import mpi_hostfile


def test_one_line_per_node_by_rank_with_gpu_slots() -> None:
    assert mpi_hostfile(["10.0.0.1", "10.0.0.2"], 4) == "10.0.0.1 slots=4\n10.0.0.2 slots=4\n"
    assert mpi_hostfile(["10.0.0.1"], 0) == "10.0.0.1\n"
