"""posisp-dist: task-aware ISP optimisation as one global sequence prediction (POS-ISP) on Ray."""

__version__ = "0.1.0"
