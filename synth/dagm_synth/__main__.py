"""``python -m dagm_synth OUT``: the same as the ``dagm-synth`` command."""

import sys

from dagm_synth.cli import main

# The guard keeps worker processes started by "spawn", which import this module again,
# from generating a set of their own.
if __name__ == "__main__":
    sys.exit(main())
