"""Typed, validated params.yaml: a wrong key, type or value fails before any work, naming the key."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from skincancer.core.backbones import BACKBONES
from skincancer.core.names import DATASETS, LAYOUTS, METADATA_LAYOUTS
from skincancer.core.preparation import PILLOW_MAX_PIXELS, ColorConstancy, Preparation, ResizeMode

METADATA_FOLDER = "metadata"  # data/raw/metadata/: fetch.metadata tables


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


def _registered(kind: str, value: str, registry: Iterable[str]) -> str:
    """Registry names (layouts, backbones) are checked up front, listing the valid ones."""
    if value not in registry:
        raise ValueError(f"unknown {kind} {value!r}; known: {sorted(registry)}")
    return value


def _not_yes_no(value: object) -> object:
    """YAML's true/false would otherwise pass as the number 1/0."""
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is yes/no, not a number; write a number")
    return value


# Numbers as YAML wrote them: no bool, string or (for Int) fractional input is converted; Float takes 16 as 16.0.
Int = Annotated[int, Strict(), BeforeValidator(_not_yes_no)]
Float = Annotated[float, Strict(), BeforeValidator(_not_yes_no)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _knob(default: object, **kwargs: object) -> object:
    """A field for how a stage runs, never what it produces: dvc.yaml does not list it, so changing it
    makes no stage stale (tests/test_dvc_yaml.py, tests/test_pipeline.py)."""
    return Field(default, json_schema_extra={"execution": True}, **kwargs)


def result_keys(section: type[BaseModel]) -> list[str]:
    """The section's keys that change what a stage produces: the ones dvc.yaml declares as params."""
    return [name for name, field in section.model_fields.items() if not (field.json_schema_extra or {}).get("execution")]


class SampleParams(_Section):
    n_images: Int = Field(1200, ge=40, description="synthetic images across both archive layouts")
    seed: Int = 0


def _download_url(value: str) -> str:
    if not value.startswith(("http://", "https://", "file://")):
        raise ValueError(f"must start with http://, https:// or file://, got {value!r}")
    return value


DownloadUrl = Annotated[str, AfterValidator(_download_url)]

_DRIVE = re.compile(r"^[A-Za-z]:")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def path_problem(name: str) -> str | None:
    """Why a relative path (a params file name, a zip member) could land outside the folder it is joined
    to, or None when it stays inside: data/raw and the archives' readers share this one rule."""
    if "\\" in name:
        return "contains a backslash (Windows path form)"
    if name.startswith("/") or _DRIVE.match(name):
        return "is an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "has a '..' component"
    return None


def _file_name_problem(name: str) -> str | None:
    """Why a name from params cannot be a file inside its data/raw folder, or None."""
    return path_problem(name) or (None if PurePosixPath(name).name else "names no file")


def _url_file_name(url: str) -> str:
    """The last part of a url's path: the name a single file lands under in data/raw."""
    return PurePosixPath(urlsplit(url).path).name


def sha256_pin(value: str) -> str:
    """A pin as fetch compares it, lower-case; a typo is refused before any byte is fetched."""
    pin = value.strip().lower()
    if not _SHA256.fullmatch(pin):
        raise ValueError(f"{value!r} is not a sha256: write its 64 hex digits (as `sha256sum FILE` prints them)")
    return pin


class SourceParams(_Section):
    """A user source: an archive or folder at `url`, read by the layout reader `layout`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="folder under data/raw")
    url: DownloadUrl = Field(description="http(s):// or file:// to an archive, a folder, or (with `files`) a base")
    layout: str
    files: list[str] = Field(default_factory=list, description="file names under `url`, fetched one by one")
    sha256: str | dict[str, str] | None = Field(None, description="pin: one digest, or file name -> digest")
    auth_env: str | None = Field(None, description="environment variable holding a bearer token")

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str) -> str:
        return _registered("layout", value, LAYOUTS)

    @field_validator("files")
    @classmethod
    def _files_inside_the_folder(cls, files: list[str]) -> list[str]:
        """Each file lands at data/raw/<name>/<file>: a path that could climb out of it is refused."""
        for name in files:
            if problem := _file_name_problem(name):
                raise ValueError(f"{name!r} {problem}: each file lands under data/raw/<name>/; list paths "
                                 "relative to `url`, e.g. train.zip or images/ISIC_0000000.jpg")
        return files

    @field_validator("sha256")
    @classmethod
    def _pins_are_digests(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if isinstance(value, dict):
            return {name: _pin_of(name, pin) for name, pin in value.items()}
        return None if value is None else sha256_pin(value)

    @model_validator(mode="after")
    def _pins_name_files(self) -> SourceParams:
        if isinstance(self.sha256, dict) and (unknown := set(self.sha256) - set(self.files)):
            raise ValueError(f"sha256 pins files not listed in `files`: {sorted(unknown)}")
        if isinstance(self.sha256, str) and len(self.files) > 1:
            raise ValueError("one sha256 for several files: pin each as {file name: digest}")
        if not self.files and (problem := path_problem(_url_file_name(self.url))):
            raise ValueError(f"url {self.url!r}: its last part {problem}, and it would be the file's name under "
                             "data/raw/<name>/; write the path without '..'")
        return self


def _pin_of(name: str, pin: str) -> str:
    try:
        return sha256_pin(pin)
    except ValueError as error:
        raise ValueError(f"pin of {name!r}: {error}") from None


class MetadataParams(_Section):
    """A published metadata table (HAM10000_metadata.csv, an isic-cli metadata.csv, the ISIC 2020 ground
    truth) joined to every source by image id, filling patient/lesion ids, sex, age and site they lack."""

    url: DownloadUrl = Field(description="http(s):// or file:// to the CSV; it lands in data/raw/metadata/")
    layout: str
    sha256: Annotated[str, AfterValidator(sha256_pin)] | None = Field(None, description="pin of the file's digest")
    auth_env: str | None = Field(None, description="environment variable holding a bearer token")

    @field_validator("url")
    @classmethod
    def _names_a_file(cls, value: str) -> str:
        """The table lands as data/raw/metadata/<the url's file name>: it must be one plain file name."""
        name = _url_file_name(value)
        if problem := _file_name_problem(name):
            raise ValueError(f"{value!r}: its file name {name!r} {problem}; the table lands as "
                             f"data/raw/{METADATA_FOLDER}/<file name>, so point the url at the CSV itself")
        return value

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str) -> str:
        return _registered("metadata layout", value, METADATA_LAYOUTS)

    @property
    def file_name(self) -> str:
        return _url_file_name(self.url)


def _used_twice(values: list[Any]) -> list[Any]:
    return sorted({value for value in values if values.count(value) > 1})


class FetchParams(_Section):
    datasets: list[str] = Field(default_factory=lambda: ["sample"])
    sources: list[SourceParams] = Field(default_factory=list)
    metadata: list[MetadataParams] = Field(default_factory=list)
    sample: SampleParams = SampleParams()
    mirror: str | None = Field(None, description="base URL serving the catalog files under their original paths")
    strict: bool = Field(False, description="images missing from an archive or its table are an error")
    workers: Int = _knob(4, ge=1, description="concurrent downloads")
    retries: Int = _knob(5, ge=0)

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in DATASETS]
        if unknown:
            raise ValueError(f"unknown dataset(s) {unknown}; known: {sorted(DATASETS)}")
        return value

    @model_validator(mode="after")
    def _distinct_folders(self) -> FetchParams:
        names = self.datasets + [source.name for source in self.sources]
        if not names:
            raise ValueError("nothing to fetch: list catalog `datasets` or user `sources`")
        if duplicated := _used_twice(names):
            raise ValueError(f"names used twice across datasets and sources: {duplicated}")
        if METADATA_FOLDER in names:
            raise ValueError(f"{METADATA_FOLDER!r} is the folder of fetch.metadata tables: name the source otherwise")
        tables = [table.file_name for table in self.metadata]
        if twice := _used_twice(tables):
            raise ValueError(f"fetch.metadata lists two tables named {twice}: each lands as data/raw/metadata/<name>")
        return self


class LabelParams(_Section):
    malignant: list[str] = Field(
        default_factory=lambda: ["melanoma", "basal_cell_carcinoma", "squamous_cell_carcinoma"],
        min_length=1,
    )
    unknown: Literal["error", "drop"] = "error"

    @field_validator("malignant")
    @classmethod
    def _known_diagnoses(cls, value: list[str]) -> list[str]:
        """A misspelt name would silently label that diagnosis benign."""
        from skincancer.core.labels import closest_diagnosis, is_diagnosis

        for name in value:
            if not is_diagnosis(name):
                raise ValueError(f"{name!r} is not a diagnosis of the vocabulary (skincancer.core.labels); {closest_diagnosis(name)}")
        return value


GroupKey = Literal["patient_id", "lesion_id"]


class SplitParams(_Section):
    seed: Int = 42
    fractions: tuple[Float, Float, Float] = (0.8, 0.1, 0.1)
    group_by: tuple[GroupKey, ...] = Field(
        ("patient_id", "lesion_id"),
        description="images sharing any of these ids (or duplicates of each other) are one group, kept in one split",
    )
    folds: Int | None = Field(
        None, ge=3, le=20,
        description="K: the test split as without folds, the rest in K grouped folds (one model per fold); null: 80/10/10",
    )

    @field_validator("folds", mode="before")
    @classmethod
    def _none_is_no_folds(cls, value: object) -> object:
        return None if value == "none" else value

    @field_validator("group_by", mode="before")
    @classmethod
    def _keys_as_list(cls, value: object) -> object:
        """`none`/null: every image is its own group (duplicates still go together); one name is a list of one."""
        if value is None or value == "none":
            return ()
        return (value,) if isinstance(value, str) else value

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"must be three positive numbers summing to 1 (train, val, test), got {list(value)}")
        return value


# Resolution bands (skincancer.core.bands) by the original's longer side: the resized copies (the Kaggle 9-class
# folders are 180 px) vs the archive originals (HAM10000's 600x450 and up).
DEFAULT_BANDS = {"small": 0, "full_size": 512}
UNKNOWN_BAND = "unknown"  # the band of an image whose size fetch could not read
_BAND_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _band_problem(bands: Mapping[str, int]) -> str | None:
    """What makes ``bands`` unable to name one band for every image with a size, if anything."""
    minimums = list(bands.values())
    if not bands:
        return "no band; name at least one, e.g. {small: 0, full_size: 512}"
    if bad := sorted(name for name in bands if not _BAND_NAME.fullmatch(name)):
        return f"band name(s) {bad} are not lower-case words ({_BAND_NAME.pattern}); rename them, e.g. full_size"
    if UNKNOWN_BAND in bands:
        return f"{UNKNOWN_BAND!r} is the band of images without a recorded size; name this band otherwise"
    if negative := sorted(name for name, minimum in bands.items() if minimum < 0):
        return f"band(s) {negative} start below 0 px; a minimum is a longer side in pixels, 0 or more"
    if 0 not in minimums:
        return (f"no band starts at 0 (minimums {sorted(minimums)}): an image under {min(minimums)} px would have "
                "none; set the smallest minimum to 0")
    if twice := _used_twice(minimums):
        return f"several bands start at {twice} px; give each band its own minimum"
    return None


class ShardParams(_Section):
    image_size: Int = Field(96, ge=16, le=1024, description="'auto' in params.yaml: the train backbone's own size")
    resize: ResizeMode = "crop"
    color_constancy: ColorConstancy = Field(
        "none", description="per-image illuminant correction, applied alike when sharding and predicting"
    )
    target_shard_mb: Float = Field(16.0, gt=0)
    jpeg_quality: Int = Field(92, ge=50, le=100)
    workers: Int = _knob(2, ge=1, description="threads encoding images (Prefect task runs of a chunk each)")
    max_skipped_fraction: Float = Field(
        0.01, ge=0, le=1, description="fail the stage when more of the images than this are unreadable"
    )
    max_pixels: Int = Field(
        PILLOW_MAX_PIXELS, ge=1, le=PILLOW_MAX_PIXELS, description="larger images are skipped undecoded (bombs)"
    )
    bands: dict[str, Int] = Field(
        default_factory=lambda: dict(DEFAULT_BANDS),
        description="resolution band -> the smallest longer side (px) of an original in it; labels the image table",
    )
    seed: Int = 0

    @field_validator("bands")
    @classmethod
    def _bands_name_every_size(cls, bands: dict[str, int]) -> dict[str, int]:
        if problem := _band_problem(bands):
            raise ValueError(problem)
        return bands

    def preparation(self) -> Preparation:
        """How the shard stage prepares each image, the value the shards' manifest and the model card record."""
        return Preparation(self.image_size, self.resize, self.color_constancy, self.jpeg_quality, self.max_pixels)


class AugmentParams(_Section):
    flip: bool = Field(True, description="both axes")
    rotation: Float = Field(0.5, ge=0, le=0.5, description="fraction of a full turn")
    zoom: Float = Field(0.1, ge=0, lt=1)
    color: Float = Field(0.1, ge=0, lt=1, description="brightness/contrast/saturation jitter")
    resolution: Float = Field(
        0.0, ge=0, lt=1, description="most of the detail lost: down to a fraction in [1 - this, 1] of the side and back up"
    )

    @property
    def active(self) -> bool:
        return bool(self.flip or self.rotation or self.zoom or self.color or self.resolution)


# patient fields train.metadata may feed beside the image (skincancer.core.patient_context encodes them)
CONTEXT_FIELDS = ("age", "sex", "site")


class TrainParams(_Section):
    backbone: str = "small_cnn"
    weights: str | None = None
    batch_size: Int = Field(32, ge=1, description="per replica: the global batch is this times the device count")
    epochs: Int = Field(12, ge=1, description="phase 1: head (and small_cnn) training")
    learning_rate: Float = Field(2e-3, gt=0)
    fine_tune_epochs: Int = Field(0, ge=0, description="phase 2: unfreeze the top of a pretrained backbone")
    fine_tune_layers: Int = Field(20, ge=0)
    fine_tune_learning_rate: Float = Field(1e-4, gt=0)
    dropout: Float = Field(0.3, ge=0, lt=1)
    head: Literal["binary", "diagnosis"] = Field(
        "binary", description="diagnosis: learn the diagnoses train holds; P(malignant) sums the malignant ones"
    )
    metadata: list[str] = Field(
        default_factory=list, description="patient context fed beside the image features: any of age, sex, site"
    )
    imbalance: Literal["class_weight", "oversample", "none"] = "class_weight"
    balance: Literal["none", "band", "source"] = Field(
        "none", description="draw each resolution band (or source) equally often: a rare kind of image is seen as often"
    )
    early_stopping_patience: Int = Field(8, ge=1)
    reduce_lr_patience: Int = Field(3, ge=1, description="epochs without val AUC gain before halving the rate")
    cache_features: bool = Field(
        True, description="pretrained: phase 1 trains the head on features of the unaugmented images, computed once"
    )
    augment: AugmentParams = AugmentParams()
    precision: Literal["auto", "mixed_float16", "float32"] = "auto"
    distribute: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    tensorboard: bool = _knob(False, description="write TensorBoard logs to logs/train/")
    resume: bool = _knob(True, description="continue an interrupted run from its last finished epoch")
    seed: Int = 0

    @field_validator("backbone")
    @classmethod
    def _registered_backbone(cls, value: str) -> str:
        return _registered("backbone", value, BACKBONES)

    @field_validator("metadata", mode="before")
    @classmethod
    def _none_is_no_metadata(cls, value: object) -> object:
        return [] if value is None or value == "none" else value

    @field_validator("metadata")
    @classmethod
    def _known_context_fields(cls, fields: list[str]) -> list[str]:
        if unknown := [name for name in fields if name not in CONTEXT_FIELDS]:
            raise ValueError(f"unknown field(s) {unknown}; known: {list(CONTEXT_FIELDS)} (or [] for none)")
        if twice := _used_twice(fields):
            raise ValueError(f"{fields} lists {twice} more than once; list each field once, e.g. [age, sex, site]")
        return fields

    @field_validator("weights")
    @classmethod
    def _weights_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value != "imagenet" and not value.endswith((".h5", ".hdf5")):
            raise ValueError(f"must be 'imagenet', null, or a path to a .weights.h5/.h5 file, got {value!r}")
        backbone = info.data.get("backbone")  # absent when it failed its own check
        if value == "imagenet" and backbone and BACKBONES[backbone].application == "small_cnn":
            raise ValueError(f"{value!r}, but backbone {backbone} has no ImageNet weights (it trains from scratch); "
                             "set it to null or a weights file, or pick an ImageNet backbone such as efficientnet_b0")
        return value

    @field_validator("fine_tune_epochs")
    @classmethod
    def _fine_tunes_pretrained(cls, value: int, info: ValidationInfo) -> int:
        """train.py runs phase 2 only for a pretrained backbone: fine-tuning from scratch would be silently skipped."""
        if value and "weights" in info.data and info.data["weights"] is None:
            raise ValueError(f"{value} fine-tunes a pretrained backbone (phase 2), but train.weights is null, so it "
                             "would never run; set fine_tune_epochs: 0, or weights: imagenet (or a weights file)")
        return value


class ThresholdParams(_Section):
    policy: Literal["sensitivity", "youden", "fixed"] = "sensitivity"
    target: Float = Field(0.9, gt=0, le=1, description="sensitivity to reach on val (policy: sensitivity)")
    value: Float = Field(0.5, ge=0, le=1, description="the threshold (policy: fixed)")
    holds_on: Literal["pooled", "band", "source"] = Field(
        "pooled", description="reach the target on val pooled, or also on each resolution band or source of it"
    )
    min_malignant: Int = Field(
        10, ge=1, description="holds_on: a band or source needs this many malignant val images to carry the promise"
    )

    @model_validator(mode="after")
    def _holds_a_sensitivity(self) -> ThresholdParams:
        """Only a sensitivity target can be held per group: youden and fixed promise none."""
        if self.holds_on != "pooled" and self.policy != "sensitivity":
            raise ValueError(f"evaluate.threshold.holds_on {self.holds_on} holds a sensitivity target on each "
                             f"{self.holds_on}, but policy {self.policy} sets none; use policy: sensitivity, or "
                             "holds_on: pooled")
        return self


class CalibrationParams(_Section):
    method: Literal["platt", "none"] = Field("platt", description="platt: fitted on val; none: raw scores")
    prevalence: Float | None = Field(
        None, gt=0, lt=1, description="malignant share to calibrate to (null: val's own, the data's)"
    )


class OodParams(_Section):
    """The out-of-distribution flag (skincancer.evaluate.ood): its cut-off is this percentile of the val images' scores."""

    percentile: Float = Field(
        95.0, gt=50, lt=100, description="images scoring above this percentile of val's are flagged unlike the training "
        "images: about (100 - percentile)% of images like the training ones are flagged too",
    )


# the first n dihedral views of skincancer.evaluate.inference that make a group: identity, mirror, all flips, flips + turns
TtaViews = Annotated[Literal[1, 2, 4, 8], BeforeValidator(_not_yes_no)]


class EvaluateParams(_Section):
    threshold: ThresholdParams = ThresholdParams()
    calibration: CalibrationParams = CalibrationParams()
    bootstrap: Int = Field(1000, ge=0, description="resamples for the ROC AUC confidence interval")
    tta: TtaViews = Field(1, description="test-time augmentation: mean over 1 (off), a mirror (2), all flips (4), flips and quarter turns (8)")
    tta_scales: list[Annotated[Float, Field(gt=0, le=1)]] = Field(
        [1.0], min_length=1,
        description="each view also scored down at these fractions of its side and back up (1.0: as sharded)",
    )
    gallery: Int = Field(8, ge=0, description="most confident false negatives/positives shown in the report")
    ood: OodParams = OodParams()
    seed: Int = 0

    @field_validator("tta_scales")
    @classmethod
    def _distinct_scales(cls, scales: list[float]) -> list[float]:
        if len(set(scales)) != len(scales):
            raise ValueError(f"{scales} repeats a scale, which would only weight it twice; list each once, e.g. [1.0, 0.5]")
        return scales


def _fold_devices(value: object) -> object:
    """`auto`, or where each fold process may run: GPU indexes and `cpu` (a slot on the host's cores)."""
    if value == "auto":
        return value
    if not isinstance(value, list) or not value or not all(_is_device(device) for device in value):
        raise ValueError(f"must be auto or a non-empty list of GPU indexes (0, 1, ...) and cpu, got {value!r}")
    return value


def _is_device(device: object) -> bool:
    return device == "cpu" or (type(device) is int and device >= 0)


FoldDevices = Annotated[Literal["auto"] | list[int | Literal["cpu"]], PlainValidator(_fold_devices)]


class OrchestrationParams(_Section):
    """How stages run, never what they produce: no stage declares this section as a DVC param."""

    dask_address: str | None = Field(None, description="tcp://host:8786 of a Dask scheduler for downloads and shards")
    dask_workers: Int = Field(0, ge=0, description="without an address: a local Dask cluster of this many processes")
    fold_devices: FoldDevices = Field(
        "auto", description="where fold models train, one at a time each: auto (every GPU, else one CPU process), "
        "or a list of GPU indexes and `cpu`",
    )


# what the evaluation report prints as the params that produced it (dvc.yaml's evaluate stage declares the same keys)
REPORTED_PARAMS = {"fetch": {"datasets"}, "labels": True, "split": True, "shard": set(result_keys(ShardParams)),
                   "train": set(result_keys(TrainParams)), "evaluate": True}


class Params(_Section):
    fetch: FetchParams = FetchParams()
    labels: LabelParams = LabelParams()
    split: SplitParams = SplitParams()
    shard: ShardParams = ShardParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    orchestration: OrchestrationParams = OrchestrationParams()

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_image_size(cls, raw: object) -> object:
        """shard.image_size 'auto' becomes the backbone's own input size, so train and shard agree."""
        if not isinstance(raw, dict) or not isinstance(shard := raw.get("shard"), dict):
            return raw
        if shard.get("image_size") != "auto":
            return raw
        train = raw.get("train")
        backbone = train.get("backbone", TrainParams().backbone) if isinstance(train, dict) else None
        spec = BACKBONES.get(backbone) if isinstance(backbone, str) else None  # else train's own check names it
        size = spec.default_size if spec else ShardParams().image_size
        return {**raw, "shard": {**shard, "image_size": size}}

    @model_validator(mode="after")
    def _backbone_fits_image_size(self) -> Params:
        spec = BACKBONES[self.train.backbone]
        if self.shard.image_size < spec.min_size:
            raise ValueError(
                f"shard.image_size {self.shard.image_size} is below {self.train.backbone}'s minimum {spec.min_size}; "
                f"set it to at least {spec.min_size}, or auto ({spec.default_size})"
            )
        return self

    def reported(self) -> dict:
        """The sections the evaluation report shows, as plain JSON values."""
        return self.model_dump(mode="json", include=REPORTED_PARAMS)


def _problems(error: ValidationError) -> list[str]:
    """One line per problem, `key: message`. Our own checks (value errors) state the value they refuse and
    a section's or the document's checks name their keys, so only pydantic's messages get the value
    appended, once; a section or the whole document given as input is never shown."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message, value = item["msg"], item.get("input")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and section)"
        ours = item["type"] == "value_error"
        message = str(item["ctx"]["error"]) if ours else message
        shown = "" if ours or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {key}: {message}{shown}" if key else f"  {message}")
    return lines


def _invalid(path: Path, problems: list[str]) -> ParamsError:
    return ParamsError("\n".join([f"{path}: invalid params", *problems]))


def _missing_sections(raw: dict) -> list[str]:
    """Every section written out, so `dvc params diff` and the report show every knob a run used."""
    missing = [name for name in Params.model_fields if name not in raw]
    if not missing:
        return []
    return [f"  missing section(s): {', '.join(missing)}; write each out with all its keys, as the params.yaml "
            "shipped with the project does (copy them from it)"]


def _missing_files(params: Params) -> list[str]:
    """Files params.yaml names that are not there; a relative path is read from the current directory, the
    project root where stages run (skincancer.train.weights reads it the same way)."""
    weights = params.train.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        return [f"  train.weights: {weights} does not exist (from {Path.cwd()}); point it at a no-top "
                ".weights.h5/.h5 file, or set it to imagenet or null"]
    return []


def parse_params(raw: dict | None, path: Path = Path("params.yaml")) -> Params:
    """Validate a whole params document: every section present, every value valid, the files it names there."""
    problems = _missing_sections(raw or {})
    try:
        params = Params.model_validate(raw or {})
    except ValidationError as error:
        raise _invalid(path, problems + _problems(error)) from None
    if problems := problems + _missing_files(params):
        raise _invalid(path, problems)
    return params


def load_params(path: Path | str = "params.yaml") -> Params:
    """Load and validate the whole file, so a typo in any stage's section fails every stage early."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of stage sections, got {type(raw).__name__}")
    return parse_params(raw, path)


def _changed(section: BaseModel, key: str) -> bool:
    """Set to other than its default: params.yaml spells every key, so only a changed value is a choice."""
    return getattr(section, key) != type(section).model_fields[key].default


def _unused_train(train: TrainParams) -> Iterator[str]:
    """Mirrors train.py: phase 1 runs on cached features when pretrained with cache_features, phase 2 only
    when pretrained with fine_tune_epochs (an error otherwise, above)."""
    pretrained = train.weights is not None
    if pretrained and train.cache_features and train.augment.active and not train.fine_tune_epochs:
        yield ("train.augment is never applied: with weights and cache_features: true, phase 1 trains on "
               "features of the unaugmented images and fine_tune_epochs is 0; set cache_features: false to "
               "augment phase 1, or fine_tune_epochs > 0 to augment while fine-tuning")
    if not pretrained and not train.cache_features:
        yield ("train.cache_features: false has no effect without train.weights (only a pretrained backbone's "
               "features are cached); set it back to true")
    for key in ("fine_tune_layers", "fine_tune_learning_rate"):
        if not train.fine_tune_epochs and _changed(train, key):
            yield (f"train.{key} {getattr(train, key)} is unused with fine_tune_epochs: 0 (there is no phase 2); "
                   f"set fine_tune_epochs > 0 (with train.weights), or {key} back to "
                   f"{TrainParams.model_fields[key].default}")


def _unused_evaluate(evaluate: EvaluateParams) -> Iterator[str]:
    threshold, calibration = evaluate.threshold, evaluate.calibration
    if threshold.policy != "sensitivity" and _changed(threshold, "target"):
        yield (f"evaluate.threshold.target {threshold.target} is unused with policy: {threshold.policy}; "
               f"set policy: sensitivity, or target back to {ThresholdParams.model_fields['target'].default}")
    if calibration.method == "none" and calibration.prevalence is not None:
        yield (f"evaluate.calibration.prevalence {calibration.prevalence} is unused with method: none; "
               "set method: platt or prevalence: null")


def _unused_elsewhere(params: Params) -> Iterator[str]:
    if "sample" not in params.fetch.datasets and params.fetch.sample != SampleParams():
        yield ("fetch.sample is unused: `sample` is not in fetch.datasets; add it, or set fetch.sample back to "
               f"its defaults {SampleParams().model_dump()}")
    orchestration = params.orchestration
    if orchestration.dask_address and orchestration.dask_workers:
        yield (f"orchestration.dask_workers {orchestration.dask_workers} is unused: stages run on the cluster "
               "at dask_address; set dask_workers: 0, or dask_address: null for a local cluster")


def unused_settings(params: Params) -> list[str]:
    """Settings that have no effect as combined (a changed value, or augmentation that never runs): each
    names the keys and what to change. Stages and `skincancer check-params` print them as warnings;
    nothing fails."""
    return [*_unused_train(params.train), *_unused_evaluate(params.evaluate), *_unused_elsewhere(params)]
