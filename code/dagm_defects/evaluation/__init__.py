"""Image-level evaluation of a defect detector: metrics, threshold choice and report plots.

``metrics`` builds on scikit-learn and returns JSON-ready results; ``plots`` imports
matplotlib only when called.
"""
