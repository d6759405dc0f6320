"""Rollout targets: ``kubernetes`` (worker Deployments) and ``local`` (worker processes)."""
