"""Reproductions of published experiments (``bumpy_journey``: Selosse et al. 2020, section 3)."""
