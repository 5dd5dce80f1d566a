"""Stage 2: per identity, a plan of R reference and D degraded specs (``plan``), and the
Stage-2 backend that turns it into faces."""
