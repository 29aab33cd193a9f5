"""A synthetic stand-in for DAGM 2007, written in exactly the competition layout.

The real archive needs a licence click-through and several gigabytes, so tests, the demo
and timing runs use this generator instead. It writes::

    Class{N}/{Train,Test}/NNNN.PNG                  8-bit grayscale, size x size
    Class{N}/{Train,Test}/Label/Labels.txt          via dagm_defects.data.labels
    Class{N}/{Train,Test}/Label/NNNN_label.PNG      0/255 filled ellipse, defective only

Each class has its own texture (smooth, brushed, granular, woven, blotchy, fibrous and
variants of those for classes 7, 9 and 10) and its own mix of the real defect kinds: thin
scratches, darker diffuse areas and missing texture, each covered by an elliptic mask whose
area follows the real class (about 9600 px for class 1 down to about 1000 px for class 9
at 512x512). These classes are easier than their real counterparts. Class 8 is the
calibrated hard case (hard_case.py).

Everything an image looks like derives from ``np.random.default_rng([seed, cls, split,
number])`` and a per-class texture derived from ``[seed, cls, size]`` alone, so the files
are byte-identical whatever the number of worker processes.

The modules, in the order an image is made: spec (what a class is), backgrounds (textures),
geometry (the defect's ellipse), hard_case (class 8), classes (the ten classes), defects,
render (one image), png (its file), layout (a whole set on disk), cli.

Run ``python -m dagm_synth OUT`` (or ``dagm-synth OUT``); ``--help`` lists the options.
"""

from dagm_synth.layout import generate_dataset

__all__ = ["generate_dataset"]
