"""What a model directory holds, named without importing torch.

The serving front unpacks and inspects model directories before any worker loads
them; keeping these names apart from artifact.py (which needs torch to load weights)
lets it start multi-model-server first and pay for torch while MMS boots.
"""

from __future__ import annotations

WEIGHTS_FILE = "model.pt"
METADATA_FILE = "model.json"
FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """A model directory that cannot be served; the message says what is wrong."""
