"""Training: PPO config builder, driver, MLflow tracking and figures."""
