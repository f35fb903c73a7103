"""Data: h5 readers, literature splits, the two-stream sampler, augmentations, datasets, phantoms.

The layouts and rules are the published ones (SSL4MIS for ACDC, UA-MT for LA) so that numbers
obtained here are comparable with the papers'.
"""

from ssmis.data.datasets import (
    EvalCase,
    SliceDataset,
    TwoStreamDataset,
    VolumePatchDataset,
    collate_two_stream,
    load_eval_cases,
)
from ssmis.data.h5 import (
    acdc_slice_path,
    acdc_volume_path,
    check_h5_files,
    check_h5_values,
    la_volume_path,
    load_h5_case,
    read_list,
)
from ssmis.data.layouts.acdc_h5 import acdc_split
from ssmis.data.layouts.la_h5 import la_split
from ssmis.data.phantoms import make_phantom_dataset
from ssmis.data.sampler import TwoStreamBatchSampler
from ssmis.data.splits import Split, patient_of_slice
from ssmis.data.transforms import (
    CenterCrop3D,
    Compose,
    RandomCrop3D,
    RandomGenerator2D,
    RandomRotFlip3D,
    Resize2D,
)

__all__ = [
    "CenterCrop3D",
    "Compose",
    "EvalCase",
    "RandomCrop3D",
    "RandomGenerator2D",
    "RandomRotFlip3D",
    "Resize2D",
    "SliceDataset",
    "Split",
    "TwoStreamBatchSampler",
    "TwoStreamDataset",
    "VolumePatchDataset",
    "acdc_slice_path",
    "acdc_split",
    "acdc_volume_path",
    "check_h5_files",
    "check_h5_values",
    "collate_two_stream",
    "la_split",
    "la_volume_path",
    "load_eval_cases",
    "load_h5_case",
    "make_phantom_dataset",
    "patient_of_slice",
    "read_list",
]
