"""The calibration engines scorers run: forward statistics, backprop, layer-by-layer backprop, and forward probes.

Engines own hooks, passes and accumulators; criteria import them, and they import no criterion.
"""
