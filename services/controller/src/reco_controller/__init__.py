"""reco-controller: rolls the worker Deployments to each newly published model."""
