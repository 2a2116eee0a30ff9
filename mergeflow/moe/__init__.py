"""Mixture-of-experts builds from dense models, as mergekit-moe 0.1.5 makes them (§12)."""
