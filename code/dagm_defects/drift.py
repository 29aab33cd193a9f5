"""What drift means for this model: the input statistics the serving workers publish
(names, namespace) and how far recent images lie from the trained classes.

Both the serving image (which publishes the statistics; dagm_serve.input_watch) and the
drift report (which reads them; dagm_deploy.drift) import these definitions, so they
cannot disagree, and neither imports the other.

An image's drift distance is how many training standard deviations it lies from the
nearest trained class, in the statistic where it differs most, capped at
`MAX_DISTANCE`. DriftScore, its average over images, is what the alarm watches. The
nearest class, because an endpoint that serves one product line (one class) of a model
trained on ten has not drifted; per image, so that a mix of classes scores low and a mix
of brighter and darker images scores high (their averages would cancel). Measured on
synthetic DAGM test images: 1.0 to 1.6 as trained; brightness +-20 grey levels 2.7 to
5; a slight blur 5 to 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dagm_defects.imaging import STATISTICS

NAMESPACE = "DAGM/Inputs"
METRICS = {"mean": "InputMean", "std": "InputStd", "contrast": "InputContrast", "texture": "InputTexture"}
DEFECTIVE = "DefectiveShare"
SCORE = "DriftScore"
# Ten deviations from every trained class is plainly foreign; counting further would let
# a few blank frames outweigh everything else in a window.
MAX_DISTANCE = 10.0
# A statistic that does not vary within a class (or a class of one image) must not
# turn a tiny difference into an infinite distance.
MIN_STD = 0.1


def statistic_scores(recent: dict[str, float], overall: dict[str, dict]) -> dict[str, float]:
    """Per statistic, |recent average - training mean| / training std, over the whole
    training set: which statistic moved (the verdict comes from DriftScore)."""
    return {name: abs(recent[name] - overall[name]["mean"]) / max(overall[name]["std"], MIN_STD)
            for name in METRICS if name in recent and name in overall}


@dataclass(frozen=True)
class Reference:
    """Each trained class's mean and standard deviation of every statistic (classes x
    statistics), or the whole training set's when the artefact has no per-class figures."""

    means: np.ndarray
    stds: np.ndarray
    # The trained class of each row ("overall" for the whole training set's figures).
    names: tuple[str, ...] = ()

    @classmethod
    def from_training(cls, training_statistics: dict) -> "Reference | None":
        """None when there is nothing to compare with (an artefact without statistics);
        ValueError naming the problem when they are malformed."""
        if not isinstance(training_statistics, dict):
            raise ValueError(f"training_statistics in model.json is a {type(training_statistics).__name__}, not an object")
        named = list((training_statistics.get("per_class") or {}).items())
        if not named and training_statistics.get("overall"):
            named = [("overall", training_statistics["overall"])]
        try:
            usable = [(str(k), g) for k, g in named if min(int(g[name]["n"]) for name in STATISTICS) >= 2]
            means = [[float(g[name]["mean"]) for name in STATISTICS] for _, g in usable]
            stds = [[float(g[name]["std"]) for name in STATISTICS] for _, g in usable]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed training_statistics in model.json ({type(exc).__name__}: {exc})") from None
        if not usable:
            return None
        return cls(np.array(means), np.maximum(np.array(stds), MIN_STD), tuple(name for name, _ in usable))

    def distances(self, statistics: dict[str, np.ndarray]) -> np.ndarray:
        """Each image's drift distance (see the module's docstring)."""
        return self.nearest(statistics)[0]

    def nearest(self, statistics: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """Each image's drift distance and the trained class it lies nearest to."""
        values = np.stack([statistics[name] for name in STATISTICS], axis=1)
        by_class = (np.abs(values[:, None, :] - self.means[None]) / self.stds[None]).max(axis=2)
        return np.minimum(by_class.min(axis=1), MAX_DISTANCE), [self.names[i] for i in by_class.argmin(axis=1)]
