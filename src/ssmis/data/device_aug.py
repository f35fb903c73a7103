"""The SSL4MIS 2D augmentation (:class:`ssmis.data.transforms.RandomGenerator2D`) as one batched
gather on the training device, the same pixels as the scipy path.

Every step of ``RandomGenerator2D`` is a nearest-neighbour resampling (rot90 + flip, or
``scipy.ndimage.rotate(order=0, reshape=False)``, then ``scipy.ndimage.zoom(order=0)`` to the
patch), so a whole augmented slice is a lookup of source pixels, or the constant 0 where scipy
samples outside the image. This module computes those source indices for a batch at once, with
scipy's own arithmetic (float64, ``floor(x + 0.5)``, outside = ``x < 0 or x > n - 1``: scipy's
``mode='constant'`` in ``ni_interpolation.c``), and gathers image and label together. The random
parameters are drawn on the CPU by the same function as the scipy path from the same per-sample
generator, so a batch equals the loader's batch pixel for pixel (``tests/test_device_aug.py``).

Reference: SSL4MIS ``code/dataloaders/dataset.py`` ``RandomGenerator`` (HiLab-git/SSL4MIS), as
used by BCP, CVBM, CML and ALHVR on ACDC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from torch import Tensor

from ssmis.data.transforms import Ssl4mis2DParams, draw_ssl4mis_2d
from ssmis.errors import SSMISError

KIND_NONE, KIND_ROT_FLIP, KIND_ROTATE = 0, 1, 2


@dataclass
class SliceGeometry:
    """The per-sample parameters of a batch, as device tensors (B = samples).

    ``index`` (B,) int64 the items in their bank; ``kind`` (B,) int64: 0 zoom only, 1 rot90 +
    flip, 2 rotation; ``k``/``axis`` (B,) the rot90 count and flip axis; ``height``/``width``
    (B,) int64 the source slice size in pixels; ``matrix`` (B, 2, 2) and ``offset`` (B, 2)
    float64 the rotation as scipy's ``affine_transform`` gets it (output -> input
    coordinates); ``rotate`` (R,) int64 the positions of the rotated samples."""

    index: Tensor
    kind: Tensor
    k: Tensor
    axis: Tensor
    height: Tensor
    width: Tensor
    matrix: Tensor
    offset: Tensor
    rotate: Tensor


def rotation_affine(angle: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.ndimage.rotate(x, angle, reshape=False)``'s matrix (2, 2) and offset (2,) for a
    (height, width) slice, computed as scipy computes them (``cosdg``/``sindg``, centre
    ``(n - 1) / 2``), so the sampled coordinates agree to the last bit."""
    c, s = special.cosdg(angle), special.sindg(angle)
    matrix = np.array([[c, s], [-s, c]], dtype=np.float64)
    shape = np.array([height, width], dtype=np.float64)
    centre = (shape - 1) / 2
    offset = centre - matrix @ centre
    return matrix, offset


def geometry(params: Sequence[Ssl4mis2DParams], sizes: Sequence[tuple[int, int]],
             device: torch.device, indices: Sequence[int] | None = None) -> SliceGeometry:
    """Device tensors of the drawn ``params`` for source slices of ``sizes`` (H, W) that are
    items ``indices`` of their bank. Everything travels in one float64 table (exact for these
    integers), copied asynchronously from pinned memory on CUDA: no host sync per batch."""
    n = len(params)
    table = np.zeros((n, 12), dtype=np.float64)
    for i, (p, (h, w)) in enumerate(zip(params, sizes, strict=True)):
        kind = KIND_ROT_FLIP if p.rot_flip else KIND_ROTATE if p.angle is not None else KIND_NONE
        table[i, :6] = (indices[i] if indices is not None else i, kind, p.k, p.axis, h, w)
        if kind == KIND_ROTATE:
            matrix, offset = rotation_affine(int(p.angle), h, w)  # type: ignore[arg-type]
            table[i, 6:10] = matrix.reshape(-1)
            table[i, 10:] = offset
    rotate = np.flatnonzero(table[:, 1] == KIND_ROTATE).astype(np.float64)
    host = torch.from_numpy(np.concatenate([table.reshape(-1), rotate]))
    if device.type == "cuda":
        host = host.pin_memory()
    flat = host.to(device, non_blocking=True)
    t = flat[:n * 12].reshape(n, 12)
    ints = t[:, :6].to(torch.int64)
    return SliceGeometry(index=ints[:, 0], kind=ints[:, 1], k=ints[:, 2], axis=ints[:, 3],
                         height=ints[:, 4], width=ints[:, 5], matrix=t[:, 6:10].reshape(n, 2, 2),
                         offset=t[:, 10:], rotate=flat[n * 12:].to(torch.int64))


def _nearest(coord: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
    """scipy's order-0 sample of float64 ``coord`` on an axis of ``length`` pixels: the index
    ``floor(coord + 0.5)`` and whether it lies inside (``0 <= coord <= length - 1``)."""
    inside = (coord >= 0) & (coord <= (length - 1).to(coord.dtype))
    index = torch.floor(coord + 0.5).to(torch.int64)
    return index, inside


def _zoom_axis(size_in: Tensor, size_out: int) -> tuple[Tensor, Tensor]:
    """Source index (B, size_out) and inside mask of ``scipy.ndimage.zoom(order=0)`` from
    ``size_in`` (B,) pixels to ``size_out``: ``coord = o * (in - 1) / (out - 1)``."""
    out = torch.arange(size_out, device=size_in.device, dtype=torch.float64)
    if size_out > 1:
        step = (size_in.to(torch.float64) - 1) / float(size_out - 1)
    else:
        step = torch.zeros_like(size_in, dtype=torch.float64)
    return _nearest(out[None, :] * step[:, None], size_in[:, None])


def source_index(geo: SliceGeometry, patch: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Where in its source slice every output pixel comes from.

    Returns ``(within, valid)``, both (B, P0, P1) (``patch`` = (P0, P1)): ``within`` the int64
    offset ``row * W + col`` in the (H, W) source slice, meaningful where ``valid`` (elsewhere
    scipy writes 0). Zoom, rot90 and flip act on rows and columns separately, so their offset
    is a row term plus a column term; only rotated samples take the per-pixel float64 path."""
    h, w = geo.height[:, None], geo.width[:, None]
    rot_flip = geo.kind == KIND_ROT_FLIP
    odd = rot_flip & (geo.k % 2 == 1)
    h_mid = torch.where(odd, geo.width, geo.height)  # the shape the zoom sees (an odd k swaps)
    w_mid = torch.where(odd, geo.height, geo.width)
    a, va = _zoom_axis(h_mid, patch[0])  # (B, P0) rows of the rotated/flipped slice
    b, vb = _zoom_axis(w_mid, patch[1])  # (B, P1) columns
    valid = va[:, :, None] & vb[:, None, :]

    # np.flip(np.rot90(x, k), axis): undo the flip, then rot90 k=1: (b, W-1-a), k=2:
    # (H-1-a, W-1-b), k=3: (H-1-b, a) as (row, col) of the source
    fa = torch.where((rot_flip & (geo.axis == 0))[:, None], h_mid[:, None] - 1 - a, a)
    fb = torch.where((rot_flip & (geo.axis == 1))[:, None], w_mid[:, None] - 1 - b, b)
    k = torch.where(rot_flip, geo.k, 0)[:, None]
    a_term = torch.where(k == 0, fa * w, torch.where(k == 1, w - 1 - fa, torch.where(
        k == 2, (h - 1 - fa) * w, fa)))
    b_term = torch.where(k == 0, fb, torch.where(k == 1, fb * w, torch.where(
        k == 2, w - 1 - fb, (h - 1 - fb) * w)))
    within = a_term[:, :, None] + b_term[:, None, :]

    if geo.rotate.numel():
        # input = matrix @ output + offset, summed in scipy's order ((m0 a + m1 b) + offset)
        r = geo.rotate
        m, off = geo.matrix[r], geo.offset[r]
        ar, br = a[r].to(torch.float64), b[r].to(torch.float64)
        hr, wr = geo.height[r][:, None, None], geo.width[r][:, None, None]

        def coordinate(i: int) -> Tensor:
            rows = (m[:, i, 0, None] * ar)[:, :, None]
            cols = (m[:, i, 1, None] * br)[:, None, :]
            return rows + cols + off[:, i, None, None]

        rows, rows_in = _nearest(coordinate(0), hr)
        cols, cols_in = _nearest(coordinate(1), wr)
        within[r] = rows * wr + cols
        valid[r] = valid[r] & rows_in & cols_in
    return within, valid


def _pack(pieces: list[Tensor | None], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.cat(pieces)`` written straight into one tensor on ``device``, each piece released
    once copied: the host holds the pieces once, not the pieces and their concatenation."""
    out = torch.empty(sum(p.numel() for p in pieces if p is not None), dtype=dtype,
                      device=device)
    start = 0
    for i, piece in enumerate(pieces):
        assert piece is not None
        out[start:start + piece.numel()].copy_(piece)
        start += piece.numel()
        pieces[i] = None
    return out


class SliceBank:
    """Every item of a 2D training dataset, unaugmented, in two flat device tensors.

    ``images`` holds each slice's (C, H, W) float32 pixels back to back (no padding), ``labels``
    each (H, W) label as uint8 (None for an unlabeled stream); ``offsets`` (N,) and
    ``label_offsets`` (N,) int64 say where item n starts, ``sizes`` its (H, W) in pixels,
    ``cases`` its id. Built once per run from the layout's own training dataset with
    no transform, so every reader (h5 slices, NIfTI slices, pictures) feeds it unchanged.

    Raises:
        SSMISError: the items differ in channel count, an item is not (C, H, W), a label is
            not (H, W), or a label value does not fit uint8.
    """

    def __init__(self, dataset: object, with_label: bool, device: torch.device) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        images: list[Tensor | None] = []
        labels: list[Tensor | None] = []
        cases, sizes = [], []
        channels = None
        for i in range(n):
            item = dataset[(i, 0)]  # type: ignore[index]
            image, case = item["image"], item["case"]
            if image.ndim != 3:
                raise SSMISError(f"data.on_device: item {case} is {tuple(image.shape)}, "
                                 "expected a 2D slice (C, H, W)")
            if channels is None:
                channels = int(image.shape[0])
            elif image.shape[0] != channels:
                raise SSMISError(f"data.on_device: item {case} has {image.shape[0]} "
                                 f"channels, the first item {channels}")
            images.append(image.reshape(-1))
            if with_label:
                label = item["label"]
                if tuple(label.shape) != tuple(image.shape[1:]):
                    raise SSMISError(f"data.on_device: item {case} has a {tuple(label.shape)} "
                                     f"label for a {tuple(image.shape[1:])} image")
                if label.numel() and (int(label.max()) > 255 or int(label.min()) < 0):
                    raise SSMISError(f"data.on_device: item {case} has label values outside "
                                     "0..255; set data.on_device: false")
                labels.append(label.to(torch.uint8).reshape(-1))
            cases.append(str(case))
            sizes.append((int(image.shape[1]), int(image.shape[2])))
        self.channels = channels or 1
        self.cases = cases
        self.sizes = sizes
        hw = torch.tensor([h * w for h, w in sizes], dtype=torch.int64)
        self.label_offsets = torch.cumsum(hw, 0) - hw
        self.offsets = self.label_offsets * self.channels
        self.images = _pack(images, torch.float32, device)
        self.labels = _pack(labels, torch.uint8, device) if with_label else None
        self.to(device)

    def to(self, device: torch.device) -> SliceBank:
        """Move the pixels, labels and index tensors to ``device`` (in place); returns self."""
        for name in ("label_offsets", "offsets", "images", "labels"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def nbytes(self) -> int:
        """Bytes held on the device by the pixels and labels."""
        size = self.images.numel() * self.images.element_size()
        return size + (self.labels.numel() if self.labels is not None else 0)

    def batch(self, indices: Sequence[int], params: Sequence[Ssl4mis2DParams],
              patch: tuple[int, int]) -> dict[str, object]:
        """Items ``indices`` augmented with ``params`` to ``patch`` (P0, P1): ``image``
        (B, C, P0, P1) float32, ``label`` (B, P0, P1) int64 if the bank has labels, ``case``."""
        device = self.images.device
        geo = geometry(params, [self.sizes[i] for i in indices], device, indices)
        idx = geo.index
        within, valid = source_index(geo, patch)
        within = torch.where(valid, within, torch.zeros((), dtype=torch.int64, device=device))
        plane = (geo.height * geo.width)[:, None, None, None]
        channel = torch.arange(self.channels, device=device)[None, :, None, None]
        pix = self.offsets[idx][:, None, None, None] + channel * plane + within[:, None]
        zero = torch.zeros((), dtype=self.images.dtype, device=device)
        out: dict[str, object] = {
            "image": torch.where(valid[:, None], self.images[pix], zero),
            "case": [self.cases[i] for i in indices],
        }
        if self.labels is not None:
            lab = self.labels[self.label_offsets[idx][:, None, None] + within]
            out["label"] = torch.where(valid, lab, torch.zeros_like(lab)).to(torch.int64)
        return out


class DeviceBatchStream:
    """Endless ``(labeled, unlabeled | None)`` batches drawn on the device: the sampler's
    ``(index, seed)`` pairs, :func:`ssmis.data.transforms.draw_ssl4mis_2d` on
    ``np.random.default_rng(seed)`` (the loader's draws), one gather per stream
    (:meth:`SliceBank.batch`). The same batches as the DataLoader over
    ``RandomGenerator2D`` (``ssmis.engine.data.train_batches``), already on the device.

    ``sampler`` yields lists of ``(index, seed)``: indices below ``len(labeled)`` address the
    labeled bank, the others the unlabeled bank (``ssmis.data.datasets.TwoStreamDataset``).
    """

    def __init__(self, labeled: SliceBank, unlabeled: SliceBank | None, sampler: object,
                 patch: Sequence[int]) -> None:
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.patch = (int(patch[0]), int(patch[1]))
        self._sampler = iter(sampler)  # type: ignore[call-overload]
        # The DataLoader this replaces draws one int64 from torch's global generator when it is
        # iterated (its workers' base seed); drawing it too keeps dropout and every later torch
        # draw of the run the same whichever route the batches take.
        torch.empty((), dtype=torch.int64).random_()

    def __iter__(self) -> DeviceBatchStream:
        return self

    def _stream(self, bank: SliceBank, pairs: list[tuple[int, int]]) -> dict[str, object]:
        params = [draw_ssl4mis_2d(np.random.default_rng(seed)) for _, seed in pairs]
        return bank.batch([i for i, _ in pairs], params, self.patch)

    def __next__(self) -> tuple[dict[str, object], dict[str, object] | None]:
        pairs = [(int(i), int(s)) for i, s in next(self._sampler)]
        n_lab = len(self.labeled)
        lab = [(i, s) for i, s in pairs if i < n_lab]
        unl = [(i - n_lab, s) for i, s in pairs if i >= n_lab]
        if not lab:
            raise ValueError("a training batch needs at least one labeled item")
        labeled = self._stream(self.labeled, lab)
        unlabeled = (self._stream(self.unlabeled, unl)
                     if unl and self.unlabeled is not None else None)
        return labeled, unlabeled


def zoom_nearest(x: Tensor, size: Sequence[int]) -> Tensor:
    """``scipy.ndimage.zoom(plane, (P0 / H, P1 / W), order=0)`` of every (H, W) plane of ``x``
    (..., H, W) at once, on ``x``'s device: the same pixels (scipy's source index
    ``floor(o * (n - 1) / (P - 1) + 0.5)``, 0 where it falls outside). Returns (..., P0, P1)
    of ``x``'s dtype; ``x`` itself when the size is unchanged."""
    p0, p1 = int(size[0]), int(size[1])
    h, w = x.shape[-2:]
    if (h, w) == (p0, p1):
        return x
    lengths = torch.tensor([h, w], dtype=torch.int64, device=x.device)
    rows, rows_in = _zoom_axis(lengths[:1], p0)
    cols, cols_in = _zoom_axis(lengths[1:], p1)
    out = x.index_select(-2, rows[0].clamp(0, h - 1)).index_select(-1, cols[0].clamp(0, w - 1))
    inside = rows_in[0][:, None] & cols_in[0][None, :]
    return torch.where(inside, out, torch.zeros((), dtype=x.dtype, device=x.device))
