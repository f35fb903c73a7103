"""The options a layout takes (``Layout.Params``), like a method's ``Params``.

Each layout class sets ``Params`` to a pydantic model of the ``data`` keys only it reads; the
pieces several layouts share are the mixins here (the own-data split rules, mask values, the
picture-folder options, nifti's label geometry). The user's ``data:`` section stays one flat
mapping: :class:`ssmis.config.DataConfig` keeps the generic fields and validates the rest with
the chosen layout's ``Params`` (:func:`parse_layout_params`), so ``data.mask_values`` is still
written, overridden and dumped as ``data.mask_values``.

This module never imports the config module.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssmis.data.options import layout_option

__all__ = ["LabelGeometry", "LayoutParams", "MaskValues", "PictureOptions", "SplitRules",
           "layout_option", "option_defaults", "parse_layout_params"]


class LayoutParams(BaseModel):
    """Options every layout takes (the training augmentation works on any layout's images)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    resize_filter: Literal["lanczos", "bilinear"] = Field(
        default="lanczos", description="augmentation synfoc: the image filter of the resize to "
                                       "the patch size (the authors: lanczos; bilinear for M&Ms)")


class SplitRules(LayoutParams):
    """The own-data split rules of catalog layouts (:func:`ssmis.data.splits.ssl_split`)."""

    split_seed: int = Field(default=0, description="seed of the random split (not the run seed)")
    labeled_count: int | None = Field(default=None, ge=1,
                                      description="own data: number of labeled cases")
    labeled_fraction: float | None = Field(default=None, gt=0, le=1)
    labeled_cases: list[str] | None = Field(default=None, description="explicit labeled ids")
    labeled_domain: str | None = Field(default=None,
                                       description="draw labeled cases from this domain only")
    labeled_pick: Literal["random", "first"] = Field(
        default="random", description="own data: labeled cases drawn by split_seed (random) or "
                                      "the first ones in sorted file order (first: SynFoC / "
                                      "MiDSS, the first lb_num files of the labeled domain)")
    group_by: str = Field(
        default="auto", description="own data: cases of one group (patient) stay in one split "
                                    "and counts/fractions count groups; auto: <patient>_slice_<k>,"
                                    " patientNNN_frameMM and <case>_<frame> (a prefix with a "
                                    "digit) ids are grouped; none: by case; or a regular "
                                    "expression on the file stem whose first group is the group")
    val_count: int | None = Field(default=None, ge=1, description="validation cases")
    val_fraction: float | None = Field(default=None, gt=0, lt=1)
    val_domain: Literal["labeled", "all"] = Field(
        default="labeled", description="with labeled_domain: validation cases from that domain "
                                       "only (labeled) or stratified over all domains (all)")
    val_pool: Literal["held_out", "unlabeled"] = Field(
        default="held_out", description="own data: validation cases removed from training "
                                        "(held_out) or drawn from the unlabeled training cases, "
                                        "which stay in training without their labels "
                                        "(unlabeled: a small domain keeps all its images)")
    test_count: int | None = Field(default=None, ge=1,
                                   description="test cases carved from the labeled training "
                                               "cases when there is no labeled imagesTs")
    test_fraction: float | None = Field(default=None, gt=0, lt=1)

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: str) -> str:
        if value not in ("auto", "none"):
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"data.group_by: '{value}' is not a regular expression "
                                 f"({err}); expected auto, none or a pattern") from None
        return value


class MaskValues(LayoutParams):
    """``data.mask_values``: label file value -> class."""

    mask_values: dict[int | str, int] | None = Field(
        default=None, description="mask pixel value -> class: exact values {0: 0, 255: 1}, "
                                  "inclusive ranges {'0-127': 0, '128-255': 1} (a threshold), "
                                  "or the string '0-127:0,128-255:1'; palette (indexed) PNG/GIF "
                                  "masks give their indices (a grey palette its grey levels); "
                                  "null = values are class indices")

    @field_validator("mask_values", mode="before")
    @classmethod
    def _mask_values(cls, value: Any) -> dict[int | str, int] | None:
        """Any spelling (exact values, ranges, a VALUE:CLASS string) -> {int | 'lo-hi': class}."""
        from ssmis.data.masks import normalize_mask_values  # numpy only

        return normalize_mask_values(value)

    def classes_problem(self, num_classes: int) -> str | None:
        """A one-line problem when a mapped class is outside ``0..num_classes-1``."""
        if self.mask_values is not None:
            bad = sorted(c for c in self.mask_values.values() if not 0 <= c < num_classes)
            if bad:
                return (f"data.mask_values: class(es) {bad} outside 0..{num_classes - 1} "
                        f"(data.num_classes = {num_classes})")
        return None


class LabelGeometry(LayoutParams):
    """``data.label_geometry`` of NIfTI labels."""

    label_geometry: Literal["check", "resample"] = Field(
        default="check", description="nifti: a label whose orientation, spacing or origin "
                                     "differs from its image stops the run (check), or is "
                                     "resampled onto the image grid with nearest neighbour "
                                     "through both affines (resample)")


class PictureOptions(MaskValues):
    """Folders, file-name patterns, ROI and mask decoding of picture (PNG/JPG/TIF) datasets."""

    images_dir: str = "images"
    masks_dir: str = "masks"
    unlabeled_dir: str = "unlabeled"
    test_images_dir: str | None = Field(
        default=None, description="images layout: labeled test images shipped with the data "
                                  "(e.g. 'test/image'), per domain folder; ids '<domain>/test/"
                                  "<name>'")
    test_masks_dir: str | None = Field(default=None, description="masks of test_images_dir")
    mask_rgb_classes: list[int] | None = Field(
        default=None, min_length=3, max_length=3,
        description="colour masks (M&Ms): class of a pixel whose R, G, B channel is set (> 127), "
                    "later channels win, e.g. [1, 2, 3]; other pixels are 0")
    mask_snap: Literal["auto", "nearest", "off"] = Field(
        default="auto", description="image masks with values not in data.mask_values: "
                                    "nearest maps each to "
                                    "the class of the nearest declared value, off stops with "
                                    "an error, auto is nearest for lossy masks (JPEG, WebP) "
                                    "and off otherwise; `ssmis data inspect` reports how many "
                                    "pixels were snapped")
    image_pattern: str = Field(
        default="{id}", description="images layout: file stem of an image, {id} the case id "
                                    "shared with its mask, * any text (DRIVE: '{id}_*' for "
                                    "21_training.tif), or a regular expression with (?P<id>...)")
    mask_pattern: str = Field(default="{id}",
                              description="file stem of a mask (DRIVE: '{id}_manual1')")
    roi_dir: str | None = Field(
        default=None, description="images layout: folder beside masks_dir with one region-of-"
                                  "interest (field of view) mask per image (DRIVE: 'mask'); "
                                  "metrics count only pixels inside it (non-zero)")
    roi_pattern: str = Field(default="{id}",
                             description="file stem of an ROI mask (DRIVE: '{id}_*_mask')")
    test_roi_dir: str | None = Field(default=None,
                                     description="ROI masks of test_images_dir")

    @field_validator("mask_snap", mode="before")
    @classmethod
    def _mask_snap(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted ``off`` as false: take it as the word it was."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _pictures(self) -> PictureOptions:
        if (self.test_images_dir is None) != (self.test_masks_dir is None):
            raise ValueError("data.test_masks_dir: give both test_images_dir and test_masks_dir")
        if self.roi_dir is not None and self.test_images_dir is not None \
                and self.test_roi_dir is None:
            raise ValueError("data.test_roi_dir: with data.roi_dir and test_images_dir, give "
                             "the ROI folder of the test images too (or they are scored on "
                             "every pixel)")
        for name in ("image_pattern", "mask_pattern", "roi_pattern"):
            text = getattr(self, name)
            if "(?P<id>" not in text and text.count("{id}") != 1:
                raise ValueError(f"data.{name}: '{text}' must contain '{{id}}' once (e.g. "
                                 "'{id}_training'), or be a regular expression with (?P<id>...)")
        if self.mask_rgb_classes is not None and self.mask_values is not None:
            raise ValueError("data.mask_rgb_classes: not together with data.mask_values")
        return self

    def classes_problem(self, num_classes: int) -> str | None:
        if self.mask_rgb_classes is not None:
            bad = sorted(c for c in self.mask_rgb_classes if not 0 <= c < num_classes)
            if bad:
                return (f"data.mask_rgb_classes: class(es) {bad} outside 0.."
                        f"{num_classes - 1}")
        return super().classes_problem(num_classes)


def option_defaults(classes: list[type[LayoutParams]]) -> dict[str, Any]:
    """Every option any of ``classes`` takes -> its default (the value a layout that does not
    take the option behaves as if it had)."""
    out: dict[str, Any] = {}
    for cls in classes:
        for name, info in cls.model_fields.items():
            out.setdefault(name, info.get_default(call_default_factory=True))
    return out


def parse_layout_params(params_cls: type[LayoutParams], layout: str, options: dict[str, Any],
                        known: dict[str, Any], generic: list[str],
                        replaced: frozenset[str] = frozenset()) -> LayoutParams:
    """Validate the layout options of a flat ``data`` mapping with ``params_cls``.

    ``known`` maps every option of any registered layout to its default, ``generic`` lists the
    generic ``data`` fields. An option of another layout is accepted only at its default (a run
    folder of an older ssmis writes every option), else refused naming it and ``layout``;
    except the names in ``replaced``: other layouts' labeled counts, ignored when the config
    gives this layout's own (a config switched to another layout by an override keeps its
    first layout's count, e.g. ``data.layout=la_h5 data.labeled_count=4`` on an ACDC file).

    Raises:
        ValueError: one line naming ``data.<field>``.
    """
    own = params_cls.model_fields
    taken: dict[str, Any] = {}
    for name, value in options.items():
        if name in own:
            taken[name] = value
        elif name in known:
            if value != known[name] and name not in replaced:
                takes = ", ".join(sorted(own)) or "none"
                raise ValueError(f"data.{name}: not used by {layout} (layout {layout} takes: "
                                 f"{takes}; data.split_file gives any split)")
        else:
            hint = difflib.get_close_matches(name, [*generic, *own], n=1)
            raise ValueError(f"data.{name}: unknown key"
                             + (f" (did you mean 'data.{hint[0]}'?)" if hint else ""))
    try:
        return params_cls.model_validate(taken)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        text = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if first.get("type") == "value_error":  # our validators name the field
            raise ValueError(text) from None
        if "input" in first and not isinstance(first["input"], dict):
            text += f" (got {first['input']!r})"
        raise ValueError(f"data.{loc}: {text}" if loc else f"data: {text}") from None

