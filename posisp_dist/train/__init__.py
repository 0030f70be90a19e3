"""Training on Ray RLlib: the PPO config and its pathwise learner, the EnvRunner callbacks, the driver loop and how a run ends."""
