"""Gymnasium environments of posisp-dist: `posisp/SequenceISP-v0` (one action = whole pipeline)."""

import gymnasium as gym

from envs.sequence_isp import SequenceISPEnv, SequenceISPVectorEnv, sequence_action_space

if "posisp/SequenceISP-v0" not in gym.registry:
    gym.register(id="posisp/SequenceISP-v0", entry_point="envs.sequence_isp:SequenceISPEnv")

__all__ = ["SequenceISPEnv", "SequenceISPVectorEnv", "sequence_action_space"]
