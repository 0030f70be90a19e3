"""Using a trained policy: greedy inference, evaluation against the baselines, reports, figures, apply."""
