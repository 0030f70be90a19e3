"""The records of a training run: MLflow tracking, checkpoints and driver state, leases, signals, provenance."""
