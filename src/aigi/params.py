"""Typed, validated `params.yaml`.

Every knob of the pipeline lives here with its type and range. `load()` reads the file once and
fails with one line naming the key (`finetune.lr: ...`) on an unknown key, a wrong type or an
out-of-range value, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import atexit
import copy
import difflib
import inspect
import json
import os
import re
import string
import sys
import time
import types
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aigi.classes import REAL
from aigi.errors import AigiError
from aigi.methods import IMAGE_TOWER, METHODS

METHOD_NAMES = tuple(METHODS)  # Literal[METHOD_NAMES] is Literal["contrastive", "linear_probe", "full"]

MAX_IMAGE_PIXELS = 50_000_000  # default decompression-bomb guard, for preprocess, predict and serving
MAX_COMPRESSION_RATIO = 100  # default zip-bomb guard: expanded / compressed size of an archive member (sources.py)

PerClass = Annotated[int, Field(gt=0)] | Literal["all"]
# A generator's class name: a safe folder name (data/raw/<dataset>/images/<split>/<CLASS>/), as class_name() makes them.
ClassName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")]


def _dataset_name(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
        raise ValueError(f"dataset name {name!r}: use lower-case letters, digits, _ and - (it names the dataset's "
                         f"folders, data/raw/<name>/, and its DVC stages, download@<name>)")
    return name


DatasetName = Annotated[str, AfterValidator(_dataset_name)]


def _generators(names: list[str], key: str) -> list[str]:
    """Generator class names in upper case (as the data's classes are), none REAL, no repeats."""
    upper = [n.upper() for n in names]
    if REAL in upper:
        raise ValueError(f"{key} lists {REAL}, which is the real class, not a generator")
    repeated = sorted({n for n in upper if upper.count(n) > 1})
    if repeated:
        raise ValueError(f"{key} lists {', '.join(repeated)} more than once")
    return upper


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class DatasetParams(Section):
    """One entry of `datasets`: where its images come from, how its folders read, how its classes are named."""

    source: Literal["kaggle", "huggingface", "url", "local", "synthetic"] = "kaggle"
    path: str | None = None  # folder or archive, for `local`
    kaggle_dataset: str = "birdy654/cifake-real-and-ai-generated-synthetic-images"
    huggingface_dataset: str | None = None  # a hub dataset id, for `huggingface`
    url: str | None = None  # a zip or tar, for `url`
    sha256: str | None = None  # expected SHA-256 of the `url` archive (optional)
    synthetic_train_per_class: Annotated[int, Field(ge=0)] = 600  # 0: no train/, a test-only dataset
    synthetic_test_per_class: Annotated[int, Field(gt=0)] = 200
    synthetic_seed: Annotated[int, Field(ge=0)] | None = None  # null: `seed`; another value draws other images
    synthetic_artifact_region: Literal["full", "center", "corner"] = "full"  # where FAKE carries its fingerprint
    synthetic_generators: Annotated[list[ClassName], Field(min_length=1)] = Field(default_factory=lambda: ["FAKE"])
    layout: Literal["auto", "folder", "genimage", "label_column"] = "auto"
    real_class: Annotated[str, Field(min_length=1)] = REAL  # folder layout: the real images' folder (any case)
    label_column: Annotated[str, Field(min_length=1)] = "label"  # label_column layout: the column naming the class
    real_labels: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: [REAL, "nature"])
    display_names: dict[str, str] = Field(default_factory=lambda: {"FAKE": "Stable Diffusion 1.4"})
    max_archive_bytes: Annotated[int, Field(gt=0)] = 20_000_000_000  # expanded size limit
    max_archive_members: Annotated[int, Field(gt=0)] = 1_000_000
    max_compression_ratio: Annotated[float, Field(gt=1)] = MAX_COMPRESSION_RATIO  # a member expanding more: refused
    class_aliases: dict[ClassName, ClassName] = Field(default_factory=dict)  # {its class: the detector's class}

    @field_validator("synthetic_generators")
    @classmethod
    def _synthetic_generators(cls, v: list[str]) -> list[str]:
        return _generators(v, "synthetic_generators")

    @field_validator("display_names")
    @classmethod
    def _display_names(cls, v: dict[str, str]) -> dict[str, str]:
        return {k.upper(): name for k, name in v.items()}  # class names are upper case

    @field_validator("class_aliases")
    @classmethod
    def _aliases(cls, v: dict[str, str]) -> dict[str, str]:
        upper = {k.upper(): name.upper() for k, name in v.items()}  # class names are upper case
        if REAL in upper or REAL in upper.values():
            raise ValueError(f"{REAL} cannot be aliased (real images are named by real_class / real_labels)")
        return upper

    @model_validator(mode="after")
    def _source_needs(self) -> DatasetParams:
        needs = {"local": "path", "url": "url", "huggingface": "huggingface_dataset"}
        key = needs.get(self.source)
        if key and not getattr(self, key):
            raise ValueError(f"source '{self.source}' needs {key} to be set")
        return self


class AuditParams(Section):
    """The shortcut audit (src/aigi/audit.py): a classifier on file metadata only, per generator vs REAL."""

    threshold: Annotated[float, Field(gt=0.5, lt=1)] = 0.75  # metadata ROC-AUC above this: a one-line warning
    folds: Annotated[int, Field(ge=2, le=20)] = 5  # stratified cross-validation folds
    max_images_per_class: PerClass = 2000  # seeded sample of each class's files (both splits); `all` reads every one


class PreprocessParams(Section):
    train_per_class: PerClass = 8000
    test_per_class: PerClass = 2000
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    on_bad_image: Literal["skip", "fail"] = "skip"
    drop_train_duplicates_of_test: bool = True
    chunk_size: Annotated[int, Field(gt=0)] = 1024
    workers: Annotated[int, Field(ge=0)] = 0  # 0 = all cores
    max_image_pixels: Annotated[int, Field(gt=0)] = MAX_IMAGE_PIXELS  # decompression-bomb guard
    jpeg_align: Annotated[int, Field(ge=1, le=100)] | None = None  # re-encode every image as JPEG at this quality
    resize: Literal["shorter_side", "crop"] = "shorter_side"  # crop: native centre S×S where the image is large enough


PACKAGED_CONFIGS = Path(__file__).parent / "model_configs"  # aigi-tiny and the project's other model configs
CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")  # what open_clip needs of a model config


@lru_cache(maxsize=1)
def known_archs() -> frozenset[str]:
    """open_clip.list_models() plus the packaged configs, read from the config files: params are loaded by
    every stage, and importing open_clip (torch and more) only to check a name would cost seconds."""
    spec = find_spec("open_clip")
    folders = [Path(d) / "model_configs" for d in (spec.submodule_search_locations or [])] if spec else []
    return frozenset(f.stem for d in (*folders, PACKAGED_CONFIGS) for f in d.glob("*.json"))


def _check_arch(arch: str, root: Path | None) -> str:
    """`model.arch`: an open_clip model name, a packaged config (`aigi-tiny`), or an existing config JSON."""
    if arch.endswith(".json"):
        path = Path(arch)
        path = path if path.is_absolute() or root is None else root / path
        if not path.is_file():
            raise ValueError("no such model-config JSON file (a relative path is read from the project root); "
                             "fix the path, or use an open_clip model name such as ViT-B-32")
        try:
            config = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            config = None
        missing = [k for k in CONFIG_KEYS if not isinstance(config, dict) or k not in config]
        if missing:
            raise ValueError(f"{path.name} is not an open_clip model config (it needs {', '.join(missing)}); "
                             f"see {PACKAGED_CONFIGS.name}/aigi-tiny.json in the package for an example")
        return arch
    names = known_archs()
    if arch in names:
        return arch
    packaged = sorted(f.stem for f in PACKAGED_CONFIGS.glob("*.json"))
    close = difflib.get_close_matches(arch, sorted(names), n=3)
    raise ValueError(f"not a known model; use an open_clip name (e.g. ViT-B-32, ViT-B-16, ViT-L-14"
                     f"{'; closest: ' + ', '.join(close) if close else ''}; all: open_clip.list_models()), "
                     f"{', '.join(packaged)}, or the path of an open_clip model-config JSON")


class ModelParams(Section):
    arch: str = "ViT-B-32"  # open_clip name, `aigi-tiny`, or a path to a model-config JSON
    pretrained: str = "openai"  # open_clip tag, a local checkpoint path, or `none`
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str, info: ValidationInfo) -> str:
        return _check_arch(v, (info.context or {}).get("root"))

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")


class ZeroshotParams(Section):
    # Class name -> prompts; REAL is required. Generators without their own prompts get the templates.
    prompts: dict[str, list[str]] = Field(
        default_factory=lambda: {
            REAL: ["a real photo.", "a photo taken with a camera.", "a real photograph of an object."],
            "FAKE": ["an AI-generated image.", "a synthetic image made by a computer.",
                     "a fake image generated by AI."],
        }
    )
    # Prompts for a generator that has none in `prompts`; {name} = its display name (datasets.<name>.display_names).
    generator_templates: list[str] = Field(
        default_factory=lambda: ["an image generated by {name}.", "an AI-generated image made with {name}.",
                                 "a synthetic image created by {name}."]
    )
    batch_size: Annotated[int, Field(gt=0)] = 256

    @field_validator("prompts")
    @classmethod
    def _real_and_lists(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if not v.get(REAL):
            raise ValueError(f"needs a non-empty list of prompts for {REAL}")
        for name, texts in v.items():
            if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"needs a non-empty list of prompts for {name}")
        return v

    @field_validator("generator_templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one template, e.g. 'an image generated by {name}.'")
        for t in v:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
            if fields != ["name"]:
                raise ValueError(f"each template needs exactly one {{name}} and no other {{...}} field: {t!r}")
        return v


class AugmentParams(Section):
    """Robustness augmentation of training batches (src/aigi/augment.py); a range as [low, high], null = off."""

    p: Annotated[float, Field(ge=0, le=1)] = 0.5  # each image: blurred with this probability, then JPEG'd with it
    blur_sigma: tuple[Annotated[float, Field(ge=0, le=10)], Annotated[float, Field(ge=0, le=10)]] | None = (0.0, 3.0)
    jpeg_quality: tuple[Annotated[int, Field(ge=1, le=100)], Annotated[int, Field(ge=1, le=100)]] | None = (30, 100)

    @field_validator("blur_sigma", "jpeg_quality")
    @classmethod
    def _low_high(cls, v):
        if v is not None and v[0] > v[1]:
            raise ValueError(f"needs [low, high] with low <= high, got {list(v)}")
        return v


class FinetuneParams(Section):
    method: Literal[METHOD_NAMES] = "contrastive"  # the rows of aigi.methods.METHODS
    epochs: Annotated[int, Field(gt=0)] = 5
    lr: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    batch_size: Annotated[int, Field(gt=0)] = 128
    grad_accum_steps: Annotated[int, Field(gt=0)] = 1
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.05
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0  # 0 = no clipping
    early_stopping_patience: Annotated[int, Field(ge=0)] = 2  # epochs without val gain; 0 = off
    augment_flip: bool = True
    eval_batch_size: Annotated[int, Field(gt=0)] = 256
    unlocked_layers: Annotated[int, Field(ge=0)] | None = None  # last N image-tower blocks train; 0/None = all
    lock_text: bool = False  # contrastive: keep the text tower (class prompt embeddings) fixed
    wise_alpha: Annotated[float, Field(ge=0, le=1)] = 1.0  # WiSE-FT weight of the fine-tuned model; 1 = off
    compile: bool | Literal["auto"] = "auto"  # torch.compile the training forward; auto: on for CUDA, off for CPU
    calibration: Literal["temperature", "none"] = "temperature"  # temperature scaling fitted on validation
    augment: AugmentParams | None = None  # blur + JPEG of a random share of each batch (Wang et al. 2020); null = off

    @model_validator(mode="after")
    def _method_knobs(self) -> FinetuneParams:
        if self.unlocked_layers and IMAGE_TOWER not in METHODS[self.method].trains:
            towers = " or ".join(m.name for m in METHODS.values() if IMAGE_TOWER in m.trains)
            raise ValueError(f"unlocked_layers does not apply to {self.method} (its image tower is frozen); "
                             f"set it to null or use method {towers}")
        return self


class RobustnessParams(Section):
    """Perturbations of the original test images, applied before the resize to the model's input."""

    jpeg_quality: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [90, 70, 50, 30])
    blur_sigma: list[Annotated[float, Field(gt=0, le=20)]] = Field(default_factory=lambda: [0.5, 1.0, 2.0])
    rescale: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: [0.75, 0.5])
    bootstrap_samples: Annotated[int, Field(ge=0)] = 200  # per perturbation; 0 = no confidence intervals


class EvaluateParams(Section):
    test_on: list[DatasetName] = Field(default_factory=list)  # more test sets; train_on's own test is always scored
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    target_fpr: Annotated[float, Field(gt=0, lt=1)] | None = None  # FPR budget: threshold chosen on validation
    unseen_generators: list[ClassName] = Field(default_factory=list)  # held out of train/val, tested apart
    bootstrap_samples: Annotated[int, Field(ge=0)] = 1000  # 0 = no confidence intervals
    batch_size: Annotated[int, Field(gt=0)] = 256
    robustness: RobustnessParams = RobustnessParams()

    @field_validator("unseen_generators")
    @classmethod
    def _unseen(cls, v: list[str]) -> list[str]:
        return _generators(v, "unseen_generators")


class ExplainParams(Section):
    """Grad-CAM saliency (src/aigi/saliency.py): the report's grid and the border-share metric."""

    examples: Annotated[int, Field(ge=1, le=8)] = 2  # per class and model: most confident correct, and mistakes
    max_images: Annotated[int, Field(gt=0)] | None = 500  # seeded test subset for the border share; null = all
    border_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.125  # border = outer 1/8 of each side
    batch_size: Annotated[int, Field(gt=0)] = 64


class ReportParams(Section):
    mistakes_shown: Annotated[int, Field(ge=0)] = 16


class MlflowParams(Section):
    experiment: Annotated[str, Field(min_length=1)] = "aigi"
    registered_model: Annotated[str, Field(min_length=1)] = "aigi-clip-detector"
    tracking_uri: str | None = None  # default: sqlite:///<project root>/mlflow.db
    model_alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")] = "newest"

    @field_validator("model_alias")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v.lower() == "latest" or re.fullmatch(r"[vV]\d+", v):
            raise ValueError("'latest' and version-like names (v1, ...) are reserved by MLflow; pick another alias")
        return v


class Params(Section):
    seed: Annotated[int, Field(ge=0)] = 42
    train_on: DatasetName = "cifake"  # the dataset whose train split trains; its test split is the main test
    datasets: dict[DatasetName, DatasetParams] = Field(default_factory=lambda: {"cifake": DatasetParams()})
    audit: AuditParams = AuditParams()
    preprocess: PreprocessParams = PreprocessParams()
    model: ModelParams = ModelParams()
    zeroshot: ZeroshotParams = ZeroshotParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    explain: ExplainParams = ExplainParams()
    report: ReportParams = ReportParams()
    mlflow: MlflowParams = MlflowParams()

    @model_validator(mode="after")
    def _names_are_datasets(self) -> Params:
        names = ", ".join(self.datasets) or "none"
        if self.train_on not in self.datasets:
            raise ValueError(f"train_on: '{self.train_on}' is not a dataset in `datasets` (names: {names})")
        for name in self.evaluate.test_on:
            if name not in self.datasets:
                raise ValueError(f"evaluate.test_on: '{name}' is not a dataset in `datasets` (names: {names})")
        if self.train_on in self.evaluate.test_on:
            raise ValueError(f"evaluate.test_on: '{self.train_on}' is train_on, whose test split is always scored; "
                             f"remove it")
        repeated = sorted({n for n in self.evaluate.test_on if self.evaluate.test_on.count(n) > 1})
        if repeated:
            raise ValueError(f"evaluate.test_on lists {', '.join(repeated)} more than once")
        return self

    def dataset(self, name: str) -> DatasetParams:
        """`datasets.<name>`; a name that is not there (e.g. a stage's argument) is one clear line."""
        if name not in self.datasets:
            raise AigiError(f"no dataset '{name}' in params.yaml `datasets` (names: {', '.join(self.datasets)})")
        return self.datasets[name]

    @property
    def training_dataset(self) -> DatasetParams:
        return self.datasets[self.train_on]

    def flat(self) -> dict[str, Any]:
        """Every param as `section.key` -> value (lists and dicts as their YAML text)."""
        return flatten(self.model_dump())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "prompts":
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, dict)):
            out[name] = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        else:
            out[name] = value
    return out


def _one_line(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]
                       if not str(p).startswith(("function-", "literal[", "int", "[key]")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml in the repo for the valid keys)"
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{key}: {msg}{shown}" if key else msg)  # a top-level check's message starts with its key
    # Union types report one error per member; keep the first per key to stay on one line.
    seen: dict[str, str] = {}
    for p in parts:
        seen.setdefault(p.split(":", 1)[0], p)
    return f"{source}: " + "; ".join(seen.values())


def parse(raw: Any, source: str = "params", root: Path | None = None) -> Params:
    """Validated params; `root` is the folder relative paths are read from (default: the current folder)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AigiError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw, context={"root": root})
    except ValidationError as e:
        raise AigiError(_one_line(e, source)) from None


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise AigiError(f"{path}: not found; run from the project root (where dvc.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise AigiError(f"{path}: not valid YAML{where}; fix the syntax") from None
    params = parse(raw, str(path), path.parent)
    folder = os.environ.get(RECORD_ENV)
    return recording(params, Path(folder)) if folder else params


# Which params a stage reads (tests/test_pipeline_e2e.py checks them against dvc.yaml; see aigi.paramdeps).
# With AIGI_RECORD_PARAMS=<folder> set, load() returns the same validated Params behind a view that notes
# each key the process reads, and at exit writes them to <folder>/<stage>/<pid>-<ns>.json. Unset: nothing.
RECORD_ENV = "AIGI_RECORD_PARAMS"


class ParamsRecord:
    """The dotted keys one process used. `read`: values that can change what the stage writes (a leaf reached
    by attribute, or dumped with model_dump / model_dump_json: the report prints them, finetune's checkpoint
    fingerprint hashes them). `logged`: keys only dumped whole with `flat()`, which is what MLflow gets (run
    params, the `evaluated_with.*` tags) and not an output DVC tracks."""

    def __init__(self) -> None:
        self.read: set[str] = set()
        self.logged: set[str] = set()

    def to_json(self) -> dict[str, Any]:
        return {"stage": stage_name(), "argv": sys.argv, "read": sorted(self.read), "logged": sorted(self.logged)}


def stage_name() -> str:
    """The DVC stage this process runs (DVC sets DVC_STAGE, e.g. `preprocess@cifake`), else script + argv."""
    if os.environ.get("DVC_STAGE"):
        return os.environ["DVC_STAGE"]
    return "@".join([Path(sys.argv[0]).stem or "python", *sys.argv[1:]]).replace("/", "_")


def _leaves(section: Section, dump: dict[str, Any], prefix: str) -> list[str]:
    """The dotted leaf keys of `dump` (a model_dump of `section`, perhaps with include/exclude)."""
    keys = []
    for name, value in dump.items():
        sub = getattr(section, name, None)
        if isinstance(sub, Section) and isinstance(value, dict):
            keys += _leaves(sub, value, f"{prefix}{name}.")
        elif _sections(sub) and isinstance(value, dict):
            keys += [k for item, v in value.items() for k in _leaves(sub[item], v, f"{prefix}{name}.{item}.")]
        else:
            keys.append(prefix + name)
    return keys


def _sections(value: Any) -> bool:
    """A non-empty dict of sections (a named set of sections, such as datasets by name)."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, Section) for v in value.values())


def _noted(value: Any, key: str, record: ParamsRecord) -> Any:
    if isinstance(value, Section):
        return Recording(value, f"{key}.", record)
    if _sections(value):
        return {name: Recording(v, f"{key}.{name}.", record) for name, v in value.items()}
    record.read.add(key)  # a leaf: a value, or a list or dict of values (zeroshot.prompts is one key)
    return value


class Recording:
    """A read-only view of a params section that notes into a ParamsRecord each key read through it.

    A field that is a section comes back as a view with the longer prefix, so a section passed on to a
    library function (`p.finetune`) notes only what that function reads. Methods and properties defined in
    this module run with the view as `self`; pydantic's own (`model_copy`, ...) see the plain section and
    note nothing, and a view pickled (to a worker process) arrives as the plain section.
    """

    __slots__ = ("_prefix", "_record", "_section")

    def __init__(self, section: Section, prefix: str, record: ParamsRecord) -> None:
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_record", record)

    def __getattr__(self, name: str) -> Any:
        section = self._section
        if name in type(section).model_fields:
            return _noted(getattr(section, name), self._prefix + name, self._record)
        attr = inspect.getattr_static(type(section), name, None)
        if isinstance(attr, property) and attr.fget is not None and attr.fget.__module__ == __name__:
            return attr.fget(self)
        if inspect.isfunction(attr) and attr.__module__ == __name__:
            return types.MethodType(attr, self)
        return getattr(section, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"params are read-only ({self._prefix}{name})")

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        dump = self._section.model_dump(**kwargs)
        self._record.read.update(_leaves(self._section, self._section.model_dump(
            include=kwargs.get("include"), exclude=kwargs.get("exclude")), self._prefix))
        return dump

    def model_dump_json(self, **kwargs: Any) -> str:
        self.model_dump(include=kwargs.get("include"), exclude=kwargs.get("exclude"))
        return self._section.model_dump_json(**kwargs)

    def flat(self) -> dict[str, Any]:
        """The whole tree for logging (MLflow params and tags): noted as logged, not read."""
        section = self._section
        self._record.logged.update(_leaves(section, section.model_dump(), self._prefix))
        return section.flat()

    def __eq__(self, other: object) -> bool:
        return self._section == (other._section if isinstance(other, Recording) else other)

    def __hash__(self) -> int:
        return hash(self._section)

    def __repr__(self) -> str:
        return f"Recording({self._section!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return copy.copy, (self._section,)


_RECORD: ParamsRecord | None = None


def recording(params: Params, folder: Path) -> Params:
    """`params` behind a Recording view; this process's keys are written to `folder` at exit."""
    global _RECORD
    if _RECORD is None:
        _RECORD = ParamsRecord()
        atexit.register(write_record, _RECORD, Path(folder).resolve())
    return Recording(params, "", _RECORD)  # type: ignore[return-value]  # it reads as a Params


def write_record(record: ParamsRecord, folder: Path) -> Path:
    """One file per process (a stage may run several times, or in several processes); atomic."""
    out = folder / stage_name()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{os.getpid()}-{time.time_ns()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1) + "\n")
    tmp.replace(path)
    return path
