"""reco-api: serves the precomputed recommendations from Redis over HTTP."""
