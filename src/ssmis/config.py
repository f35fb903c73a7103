"""Experiment configuration: YAML files plus ``key.sub=value`` overrides, validated by pydantic.

Why pydantic: a typo (``train.lrr``), a wrong type (``train.lr=abc``) or a missing data folder must
stop the run before anything is written, with one line that names the field. Every section
forbids unknown keys for that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ssmis.errors import SSMISError
from ssmis.validation import format_validation_error


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: config fields a run writes into its ``config.yaml`` as records of what it resolved (not
#: inputs: two configs that differ only in them ask for the same run)
RECORD_FIELDS = ("data.resolved_normalization",)

Normalization = Literal["auto", "zscore", "minmax", "ct", "scale", "none"]


def _auto_or_bool(value: object) -> object:
    """``auto``, a bool, or the words true/false, else one clear error (not pydantic's union
    report)."""
    if value == "auto" or isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("true", "false"):
        return word == "true"
    raise PydanticCustomError("auto_or_bool", "expected auto, true or false")


#: a switch whose default decides by itself (``auto``) or is forced on/off
AutoBool = Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)]


def device_augmentable(data: DataConfig) -> bool:
    """Whether ``data``'s training augmentation has the batched device form
    (:mod:`ssmis.data.device_aug`): 2D SSL4MIS ``RandomGenerator`` with the resize."""
    return len(data.patch_size) == 2 and data.augmentation == "ssl4mis" and bool(data.resize)


class DataConfig(_Section):
    """Where the data is and how it is read: the generic fields; the chosen layout's own options
    (split rules, picture folders, mask values, ...) are its ``Params``
    (:mod:`ssmis.data.layouts.params`), validated from the same flat ``data`` mapping and kept
    in :attr:`params`.

    The section stays flat for the user and on disk: ``model_dump`` writes the layout's options
    beside the generic fields (every option any registered layout takes, in :data:`DATA_ORDER`,
    those the layout does not take at their defaults, as ssmis always wrote them), and an
    override ``data.mask_values=...`` sets the option. Reading ``cfg.data.<option>`` is a
    read-only fallback to ``cfg.data.params.<option>`` (an option the layout does not take reads
    as its default); new code should read ``cfg.data.params``.
    """

    layout: str = Field(
        description="how the dataset is stored (a registered layout, ssmis.data.layouts): "
                    "acdc_h5: SSL4MIS 2D slices + volumes; la_h5: UA-MT 3D volumes; brats_h5: "
                    "SSL4MIS BraTS2019 (data/<id>.h5, train/val/test.txt); nifti: "
                    "nnU-Net folder (imagesTr/labelsTr/...); images: PNG/JPG/TIF image + mask "
                    "folders (optionally one folder per domain); prepared: `ssmis data prepare` "
                    "output; `ssmis data layouts` lists them all"
    )
    root: Path
    num_classes: int = Field(ge=2)
    in_channels: int = Field(default=1, ge=1)
    class_names: dict[int, str] | None = None
    patch_size: list[int] = Field(min_length=2, max_length=3)
    spacing: list[float] | None = Field(
        default=None, description="voxel spacing in mm for distances, one value per array axis "
                                  "in the array's axis order (ACDC h5 volumes are (Z, H, W): "
                                  "[10, 1.5, 1.5], not [1.5, 1.5, 10]; LA h5 (X, Y, Z): "
                                  "[0.625, 0.625, 0.625]); null = unknown (voxel units); for "
                                  "nifti the headers are used unless this is set (then in the "
                                  "file's voxel order)"
    )
    spacing_check: bool = Field(
        default=True, description="stop when the largest spacing value is not on the slice "
                                  "axis of a thick-slice stack (ssmis.data.spacing)")
    augmentation: str = Field(
        default="ssl4mis", description="training augmentation (ssmis.data.augment): ssl4mis "
                                       "(SSL4MIS RandomGenerator 2D / UA-MT rot-flip-crop 3D), "
                                       "crop (3D random crop only: the Pancreas-CT code of "
                                       "CVBM / BCP / MC-Net) or synfoc (SynFoC's resize + "
                                       "scale-crop, rotate, flip, elastic; square 2D patches)")
    resize: bool = Field(
        default=True, description="2D models: resize each image (slice) to data.patch_size for "
                                  "training and prediction (true: the published 2D protocols), "
                                  "or train on random patch_size crops at native resolution "
                                  "and predict with a 2D sliding window over the whole image "
                                  "(false: large images, thin structures)")
    crop_foreground: float = Field(
        default=0.33, ge=0, le=1, description="data.resize: false: the probability that a "
                                              "labeled training crop is centred on a foreground "
                                              "pixel (nnU-Net: a third), else placed uniformly")
    num_workers: int = Field(default=0, ge=0)
    on_device: AutoBool = Field(
        default="auto", description="2D, augmentation ssl4mis, resize: true: keep every "
        "training slice on the training device and augment each batch there in one gather "
        "(the loader's batches pixel for pixel; no loader workers, no copies per step); auto = "
        "on when the slices take under a quarter of the free memory, for CUDA runs and for CPU "
        "runs without loader workers (num_workers: 0)")
    cache: bool = Field(default=False, description="keep training slices in memory")
    split_file: Path | None = Field(default=None, description="a splits.json to reproduce")
    normalization: Normalization | list[Normalization] = Field(
        default="auto", description="per channel: zscore (MRI), minmax (per case to [0, 1]), "
                                    "ct (clip to intensity_window, scale to [0, 1]), scale "
                                    "(divide by the integer type's maximum, e.g. 255), none; "
                                    "auto: by the dataset.json channel name as nnU-Net (CT: "
                                    "ct, noNorm: none, rescale_to_0_1: minmax, rgb_to_0_1: "
                                    "scale, any other name: zscore), scale for image files, "
                                    "else zscore")
    resolved_normalization: list[dict[str, Any]] | None = Field(
        default=None, description="written by ssmis train into the run's config.yaml: what "
                                  "data.normalization resolved to per channel (scheme and its "
                                  "numbers); ssmis predict applies it; not read for training")
    intensity_window: list[float] = Field(default=[-1000.0, 1000.0], min_length=2, max_length=2)
    slice_axis: int = Field(default=2, ge=0, le=2,
                            description="2D training on volumes: the axis that is sliced")

    _params: Any = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _layout_options(cls, value: Any, handler: Any) -> DataConfig:
        """Split the flat mapping: generic fields here, the rest validated by the layout's
        ``Params`` (one line naming ``data.<field>``), then the cross-field rules."""
        if not isinstance(value, dict):
            return handler(value)
        generic = {k: v for k, v in value.items() if k in cls.model_fields}
        options = {k: v for k, v in value.items() if k not in cls.model_fields}
        data = handler(generic)
        from ssmis.data.layouts import get_layout  # the registry never imports this module
        from ssmis.data.layouts.params import parse_layout_params

        try:
            layout = get_layout(data.layout)
        except SSMISError as err:
            raise ValueError(str(err)) from None
        from ssmis.data.layouts import LAYOUTS

        own_count = layout.labeled_key.removeprefix("data.")
        counts = frozenset(c.labeled_key.removeprefix("data.") for c in LAYOUTS.values())
        data._params = parse_layout_params(
            layout.Params, data.layout, options, layout_option_defaults(),
            list(cls.model_fields), counts if options.get(own_count) is not None else frozenset())
        return data._check(layout)

    def _check(self, layout: Any) -> DataConfig:
        problem = layout.config_problem(self)
        if problem is not None:
            raise ValueError(problem)
        if any(p < 1 for p in self.patch_size):
            raise ValueError(f"data.patch_size: {self.patch_size}: expected sizes >= 1")
        if self.spacing is not None and len(self.spacing) not in (2, 3):
            raise ValueError("data.spacing: expected 2 or 3 values in mm")
        if self.spacing is not None and min(self.spacing) <= 0:
            raise ValueError(f"data.spacing: expected positive values in mm, got {self.spacing}")
        if not self.resize and len(self.patch_size) != 2:
            raise ValueError("data.resize: false is for 2D models (data.patch_size [H, W]); 3D "
                             "models always train on crops and predict with a sliding window")
        if not self.resize and self.augmentation == "synfoc":
            raise ValueError("data.resize: false needs data.augmentation ssl4mis (synfoc "
                             "resizes every image to the patch)")
        if self.on_device is True and not device_augmentable(self):
            raise ValueError(f"data.on_device: true needs a 2D data.patch_size, data.augmentation "
                             f"ssl4mis and data.resize: true; found patch {self.patch_size}, "
                             f"augmentation {self.augmentation}, resize {self.resize}")
        from ssmis.data.augment import check_augmentation  # numpy/scipy/PIL only, no torch

        problem = check_augmentation(self.augmentation, self.patch_size)
        if problem is not None:
            raise ValueError(problem)
        if isinstance(self.normalization, list) and len(self.normalization) != self.in_channels:
            raise ValueError(f"data.normalization: {len(self.normalization)} values for "
                             f"data.in_channels = {self.in_channels}")
        lo, hi = self.intensity_window
        if hi <= lo:
            raise ValueError("data.intensity_window: expected [low, high] with low < high")
        return self

    @property
    def params(self) -> Any:
        """The chosen layout's validated options (its ``Layout.Params`` instance)."""
        if self._params is None:  # built with model_construct: the layout's defaults
            from ssmis.data.layouts import get_layout

            self._params = get_layout(self.layout).Params.model_construct()
        return self._params

    def __getattr__(self, name: str) -> Any:
        """Read-only fallback ``data.<option>`` -> ``data.params.<option>`` (see the class
        docstring); an option of another layout reads as its default."""
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            if name.startswith("_"):
                raise
        defaults = layout_option_defaults()
        if name not in defaults:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        params = self.params
        return getattr(params, name) if name in type(params).model_fields else defaults[name]

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any, info: Any) -> dict[str, Any]:
        """The flat section: generic fields and layout options in :data:`DATA_ORDER`."""
        out = handler(self)
        if not isinstance(out, dict):
            return out
        params = self.params
        values = params.model_dump(mode="json" if info.mode_is_json() else "python")
        defaults = layout_option_defaults()
        merged = {**defaults, **values, **out}
        order = [k for k in DATA_ORDER if k in merged]
        order += [k for k in merged if k not in order]
        return {k: merged[k] for k in order}

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    def names(self) -> dict[int, str]:
        """Names of the foreground classes (1..C-1), defaulting to 'class k'."""
        given = self.class_names or {}
        return {k: given.get(k, f"class{k}") for k in range(1, self.num_classes)}


#: the order of the flat ``data`` section as written (generic fields and layout options,
#: the order of ssmis's ``config.yaml`` files since before layouts owned their options);
#: options not listed (a plug-in layout's) follow
DATA_ORDER = (
    "layout", "root", "num_classes", "in_channels", "class_names", "labeled_patients",
    "labeled_slices", "labeled_count", "val_count", "patch_size", "spacing", "spacing_check",
    "augmentation", "resize", "crop_foreground", "resize_filter", "labeled_pick", "val_pool",
    "num_workers", "on_device", "cache", "split_file", "split_seed", "labeled_fraction",
    "labeled_cases", "labeled_domain", "group_by", "val_domain", "val_fraction", "test_count",
    "test_fraction", "normalization", "resolved_normalization", "intensity_window",
    "label_geometry", "slice_axis", "images_dir", "masks_dir", "unlabeled_dir",
    "test_images_dir", "test_masks_dir", "mask_rgb_classes", "mask_values", "mask_snap",
    "image_pattern", "mask_pattern", "roi_dir", "roi_pattern", "test_roi_dir")


_OPTION_DEFAULTS: dict[tuple[Any, ...], dict[str, Any]] = {}


def layout_option_defaults() -> dict[str, Any]:
    """Every option of a registered layout's ``Params`` -> its default (recomputed when a
    plug-in layout registers)."""
    from ssmis.data.layouts import LAYOUTS
    from ssmis.data.layouts.params import option_defaults

    key = tuple(cls.Params for cls in LAYOUTS.values())
    if key not in _OPTION_DEFAULTS:
        _OPTION_DEFAULTS.clear()
        _OPTION_DEFAULTS[key] = option_defaults(list(key))
    return _OPTION_DEFAULTS[key]


class ModelConfig(_Section):
    name: str = "unet2d"
    options: dict[str, Any] = Field(default_factory=dict)


class MethodConfig(_Section):
    name: str = "supervised"
    params: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(_Section):
    """Learning-rate schedule. poly: lr0 * (1 - t/T)^power; step: lr0 * gamma^floor(t/step_size)."""

    kind: Literal["constant", "poly", "step"] = "constant"
    power: float = 0.9
    step_size: int = Field(default=2500, ge=1)
    gamma: float = 0.1


class TrainConfig(_Section):
    iterations: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="labeled samples per batch (global: split "
                            "over the processes of a DDP run)")
    unlabeled_batch_size: int = Field(default=0, ge=0, description="unlabeled samples per "
                                      "batch (global, like batch_size)")
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    nesterov: bool = False
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    val_every: int = Field(default=200, ge=1)
    log_every: int = Field(default=1, ge=1, description="iterations per JSONL row")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(default=False, description="bfloat16 autocast on CUDA")
    deterministic: bool = True
    threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads (also used by `ssmis predict`); "
        "null = picked at start from the CPUs this process may use (affinity, cgroup quota, "
        "processes of this job on the machine) and those left idle by other work now "
        "(/proc/stat over 0.2 s): see ssmis.engine.threads")
    checkpoint_minutes: float = Field(
        default=30.0, ge=0, description="also save a resumable checkpoint every this many "
                                        "minutes of training (0: only at validation); SIGINT/"
                                        "SIGTERM always save one before stopping")
    sync_bn: AutoBool = Field(
        default="auto", description="several processes (DDP): BatchNorm -> SyncBatchNorm; auto "
        "= on for CUDA runs whose per-process batch (labeled + unlabeled) is below 8")
    compile: bool = Field(
        default=False, description="torch.compile the networks' encoders and decoders (the "
        "first iterations pay the compilation: minutes on a CPU, about a minute on a GPU; "
        "dropout draws other random numbers than eager mode)")
    channels_last: AutoBool = Field(
        default="auto", description="networks and input batches in channels-last memory "
        "format; auto = on for CUDA runs (on the CPU it did not pay, docs/benchmarks.md)")
    foreach: bool = Field(
        default=True, description="multi-tensor (foreach) SGD and EMA updates: the same "
        "arithmetic as one update per tensor, in a few kernels")


class EvalConfig(_Section):
    unit: Literal["mm", "voxel"] = "mm"
    empty_rule: Literal["nan", "medpy"] = "nan"
    hd95_mode: Literal["monai", "medpy"] = "monai"
    lcc: bool = Field(default=False, description="keep the largest connected component per class")
    stride: list[int] | None = Field(
        default=None, description="sliding-window stride (3D, and 2D with data.resize: false), "
                                  "1 <= stride <= patch per axis; "
                                  "null = half the patch")
    slice_batch_size: int = Field(default=16, ge=1, description="2D: slices (or sliding "
                                  "windows, data.resize: false) per forward pass")
    zoom_back: Literal["auto", "labels", "probabilities"] = Field(
        default="auto", description="2D models with data.resize: true: the prediction at the "
                                    "patch size is zoomed back to the image as class "
                                    "probabilities (bilinear, then argmax) or as a label map "
                                    "(nearest: staircases, thin structures lost); auto = labels "
                                    "for acdc_h5 (the SSL4MIS protocol), probabilities otherwise")
    window_batch_size: int = Field(
        default=4, ge=1, description="3D sliding windows predicted at once (the same result "
        "as one at a time, to float rounding; 1 = one at a time)")
    val_max_cases: int | None = Field(default=None, ge=1, description="validate on the first N")
    overlay_cases: int = Field(
        default=4, ge=0, description="test cases drawn in overlays_test.png, taken from every "
                                     "domain in turn (the first case of each, then the second)")
    selection: Literal["best_overall", "last_phase"] = Field(
        default="best_overall",
        description="which checkpoint the test split sees: best_overall = highest validation "
                    "Dice over the whole run (every phase); last_phase = the best of the last "
                    "phase only, as the BCP/CVBM/CML scripts choose")
    regions: dict[str, list[int]] | None = Field(
        default=None, description="score unions of classes instead of single classes, e.g. "
                                  "fundus {cup: [1], disc: [1, 2]} or BraTS {WT: [1, 2, 3], "
                                  "TC: [1, 3], ET: [3]}; used for validation and test")

    def structures(self, names: dict[int, str]) -> dict[str, list[int]]:
        """What is scored: ``{key: class ids}``, one entry per class unless ``regions`` is set
        (class keys are the ids as strings, region keys their names)."""
        if self.regions:
            return {name: sorted(set(ids)) for name, ids in self.regions.items()}
        return {str(k): [k] for k in names}


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 1337
    output_dir: Path = Path("runs")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        name = Path(self.name)
        if not self.name.strip() or name.is_absolute() or ".." in name.parts or not name.parts:
            raise ValueError(f"name: {self.name!r} must be a relative folder name inside "
                             "output_dir (no absolute path, no '..')")
        if self.eval.stride is not None:
            patch = self.data.patch_size
            if len(self.eval.stride) != len(patch):
                raise ValueError("eval.stride: expected as many values as data.patch_size")
            if any(not 1 <= s <= p for s, p in zip(self.eval.stride, patch, strict=True)):
                raise ValueError(f"eval.stride: {self.eval.stride} must be between 1 and the "
                                 f"patch {patch} on every axis (a larger stride leaves voxels "
                                 "never predicted)")
        for name, ids in (self.eval.regions or {}).items():
            bad = [i for i in ids if not 1 <= i < self.data.num_classes]
            if not ids or bad:
                raise ValueError(f"eval.regions.{name}: expected foreground class ids in 1.."
                                 f"{self.data.num_classes - 1} (data.num_classes "
                                 f"{self.data.num_classes}), got {ids}")
        return self


# --------------------------------------------------------------------------------------------
# loading, overrides, error formatting


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=0.02`` -> (['train', 'lr'], 0.02); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise SSMISError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise SSMISError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        stripped = raw.strip()
        if (stripped[:1], stripped[-1:]) in (("[", "]"), ("{", "}")):
            reason = " ".join(str(err).split())
            raise SSMISError(f"override '{text}': value is not valid YAML ({reason})") from None
        value = raw  # a plain string YAML cannot read unquoted: data.mask_pattern={id}_seg
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set nested keys in a plain dict; unknown keys are caught later by validation."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise SSMISError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def validate_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise SSMISError(format_validation_error(err, ExperimentConfig, source)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SSMISError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise SSMISError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise SSMISError(f"{path}: expected a mapping of sections (data, model, method, train)")
    return data


def check_paths(cfg: ExperimentConfig) -> None:
    if not cfg.data.root.exists():
        raise SSMISError(f"data.root: folder not found: {cfg.data.root}")
    if not cfg.data.root.is_dir():
        raise SSMISError(f"data.root: expected a folder, got a file: {cfg.data.root}")


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (paths as strings), saved in every run folder."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
