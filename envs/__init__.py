"""Gymnasium environments of posisp-dist: `posisp/SequenceISP-v0` (one action = whole pipeline) and its
step-wise twin `posisp/StepwiseISP-v0` (one module per step, AdaptiveISP-style)."""

import gymnasium as gym

from envs.sequence_isp import SequenceISPEnv, SequenceISPVectorEnv, sequence_action_space
from envs.stepwise_isp import StepwiseISPEnv, StepwiseISPVectorEnv

if "posisp/SequenceISP-v0" not in gym.registry:
    gym.register(id="posisp/SequenceISP-v0", entry_point="envs.registration:sequence_env")
if "posisp/StepwiseISP-v0" not in gym.registry:
    gym.register(id="posisp/StepwiseISP-v0", entry_point="envs.registration:stepwise_env")

__all__ = ["SequenceISPEnv", "SequenceISPVectorEnv", "StepwiseISPEnv", "StepwiseISPVectorEnv", "sequence_action_space"]
