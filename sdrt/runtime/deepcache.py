"""DeepCache at run time: the whole U-Net every N-th step, which also gives its deep features; the shallow U-Net
(``export/deepcache.py``) in between, on those features. N = 1 is the plain loop."""

from __future__ import annotations

import numpy as np

from ..components import UNET, UNET_SHALLOW
from ..errors import ManifestError, UserInputError
from ..manifest import Manifest


def check_deepcache(manifest: Manifest, interval, control) -> int:
    """The call's DeepCache interval, checked before any work."""
    if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 1:
        raise UserInputError(f"the DeepCache interval is a whole number of at least 1 (1: every step is whole), "
                             f"got {interval!r}")
    if interval == 1:
        return 1
    if UNET_SHALLOW.name not in manifest.components:
        raise ManifestError("this export has no shallow U-Net for DeepCache: export the model again with "
                            "`sdrt export --deepcache`, or leave the DeepCache interval at 1")
    if control is not None:
        raise UserInputError("DeepCache does not combine with ControlNets (the shallow U-Net takes no residuals); "
                             "leave out one of them")
    return int(interval)


class DeepCache:
    """Runs step ``i`` of the loop: the whole U-Net where ``i`` is a multiple of the interval (its deep features
    kept), the shallow one elsewhere."""

    def __init__(self, backend, interval: int):
        self.backend, self.interval, self.features = backend, interval, None

    def run(self, i: int, feeds: dict[str, np.ndarray], residuals: dict[str, np.ndarray]) -> np.ndarray:
        if self.interval == 1:
            return self.backend.run(UNET.name, feeds | residuals)["noise_pred"]
        if i % self.interval == 0:  # step 0 among them: the loop starts with features
            out = self.backend.run(UNET.name, feeds | residuals)
            self.features = out[UNET_SHALLOW.FEATURES].copy()  # a backend may reuse its output buffers
            return out["noise_pred"]
        # the request's LoRA factors are bound to the U-Net; the shallow graph takes those of its own layers
        shared = self.backend.bound.get(UNET.name, {})
        return self.backend.run(UNET_SHALLOW.name, shared | feeds | {UNET_SHALLOW.FEATURES: self.features})["noise_pred"]
