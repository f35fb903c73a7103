"""Reading the cases of a catalog with a config's channels, normalisation and mask mapping.

:class:`CaseReader` decodes NIfTI, picture and prepared cases into
:class:`~ssmis.data.cases.CaseArrays` (image (C, *spatial) float32, label int64), checks shapes,
grids and values, and says how it normalises (:meth:`CaseReader.normalisation`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssmis.data.cases import CaseArrays, CaseInfo, Catalog, check_finite, move_slice_axis
from ssmis.data.nifti_io import grid_difference, read_nifti, resample_label_to
from ssmis.data.normalisation import ChannelNorm, normalize, resolve_scheme, type_divisor
from ssmis.data.options import layout_option
from ssmis.data.pictures import (
    map_mask,
    map_rgb_mask,
    mapped_mask,
    picture_size,
    read_picture,
    read_roi,
    snap_for,
)
from ssmis.data.prepared_format import PREPARED_MANIFEST, prepared_normalisation
from ssmis.errors import SSMISError


class CaseReader:
    """Loads cases of a catalog with the config's channels, normalisation and mask mapping.

    Picklable (plain data only), so DataLoader workers can use it. ``slice_axis`` moves that
    axis of 3D cases to the front (2D training and slice-wise inference on volumes).
    """

    def __init__(self, catalog: Catalog, data_cfg: Any, slice_axis: int | None = None) -> None:
        self.catalog = catalog
        self.kind = catalog.kind  # how files are decoded: nifti | images | prepared
        self.in_channels = data_cfg.in_channels
        self.num_classes = data_cfg.num_classes
        self.mask_values = layout_option(data_cfg, "mask_values")
        self.mask_snap = layout_option(data_cfg, "mask_snap", "auto")
        self.mask_rgb_classes = layout_option(data_cfg, "mask_rgb_classes")
        self.window = tuple(data_cfg.intensity_window)
        self.spacing_override = tuple(data_cfg.spacing) if data_cfg.spacing else None
        names = catalog.channel_names
        self.norms = [resolve_scheme(data_cfg.normalization, c,
                                     names[c] if c < len(names) else None,
                                     from_image_file=catalog.kind == "images")
                      for c in range(self.in_channels)]
        self.slice_axis = slice_axis
        #: labels put on their image's grid (``data.label_geometry: resample``): case -> why
        self.resampled: dict[str, str] = {}
        self.label_geometry = layout_option(data_cfg, "label_geometry", "check")
        if catalog.kind == "prepared":
            self._check_prepared(data_cfg)

    def _check_prepared(self, data_cfg: Any) -> None:
        m = self.catalog.manifest
        path = self.catalog.root / PREPARED_MANIFEST
        if m.get("in_channels") != self.in_channels:
            raise SSMISError(f"{path}: prepared with {m.get('in_channels')} channel(s), but "
                             f"data.in_channels = {self.in_channels}")
        norm = data_cfg.normalization
        wanted = norm if isinstance(norm, list) else [norm] * self.in_channels
        for w, done in zip(wanted, m.get("normalization", []), strict=False):
            if w not in ("auto", done):
                raise SSMISError(f"{path}: prepared with normalization {m.get('normalization')}"
                                 f", but data.normalization = {norm}; prepare again")

    # -- normalisation ----------------------------------------------------------------------
    def normalisation(self, data_cfg: Any) -> list[ChannelNorm]:
        """One record per channel of what :meth:`load_raw` does to the intensities, with its
        numbers (the ct window; for ``scale``, the value types of the files, each divided by
        its type's maximum) and where it was decided."""
        if self.kind == "prepared":
            return prepared_normalisation(self.catalog.manifest, self.catalog.root)
        names = self.catalog.channel_names
        norms = []
        for c, scheme in enumerate(self.norms):
            name = names[c] if c < len(names) else None
            if data_cfg.normalization != "auto":
                source = "data.normalization"
            elif name is not None:
                source = f"dataset.json channel name '{name}' (nnU-Net's scheme for it)"
            elif self.kind == "images":
                source = "data.normalization auto for picture files"
            else:
                source = "data.normalization auto (no channel name)"
            clip = (float(self.window[0]), float(self.window[1])) if scheme == "ct" else None
            divisor = dtype = None
            if scheme == "scale":
                types = self._file_dtypes(c)
                dtype = ", ".join(types) or None
                divisors = {type_divisor(t) for t in types}
                # one integer type: the divisor a floating-point input (the same pixels saved
                # as a float NIfTI) is put on the training scale with
                divisor = divisors.pop() if len(divisors) == 1 else None
            norms.append(ChannelNorm(scheme, clip=clip, divisor=divisor, file_dtype=dtype,
                                     source=source))
        return norms

    def _file_dtypes(self, channel: int) -> list[str]:
        """The value types the reader sees in the files of ``channel`` (what ``scale`` divides
        by): NIfTI from every header (a scaled integer file reads as float64); pictures by
        decoding one file of each (extension, PIL mode) pair."""
        types: set[str] = set()
        if self.kind == "nifti":
            for info in self.catalog.cases.values():
                img = read_nifti(info.images[channel], header_only=True)[3]
                slope, inter = img.dataobj.slope, img.dataobj.inter
                scaled = not (slope in (1.0, None) and inter in (0.0, None))
                types.add("float64" if scaled else str(img.get_data_dtype()))
            return sorted(types)
        seen: set[tuple[str, str]] = set()
        for info in self.catalog.cases.values():
            path = info.images[0]
            key = (path.suffix.lower(), picture_size(path)[1])
            if key not in seen:
                seen.add(key)
                mode = {1: "L", 3: "RGB"}.get(self.in_channels)
                types.add(str(read_picture(path, mode).dtype))
        return sorted(types)

    # -- metadata ---------------------------------------------------------------------------
    def spatial_shape(self, case: str, with_label: bool = False) -> tuple[int, ...]:
        """Shape from headers only (no decoding), checking channels and label agree."""
        info = self.catalog.get(case)
        if self.kind == "prepared":
            if not info.images[0].is_file():
                raise SSMISError(f"{info.images[0]}: file not found")
            return tuple(info.shape or ())
        if self.kind == "nifti":
            if len(info.images) != self.in_channels:
                raise SSMISError(f"{info.images[0]}: case '{case}' has {len(info.images)} "
                                 f"channel file(s), data.in_channels = {self.in_channels}")
            headers = [read_nifti(p, header_only=True)[3] for p in info.images]
            shapes = [tuple(h.shape[:3]) for h in headers]
            shape = shapes[0]
            for p, s, h in zip(info.images, shapes, headers, strict=True):
                if s != shape:
                    raise SSMISError(f"{p}: shape {s} differs from {info.images[0].name} {shape}")
                diff = grid_difference(headers[0], h)
                if diff is not None:
                    raise SSMISError(f"{p}: voxel grid differs from {info.images[0].name} "
                                     f"({diff}); the channels of a case must share one grid")
            if with_label and info.label is not None:
                label_header = read_nifti(info.label, header_only=True)[3]
                self._check_label_grid(info, headers[0], label_header)
                ls = tuple(label_header.shape[:3])
                if ls != shape and self.label_geometry != "resample":
                    raise SSMISError(f"{info.label}: label shape {ls} differs from image shape "
                                     f"{shape} ({info.images[0].name})")
            return shape
        size, mode = picture_size(info.images[0])
        if with_label and info.label is not None:
            msize, _ = picture_size(info.label)
            if msize != size:
                raise SSMISError(f"{info.label}: mask size {msize[1]}x{msize[0]} differs from "
                                 f"image {info.images[0].name} {size[1]}x{size[0]}")
        if with_label and info.roi is not None:
            rsize, _ = picture_size(info.roi)
            if rsize != size:
                raise SSMISError(f"{info.roi}: ROI size {rsize[1]}x{rsize[0]} differs from "
                                 f"image {info.images[0].name} {size[1]}x{size[0]}")
        return size

    def num_slices(self, case: str) -> int:
        shape = self.spatial_shape(case)
        if len(shape) == 2:
            return 1
        return int(shape[self.slice_axis if self.slice_axis is not None else 0])

    # -- data -------------------------------------------------------------------------------
    def load_raw(self, case: str, with_label: bool) -> CaseArrays:
        """In the file's voxel order, before any slice-axis move."""
        info = self.catalog.get(case)
        if with_label and info.label is None:
            raise SSMISError(f"case '{case}' has no label ({info.images[0]})")
        if self.kind == "prepared":
            return self._load_prepared(info, with_label)
        if self.kind == "nifti":
            return self._load_nifti(info, with_label)
        return self._load_picture(info, with_label)

    def load(self, case: str, with_label: bool) -> CaseArrays:
        arrays = self.load_raw(case, with_label)
        if self.slice_axis is not None and arrays.image.ndim == 4:
            arrays = move_slice_axis(arrays, self.slice_axis)
        return arrays

    def _load_nifti(self, info: CaseInfo, with_label: bool) -> CaseArrays:
        if len(info.images) != self.in_channels:
            raise SSMISError(f"{info.images[0]}: case '{info.case}' has {len(info.images)} "
                             f"channel file(s), data.in_channels = {self.in_channels}")
        channels, spacing, affine = [], None, None
        for c, path in enumerate(info.images):
            data, sp, aff, _ = read_nifti(path)
            if data.dtype.kind not in "fiub":
                raise SSMISError(f"{path}: image has dtype {data.dtype}, expected numbers")
            check_finite(path, data)
            if channels and data.shape != channels[0].shape:
                raise SSMISError(f"{path}: shape {data.shape} differs from "
                                 f"{info.images[0].name} {channels[0].shape}")
            channels.append(normalize(data, self.norms[c], self.window, data.dtype))
            if spacing is None:
                spacing, affine = sp, aff
        label = None
        if with_label:
            assert info.label is not None
            raw, _, _, label_img = read_nifti(info.label)
            image_img = read_nifti(info.images[0], header_only=True)[3]
            if self._check_label_grid(info, image_img, label_img):
                raw = resample_label_to(label_img, image_img)
            if raw.shape != channels[0].shape:
                raise SSMISError(f"{info.label}: label shape {raw.shape} differs from image "
                                 f"shape {channels[0].shape} ({info.images[0].name})")
            label = map_mask(info.label, np.asarray(raw), self.mask_values, self.num_classes,
                             picture=False)
        if self.spacing_override is not None:
            spacing = self._override(spacing)
        return CaseArrays(info.case, np.stack(channels), label, spacing, affine, info.domain)

    def _check_label_grid(self, info: CaseInfo, image_img: Any, label_img: Any) -> bool:
        """True when the label must be resampled onto the image grid
        (``data.label_geometry: resample`` and a different grid or shape).

        Raises:
            SSMISError: the label's orientation, spacing or origin differs from the image's
                and ``data.label_geometry`` is ``check``.
        """
        assert info.label is not None
        diff = grid_difference(image_img, label_img)
        if self.label_geometry == "resample":
            shape_differs = tuple(label_img.shape[:3]) != tuple(image_img.shape[:3])
            if diff is not None or shape_differs:
                self.resampled[info.case] = diff or "shape differs"
                return True
            return False
        if diff is not None:
            raise SSMISError(f"{info.label}: label grid differs from image "
                             f"{info.images[0].name}: {diff}; fix the file or set "
                             "data.label_geometry: resample (nearest neighbour onto the image)")
        return False

    def _override(self, spacing: tuple[float, ...] | None) -> tuple[float, ...] | None:
        n = len(spacing) if spacing else len(self.spacing_override or ())
        given = self.spacing_override or ()
        return tuple(given[:n]) if len(given) >= n else spacing

    def _load_picture(self, info: CaseInfo, with_label: bool) -> CaseArrays:
        mode = {1: "L", 3: "RGB"}.get(self.in_channels)
        if mode is None:
            raise SSMISError(f"data.in_channels: {self.in_channels}; image files give 1 (grey) "
                             "or 3 (RGB) channels")
        path = info.images[0]
        raw = read_picture(path, mode)
        check_finite(path, raw)  # float TIFFs; integer pictures cannot hold NaN
        pixels = raw if raw.ndim == 3 else raw[..., None]
        image = np.stack([normalize(pixels[..., c], self.norms[c], self.window, raw.dtype)
                          for c in range(pixels.shape[-1])])
        label, snapped = None, 0
        if with_label:
            assert info.label is not None
            rgb = self.mask_rgb_classes is not None
            mask = read_picture(info.label, "RGB" if rgb else None)
            if mask.shape[:2] != raw.shape[:2]:
                raise SSMISError(f"{info.label}: mask size {mask.shape[1]}x{mask.shape[0]} "
                                 f"differs from image {path.name} {raw.shape[1]}x{raw.shape[0]}")
            if rgb:
                label = map_rgb_mask(mask, self.mask_rgb_classes)
            else:
                # auto snaps lossy masks to declared values only: snapping 0/255 JPEG values
                # to the class indices 0/1 would make every grey 1
                snap = snap_for(self.mask_snap, info.label) \
                    if self.mask_values is not None or self.mask_snap == "nearest" else False
                label, snapped = mapped_mask(info.label, mask, self.mask_values,
                                             self.num_classes, snap=snap)
        roi = read_roi(info.roi, raw.shape[:2], path) if info.roi is not None else None
        spacing = tuple(self.spacing_override[-2:]) if self.spacing_override else None
        source_range = (float(raw.min()), float(raw.max())) if raw.size else None
        return CaseArrays(info.case, image, label, spacing, None, info.domain, roi=roi,
                          source_dtype=str(raw.dtype), source_range=source_range,
                          snapped=snapped)

    def _load_prepared(self, info: CaseInfo, with_label: bool) -> CaseArrays:
        path = info.images[0]
        if not path.is_file():
            raise SSMISError(f"{path}: file not found")
        try:
            with np.load(path) as z:
                image = z["image"].astype(np.float32)
                label = z["label"].astype(np.int64) if with_label else None
                spacing = tuple(float(s) for s in z["spacing"]) if z["spacing"].size else None
                affine = z["affine"] if z["affine"].size else None
                roi = z["roi"].astype(bool) if "roi" in z.files and z["roi"].size else None
        except Exception as exc:
            raise SSMISError(f"{path}: not a readable prepared case ({exc})") from None
        check_finite(path, image)
        if self.spacing_override is not None:
            spacing = self._override(spacing)
        return CaseArrays(info.case, image, label, spacing, affine, info.domain, roi=roi,
                          source_dtype="float16")
