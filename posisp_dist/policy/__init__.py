"""The sequence policy: torch core (`SequencePolicyNet`), its RLlib module and its action distribution."""

from posisp_dist.policy.pipeline_dist import PipelineDistribution
from posisp_dist.policy.rl_module import SequencePolicyModule
from posisp_dist.policy.sequence_policy import SequencePolicyNet

__all__ = ["PipelineDistribution", "SequencePolicyModule", "SequencePolicyNet"]
