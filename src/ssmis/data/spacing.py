"""A check that ``data.spacing`` is in the array's axis order.

``data.spacing`` gives one value per array axis, in the array's order: ACDC h5 volumes are
(Z, H, W), so ``[10, 1.5, 1.5]``; ``[1.5, 1.5, 10]`` would scale HD95/ASD along the wrong axes
without any error. The order cannot be read from an h5 file, but it can be checked against the
shape where the data make it unambiguous:

Rule: when the spacing is clearly anisotropic (largest value >= 2 x the smallest) and the array
is clearly a stack of slices (one axis, the slice axis, has fewer than half the voxels of each
other axis), the largest spacing must sit on that slice axis. This holds for every thick-slice
stack (ACDC 2D cine MRI: ~10 slices of 5-10 mm vs 200+ in-plane pixels of ~1.5 mm; prostate
MRI; thick-slice CT), and it checks nothing where either condition fails: isotropic or nearly
isotropic data (LA 0.625 mm, BraTS 1 mm, thin-slice CT such as Pancreas-CT) and volumes whose
slice axis is as long as the in-plane ones (whole-body CT), where the shape says nothing about
the order.
"""

from __future__ import annotations

from collections.abc import Sequence

ANISOTROPY = 2.0  # largest / smallest spacing from which the spacing is checked
STACK = 0.5  # slice axis shorter than this fraction of every other axis


def spacing_order_problem(spacing: Sequence[float], shape: Sequence[int]) -> str | None:
    """None if ``spacing`` fits ``shape`` (or the rule does not apply), else what is wrong.

    ``spacing``: mm per voxel for each array axis; ``shape``: the spatial shape of one
    evaluation case (a leading channel axis must be removed by the caller). Only 3D volumes are
    checked.
    """
    if len(spacing) != len(shape) or len(shape) != 3:
        return None  # 2D images have no slice axis
    if max(spacing) < ANISOTROPY * min(spacing):
        return None
    shortest = min(range(len(shape)), key=lambda a: shape[a])
    others = [shape[a] for a in range(len(shape)) if a != shortest]
    if any(shape[shortest] >= STACK * n for n in others):
        return None
    thickest = max(range(len(spacing)), key=lambda a: spacing[a])
    if thickest == shortest:
        return None
    suggestion = sorted(spacing)[:-1]
    suggestion.insert(shortest, max(spacing))
    return (f"the largest spacing {max(spacing):g} mm is on array axis {thickest}, but the "
            f"array {tuple(int(s) for s in shape)} is a stack along axis {shortest}; "
            f"data.spacing is in array-axis order (did you mean {[float(v) for v in suggestion]}?"
            f" data.spacing_check: false skips this check)")


def check_spacing_order(spacing: Sequence[float] | None, shape: Sequence[int] | None,
                        source: str) -> None:
    """Raise SSMISError (one line naming ``source``, the file whose shape was used) when
    :func:`spacing_order_problem` finds one; nothing when the spacing or shape is unknown."""
    from ssmis.errors import SSMISError

    if spacing is None or shape is None:
        return
    problem = spacing_order_problem(spacing, shape)
    if problem is not None:
        raise SSMISError(f"data.spacing: {list(spacing)} does not fit {source}: {problem}")


def h5_image_shape(path: str | object) -> tuple[int, ...]:
    """Shape of the ``image`` dataset of an h5 case (metadata only, no data read)."""
    import h5py

    with h5py.File(str(path), "r") as f:
        return tuple(int(s) for s in f["image"].shape)
