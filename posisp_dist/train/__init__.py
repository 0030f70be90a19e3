"""Training on Ray RLlib: the PPO config, its pathwise learner, EnvRunner callbacks, the driver loop, run endings."""
