"""The sequence policy (torch); its RLlib RLModule wrapper arrives with the sequence-PPO issue."""

from posisp_dist.policy.sequence_policy import SequencePolicyNet

__all__ = ["SequencePolicyNet"]
