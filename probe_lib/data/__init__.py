"""Datasets: the synthetic teaching set, interactive-segmentation benchmarks, SA-1B."""
