"""Image-level evaluation of a defect detector: metrics, threshold choice and report plots.

``metrics`` is pure numpy and JSON-friendly; ``plots`` imports matplotlib only when called.
"""
