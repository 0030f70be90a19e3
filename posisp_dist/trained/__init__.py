"""Using a trained policy: greedy inference, evaluation against the baselines, reports and figures, applying it to files."""
