"""The Tiled tree every part agrees on, by name: the one definition of the contract.

    /recons/<scan>                    registered by the ingester, in place: an array, or a
                                      container whose volume is `data` (else its only array)
    /masks/<scan>/<mask_id>/mask      written by the web app: int8, UNLABELLED where nothing is painted
    /results/<job_id>/seg_result      written by the segmentation job (uint8 classes), beside
    /results/<job_id>/probabilities   255 * (1 - the most likely class's probability)

Standard library only: the job's image ships this file without the rest of mlex_tomo.
"""

from __future__ import annotations

from collections.abc import Mapping

RECONS = "recons"
MASKS = "masks"
RESULTS = "results"
TOP_LEVEL_CONTAINERS = (RECONS, MASKS, RESULTS)

VOLUME_KEY = "data"
MASK_KEY = "mask"
RESULT_KEY = "seg_result"
UNCERTAINTY_KEY = "probabilities"

UNLABELLED = -1


def volume_key(children_are_arrays: Mapping[str, bool]) -> str:
    """Which child of a scan's container holds its volume: `data`, else its only array.

    Raises ValueError saying what the container holds when neither rule finds one.
    """
    if VOLUME_KEY in children_are_arrays:
        return VOLUME_KEY
    arrays = [key for key, is_array in children_are_arrays.items() if is_array]
    if len(arrays) != 1:
        raise ValueError(f"holds {len(arrays)} arrays ({', '.join(arrays) or 'none'}) and no '{VOLUME_KEY}'")
    return arrays[0]
