"""Reproductions of the seeds' experiments (``bumpy_journey``: seed 000, section 3)."""
