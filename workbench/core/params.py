"""Validated, frozen parameters per stage (strict names, strict types, ranges, choices).

The notebooks' ``parameters`` cells declare the same names, types and defaults (a test keeps them in
step); ``collect(stage, namespace)`` turns a notebook's globals into the validated dataclass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import WorkbenchError

# preprocessing methods (workbench.preprocess implements them; the names are defined here, with the parameters)
DENOISE = ("none", "median", "gaussian", "nlmeans")
CONTRAST = ("none", "clahe", "histeq")
NORMALIZE = ("none", "minmax", "zscore", "dataset")


def _p(default, help: str, **rules):
    return field(default=default, metadata={"help": help, **rules})


@dataclass(frozen=True)
class TrainParams:
    run_dir: str = _p("", "run directory to write into (empty: a new one under runs/)")
    seed: int = _p(0, "seed for data order, augmentation and weights", min=0)
    dataset: str = _p("bloodmnist", "data card name, or a path: MedMNIST-format .npz, ingested DICOM folder, image folder")
    size: int = _p(28, "image size: one of the data card's file sizes (MedMNIST: 28, 64, 128, 224), or for image "
                   "folders and DICOM ingests any size their card lists (8-1024)", min=8, max=1024)
    max_per_split: int = _p(0, "stratified subset: at most this many images per split (0: all)", min=0)
    recipe: str = _p("demo", "training recipe: sets every parameter marked (recipe) that is left at -1 or empty; "
                     "demo about 5 min on 2 CPU cores, full about 15 min (workbench.train.RECIPES)",
                     choices=("demo", "full"))
    model: str = _p("", "(recipe) model from the registry (workbench.models.MODELS)", choices_from="models", recipe=True)
    width: int = _p(-1, "(recipe) base number of filters", min=4, max=512, recipe=True)
    dropout: float = _p(-1.0, "(recipe) dropout before the classifier", min=0.0, max=0.9,
                        recipe=True)
    denoise: str = _p("none", "denoising before training, applied at every stage", choices=DENOISE)
    contrast: str = _p("none", "contrast enhancement: CLAHE or histogram equalisation", choices=CONTRAST)
    normalize: str = _p("none", "intensity normalisation: minmax or zscore per image, dataset (train mean/std)",
                        choices=NORMALIZE)
    augment: str = _p("", "(recipe) augmentation preset (workbench.augment.PRESETS; the recipe picks dihedral where "
                      "the data card says flips and quarter turns preserve the labels, else fixed)",
                      choices_from="augment", recipe=True)
    photometric: str = _p("", "(recipe) photometric augmentation of acquisition changes: card (brightness, contrast, "
                          "colour, stain, blur, noise... within the ranges the data card's acquisition field gives; a "
                          "card without them gets a conservative default, with a warning) or none",
                          choices=("card", "none"), recipe=True)
    photometric_p: float = _p(1.0, "with photometric card: the share of training images that get the acquisition "
                              "changes (each change then fires with its own probability); the rest stay as acquired",
                              min=0.0, max=1.0)
    epochs: int = _p(-1, "(recipe) maximum number of epochs", min=1, max=1000, recipe=True)
    steps_per_epoch: int = _p(-1, "(recipe) optimizer steps per epoch (recipe: one pass over the train split; a "
                              "small split is passed over several times per epoch, so that the recipe makes about "
                              "as many steps as on BloodMNIST)", min=1, max=100000, recipe=True)
    batch_size: int = _p(128, "batch size (a multiple of the number of devices when training on several)", min=1,
                         max=4096)
    learning_rate: float = _p(-1.0, "(recipe) peak learning rate of the cosine schedule", min=1e-7, max=1.0, recipe=True)
    weight_decay: float = _p(0.0001, "AdamW weight decay", min=0.0, max=1.0)
    warmup_epochs: int = _p(1, "linear warm-up epochs before the cosine decay", min=0)
    patience: int = _p(-1, "(recipe) early stopping: epochs without val_loss improvement", min=1, recipe=True)
    ema: str = _p("", "(recipe) keep an exponential moving average of the weights for evaluation: yes or no",
                  choices=("yes", "no"), recipe=True)
    tta: str = _p("", "(recipe) test-time augmentation inside the saved model (mean over the 8 flips and "
                  "quarter turns; the recipe turns it on only for orientation-free data): yes or no",
                  choices=("yes", "no"), recipe=True)
    class_weights: bool = _p(False, "weight the loss by inverse class frequency (balanced)")
    init_from: str = _p("", "start from the weights of a trained run directory or .keras file (layers matched by "
                        "name and shape; the classifier is new when the class count differs)")
    freeze_backbone: bool = _p(False, "with init_from: train only the classifier, keep the other weights fixed")
    conv_impl: str = _p("fast", "CPU training path: fast (workbench.layers) or stock (plain Keras on the backend "
                        "defaults)", choices=("fast", "stock"))
    extra_labels: str = _p("", "extra training labels: a review export directory (or its labelled.npz) from "
                               "the annotate stage, appended to the train split (empty: none)")
    label_fraction: float = _p(1.0, "keep this share of the train split's labels (a stratified, seeded subset, at "
                               "least one image per class; label-efficiency studies): the rest of the train split "
                               "is then the pool 'train' of unlabelled", min=0.0001, max=1.0)
    unlabelled: str = _p("", "semi-supervised training (FixMatch, workbench.semisup) with these unlabelled images: "
                         "train (with label_fraction < 1: the train images whose labels were held out), a folder "
                         "(PNG/JPEG/TIFF/DICOM, searched recursively) or a MedMNIST-style .npz (FILE.npz:PREFIX) - "
                         "the pools of annotate; single-label tasks only (empty: supervised)")
    unlabelled_ratio: int = _p(3, "FixMatch's mu: unlabelled images per labelled image in a batch (the paper's 7 "
                               "costs about twice as much on a CPU)", min=1, max=16)
    pseudo_threshold: float = _p(0.95, "FixMatch's tau: a weak view's top probability at or above it makes its "
                                 "pseudo-label count in the loss", min=0.0, max=1.0)
    unlabelled_weight: float = _p(1.0, "FixMatch's lambda_u: weight of the pseudo-label loss", min=0.0, max=100.0)
    compare_supervised: bool = _p(True, "with unlabelled: also train the same recipe on the labelled images alone "
                                  "(supervised/ in the run), for the train report and the annotate comparison")


@dataclass(frozen=True)
class PretrainParams:
    run_dir: str = _p("", "run directory to write into (empty: a new one under runs/)")
    seed: int = _p(0, "seed for the views, the batches and the weights", min=0)
    dataset: str = _p("bloodmnist", "the dataset whose input shape, data card (orientation) and labelled train/val "
                      "splits (the kNN and linear-probe scores) the pretraining uses: a card name or a path")
    size: int = _p(28, "image size: one of the data card's file sizes", min=8, max=1024)
    max_per_split: int = _p(0, "stratified subset: at most this many images per split (0: all)", min=0)
    images: str = _p("train", "the images to pretrain on, comma-separated pools, no label used: train (the dataset's "
                     "train split), a folder (PNG/JPEG/TIFF/DICOM, searched recursively) or an .npz (val and test are "
                     "refused: they score the representation)")
    recipe: str = _p("real", "pretraining recipe: real (about 1,400 steps of 256 image pairs) or tiny (a few steps, "
                     "for tests); sets every (recipe) parameter left at -1 (workbench.pretrain.RECIPES)",
                     choices=("real", "tiny"))
    model: str = _p("cnn", "model from the registry whose backbone is pretrained (the train run must use the same, "
                    "with the same width, for init_from to copy it)", choices_from="models")
    width: int = _p(16, "base number of filters (the demo recipe's 16; the full recipe's 32)", min=4, max=512)
    epochs: int = _p(-1, "(recipe) passes over the images", min=1, max=1000, recipe=True)
    batch_size: int = _p(-1, "(recipe) images per step (each seen in two views)", min=2, max=4096, recipe=True)
    learning_rate: float = _p(-1.0, "(recipe) peak learning rate of the cosine schedule", min=1e-7, max=1.0, recipe=True)
    weight_decay: float = _p(0.0001, "AdamW weight decay", min=0.0, max=1.0)
    temperature: float = _p(0.5, "SimCLR's temperature of the NT-Xent loss", min=0.01, max=10.0)
    projection_dim: int = _p(64, "output size of the projection head (dropped after pretraining)", min=8, max=2048)
    conv_impl: str = _p("fast", "CPU training path: fast (workbench.layers) or stock (plain Keras on the backend "
                        "defaults)", choices=("fast", "stock"))


@dataclass(frozen=True)
class EvaluateParams:
    run_dir: str = _p("", "run directory with a trained model (empty: the latest run)")
    seed: int = _p(0, "seed of the bootstrap resamples and of test-time augmentation", min=0)
    batch_size: int = _p(512, "prediction batch size", min=1, max=8192)
    n_resamples: int = _p(1000, "bootstrap resamples (stratified by class) for the 95% intervals", min=100,
                          max=100000)
    target_sensitivity: float = _p(0.95, "binary tasks: the threshold is chosen on val to reach this sensitivity",
                                   min=0.5, max=1.0)
    tta_passes: int = _p(0, "extra test-time augmentation: passes drawn from the training augmentation of the run, "
                         "averaged with the model's own prediction (0: off; the train stage's tta is the 8-way "
                         "flips-and-turns mean inside the saved model)", min=0, max=64)
    ensemble: str = _p("", "other run directories (comma-separated) averaged with this model (empty: off)")
    gallery_size: int = _p(16, "images in the top-losses gallery", min=1, max=200)
    cam_layer: str = _p("", "layer for Grad-CAM (empty: the last feature map of at least 7x7)")
    robustness: int = _p(1000, "test images scored under the data card's acquisition corruptions (workbench.corrupt; "
                         "a seeded class-stratified subset; 0: skip)", min=0, max=100000)


@dataclass(frozen=True)
class AnnotateParams:
    run_dir: str = _p("", "run directory with a trained model (empty: the latest run)")
    seed: int = _p(0, "seed for sampling (galleries, MC-dropout, TTA, audit folds, bootstrap)", min=0)
    pool: str = _p("test", "the images to annotate: a split of the training data (train, val, test), a folder of "
                   "images (searched recursively; PNG, JPEG, TIFF, DICOM) or a MedMNIST-style .npz")
    labels_csv: str = _p("", "optional CSV (file, label) of a folder pool's true labels: used only to report "
                         "precision and coverage, never shown to the model")
    resize: str = _p("", "resize policy for pool images of another size than the model's: none, stretch, pad or "
                     "crop (empty: the run's own)", choices=("", "none", "stretch", "pad", "crop"))
    on_error: str = _p("skip", "an unreadable pool file: skip it (listed in rejected.csv) or raise (stop at the first)",
                       choices=("skip", "raise"))
    allow_burned_in: bool = _p(False, "annotate DICOM images whose BurnedInAnnotation flag is YES (excluded by default)")
    target_precision: float = _p(0.99, "auto-accept thresholds are chosen on val to reach this precision",
                                 min=0.5, max=1.0)
    thresholds: str = _p("global", "one confidence threshold for all classes, or one per predicted class "
                         "(multi-label tasks: always one per label)", choices=("global", "per-class"))
    guarantee: float = _p(0.9, "probability that the accepted precision reaches target_precision on new data "
                          "(Learn-then-Test; 0 takes the val estimate)", min=0.0,
                          max=0.999)
    min_class_val: int = _p(20, "a class predicted fewer times on val uses the global threshold", min=1)
    on_shift: str = _p("review", "when the pool differs from val (workbench.shift): review (val's thresholds are "
                       "not used: certify on the pool, see certify) or accept (apply val's thresholds anyway)",
                       choices=("review", "accept"))
    certify: str = _p("auto", "who vouches for the auto-accept thresholds: auto (val, unless the shift check fires; "
                      "then a labelled random sample of the pool) or pool (always the pool's sample; "
                      "workbench.certify)", choices=("auto", "pool"))
    certify_labels: str = _p("", "labels of the pool's certification sample: a CSV (id,label; label a class index "
                             "or name), a review export directory, or an earlier pool directory whose "
                             "certification queue was labelled in the review widget (empty: none yet)")
    certify_size: int = _p(0, "certification sample size (0: as many as Learn-then-Test needs for the target with "
                           "no error, given the share of the pool val's thresholds would accept)", min=0)
    ood_gate: bool = _p(True, "never auto-accept an item whose out-of-distribution score lies beyond val's 99th "
                        "percentile, whatever its confidence")
    calibrate: bool = _p(True, "use the run's temperature (calibration.json from evaluate) when present")
    strategy: str = _p("margin", "ranking of the needs-review items into review_queue.csv",
                       choices=("least_confidence", "margin", "entropy", "mc_dropout", "tta"))
    n_passes: int = _p(10, "stochastic passes for the mc_dropout and tta strategies", min=2, max=200)
    adapt: str = _p("none", "label-free test-time adaptation of the model to the pool (workbench.adapt): none, bn "
                    "(batch-norm statistics re-estimated on the pool), color (the pool's colour standardised to the "
                    "training set's, in optical density) or color+bn; recorded in adaptation.json",
                    choices=("none", "bn", "color", "color+bn"))
    bootstrap: int = _p(1000, "bootstrap resamples for the precision and coverage intervals", min=100)
    audit_folds: int = _p(3, "label audit: cross-validation folds over the train split (0: no audit)", min=0, max=20)
    audit_epochs: int = _p(3, "label audit: training epochs of each fold's model", min=1, max=200)
    annotator: str = _p("", "the reviewer's name: their own review log and queue (empty: the widget asks)")
    review_log: str = _p("", "a review log to use instead of the annotator's own (empty: "
                         "review/annotators/<name>.jsonl in the pool's directory)")
    overlap: float = _p(0.0, "share of the pool (a seeded random sample) that every annotator reads, blind (no model "
                        "prediction shown): the items agreement between annotators is measured on (0: none)",
                        min=0.0, max=1.0)
    gallery_size: int = _p(24, "images per gallery in the report", min=1, max=400)
    batch_size: int = _p(512, "prediction batch size", min=1, max=8192)
    out_dir: str = _p("", "the pool's new results directory (empty: RUN/annotate/<pool>/; the command line sets it)")


@dataclass(frozen=True)
class ExploreParams:
    run_dir: str = _p("", "run directory for this report (empty: nothing is written)")
    seed: int = _p(0, "seed for sampling and augmentation previews", min=0)
    dataset: str = _p("bloodmnist", "data card name or path to a MedMNIST-format .npz")
    size: int = _p(28, "image size: one of the data card's file sizes", min=8, max=1024)
    max_per_split: int = _p(0, "stratified subset: at most this many images per split (0: all)", min=0)
    predictions_run: str = _p("", "run whose predictions to inspect (empty: the latest; none: skip)")
    dicom_file: str = _p("", "DICOM file for the window controls (empty: pydicom's bundled CT slice)")


# A name declared by several stages means one thing in all of them (a pipeline sends -p NAME to every stage
# that declares it): each such name and its one meaning. tests/test_params.py fails on a new shared name
# until it is listed here, and on a shared name with two types.
SHARED = {
    "run_dir": "the run directory the stage writes to or reads from",
    "seed": "the seed of the stage's own randomness",
    "dataset": "the data: a card name or a path",
    "size": "the image side length of the data",
    "max_per_split": "a stratified subset: at most this many images per split",
    "batch_size": "images per batch through the network (per optimizer step when training, per forward pass when "
                  "predicting)",
    "gallery_size": "images per gallery in the report",
    "recipe": "the stage's recipe: fills in every parameter marked (recipe) that is left empty (each stage has its own)",
    "model": "the registry model (workbench.models.MODELS)",
    "width": "the registry model's base number of filters",
    "epochs": "the most passes (epochs) the stage trains for",
    "learning_rate": "the peak learning rate of the cosine schedule",
    "weight_decay": "AdamW weight decay",
    "conv_impl": "the CPU training path: fast (workbench.layers) or stock",
}

STAGE_PARAMS = {"explore": ExploreParams, "pretrain": PretrainParams, "train": TrainParams, "evaluate": EvaluateParams,
                "annotate": AnnotateParams}
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def fields(stage: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(STAGE_PARAMS[stage])}


# the names of workbench.models.MODELS and workbench.augment.PRESETS, here so that checking a parameter imports
# neither Keras nor albumentations (a second or more in every process that only checks: the command line, a
# sweep's driver); a test keeps them equal to the registries
MODEL_NAMES = ("cnn", "resnet18")
AUGMENT_PRESETS = ("none", "light", "microscopy", "dihedral", "fixed")


def _choices(f: dataclasses.Field):
    src = f.metadata.get("choices_from")
    if src == "models":
        return MODEL_NAMES
    if src == "augment":
        return AUGMENT_PRESETS
    return f.metadata.get("choices")


def coerce(stage: str, name: str, value):
    """Check one value against its declared type and rules; strings from the CLI are converted."""
    fs = fields(stage)
    if name not in fs:
        raise WorkbenchError(f"unknown parameter {name!r} for stage {stage}; valid: {', '.join(fs)}")
    f = fs[name]
    typ = _TYPES[f.type] if isinstance(f.type, str) else f.type
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = text.lower() in ("true", "1", "yes")
            else:
                value = typ(text)
        except ValueError:
            raise WorkbenchError(f"parameter {name!r} must be {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not typ:
        raise WorkbenchError(f"parameter {name!r} must be {typ.__name__}, got {type(value).__name__} {value!r}")
    if f.metadata.get("recipe") and value == f.default:
        return value  # left to the recipe (workbench.train.resolve fills it in)
    if typ is float and not math.isfinite(value):
        raise WorkbenchError(f"parameter {name!r} must be a finite number, got {value!r}")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise WorkbenchError(f"parameter {name!r} = {value!r} is out of range {rng}")
    choices = _choices(f)
    if choices is not None and value not in choices:
        raise WorkbenchError(f"parameter {name!r} = {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def make(stage: str, values: dict):
    """Build the stage's frozen dataclass; every key must be a known parameter."""
    return STAGE_PARAMS[stage](**{k: coerce(stage, k, v) for k, v in values.items()})


def collect(stage: str, namespace: dict):
    """Validated parameters from a notebook namespace (the names its parameters cell defined)."""
    return make(stage, {k: namespace[k] for k in fields(stage) if k in namespace})


def to_dict(params) -> dict:
    return dataclasses.asdict(params)


def read_yaml_mapping(path, what: str = "config file", expect: str = "parameter: value") -> dict:
    """A YAML file of ``parameter: value`` pairs (the command line's ``-f``); one-line errors name the file."""
    from pathlib import Path

    import yaml
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{what} {path} not found (option -f)")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise WorkbenchError(f"{what} {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise WorkbenchError(f"{what} {path} must be a mapping of {expect}")
    return doc


def help_text(stage: str) -> str:
    return "\n".join(f"  {n} ({f.type}, default {f.default!r}): {f.metadata['help']}" for n, f in fields(stage).items())
