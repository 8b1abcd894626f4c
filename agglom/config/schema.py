"""The typed recipe schema: one dataclass per section, merged schema -> recipe YAML -> CLI.

Every field here is a key a recipe may set; anything else is rejected before work starts
(see :mod:`agglom.config.load`). Sections are filled by the parts that read them; defaults are
chosen so that the embedded synthetic benchmark trains on a CPU out of the box.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


# --------------------------------------------------------------------------- data + groups
@dataclass
class AugmentConfig:
    """Train-time augmentation; all off for eval/caching."""

    hflip: float = 0.0  # probability of a horizontal flip
    scale_min: float = 1.0  # RandomResizedCrop lower scale; 1.0 = plain resize
    ratio_jitter: float = 0.0  # aspect-ratio jitter for the crop (0 = keep aspect)
    brightness: float = 0.0  # colour jitter strengths (0 = off)
    contrast: float = 0.0
    rotate: float = 0.0  # max degrees


@dataclass
class DataConfig:
    """Where samples come from and how batches are made (schema: docs/CONTRACTS.md)."""

    root: str = "data/synth"  # folder written by `agglom data pack|synth` (holds dataset.json)
    shards: Optional[str] = None  # explicit brace pattern (globs allowed); overrides root/<split>/*.tar
    allow_missing_shards: bool = False  # go on when files of data.shards are missing (each counted missing_shard)
    train_split: str = "train"
    # more splits the training stream distils on besides train_split: label-free images (e.g. `agglom data synth
    # unlabeled=N`'s `unlabeled`); group balancing counts them, `agglom cache` caches them; probes never read them
    distill_splits: List[str] = field(default_factory=list)
    val_split: str = "val"
    test_split: str = "test"
    image_size: int = 64  # the size the reader reads (teachers resize from it to their own input size)
    # multi-resolution training: the student's input size is drawn per optimiser step from these (px, multiples of
    # the patch size, <= image_size) as a pure function of (seed, step) (agglom.train.multires); empty = image_size
    resolutions: List[int] = field(default_factory=list)
    scale_batch: bool = True  # with resolutions: use fewer samples at larger sizes (tokens per step ~ constant)
    min_image_side: int = 4  # an image with a side under this many pixels is skipped (too_small), not upscaled
    grayscale: str = "replicate"  # replicate (to 3 channels) | keep (1 channel)
    interpolation: str = "bicubic"  # resize/crop interpolation: bicubic | bilinear
    batch_size: int = 32
    num_workers: int = 2
    cache_in_workers: bool = True  # cached teachers' features are read in the data workers, with the batch
    epoch_samples: int = 2048  # bounded epoch length of the resampled training stream
    shuffle_buffer: int = 1000
    # ... and at most this many MiB of encoded samples per reader worker (0: no bound), so memory stays flat on
    # high-resolution shards (1000 encoded 1024-px 16-bit PNGs are ~2 GB); 1000 small images (<= ~130 kB each) never reach it
    shuffle_buffer_mb: float = 128.0
    seed: int = 0
    group_balanced: bool = False  # resample so each group (groups.by) is drawn equally often (= group_balance 1)
    group_balance: float = field(default=0.0, metadata={
        "help": "partial balancing: a group's share of the draws goes as n_g^(1 - β); 0 natural, 1 balanced"})
    group_weights: Dict[str, float] = field(default_factory=dict)  # explicit per-group sampling weights
    sidecars: List[str] = field(default_factory=list)  # proxy-group sidecars (agglom curate) -> attrs
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class GroupSpec:
    """One way to form groups from attrs: an attribute, numeric bins of one, or an intersection."""

    name: str = ""
    attr: Optional[str] = None  # single attribute (categorical, or numeric with bins)
    attrs: List[str] = field(default_factory=list)  # intersection of several attributes
    bins: List[float] = field(default_factory=list)  # numeric edges: [0, 60, 200] -> "[0,60)", "[60,200)"
    values: List[str] = field(default_factory=list)  # fixed value order (else from dataset.json)


@dataclass
class GroupsConfig:
    by: str = "site"  # the spec (or plain attribute) the objective and sampler use
    specs: List[GroupSpec] = field(default_factory=list)
    unknown: str = "exclude"  # exclude | include: unknown group in parity terms (always in utility)


# --------------------------------------------------------------------------- teachers + student
@dataclass
class TeacherEntry:
    name: str = ""  # card name (teachers/cards/*.yaml) or a path to a card / agglom export
    weight: float = 1.0
    summary: bool = True
    spatial: bool = True
    cache: Optional[str] = None  # feature-cache folder (agglom cache); None = run online
    batch_size: int = 0  # run the teacher on chunks of this many images (memory: SAM at 1024 px); 0 = whole batch


@dataclass
class StudentConfig:
    model: str = "vit_small_patch16_224"  # any stock timm ViT
    model_args: Dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    pretrained: bool = False
    checkpoint: Optional[str] = None  # timm-loadable weights (local file/folder)
    summary_tokens: bool = True  # one extra register token per teacher as its summary token
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class HeadsConfig:
    summary: str = "mlp"  # registry: mlp | resmlp | attn
    spatial: str = "mlp"
    hidden: int = 0  # hidden width; 0 = 2 x student width
    normaliser: str = "zscore"  # none | zscore | phis
    stats_samples: int = 256  # samples for the phis stats pass
    zscore_momentum: float = 0.01
    # r > 1: each patch token's spatial head predicts an r x r block of the teacher's map (pixel shuffle), so the
    # student reaches a teacher grid r x finer than its own tokens (LiteMedSAM's 64 x 64 from 16 x 16 tokens: r = 4)
    spatial_upsample: int = 1


# --------------------------------------------------------------------------- objective
def _group_objectives() -> str:
    from agglom.config.choices import describe_group_objectives

    return describe_group_objectives()


@dataclass
class ObjectiveConfig:
    summary_weight: float = 1.0
    spatial_weight: float = 1.0
    summary_cos: float = 1.0  # summary = cos_w * (1-cos) + (1-cos_w) * smooth-L1 (1: cosine only, the norm is free)
    spatial_cos: float = 0.9  # spatial = cos_w * (1-cos) + (1-cos_w) * smooth-L1
    smooth_l1_beta: float = 1.0
    granularity: str = "token"  # token (loss per token, then mean) | image (pooled first)
    teacher_balance: str = "fixed"  # fixed | loss_scale (divide by each teacher's running loss)
    teacher_drop: float = 0.0  # probability of dropping a teacher per sample (at least one kept)
    group: str = field(default="erm", metadata={"help": _group_objectives})
    group_scope: str = "teacher"  # teacher: parity per teacher, then across teachers | sample: on the combined loss
    lam: float = 0.0  # utility <-> parity knob
    reference: Optional[str] = field(default=None, metadata={
        "help": "a λ = 0 run dir: its final per-teacher x group losses are the references of excess/groupdro"})
    groupdro_eta: float = 0.01
    groupdro_size_adjust: float = 0.0
    routing: Dict[str, Dict[str, float]] = field(default_factory=dict)  # teacher -> group -> weight
    route_by_audit: float = field(default=0.0, metadata={
        "help": "ρ >= 0: a teacher whose val AUC on a group beats the group's average teacher counts 1 + ρ·(excess) "
                "more there (never less than 1); 0 = off"})
    track_momentum: float = 0.05  # EMA of per-group, per-teacher losses (metrics.jsonl)


# --------------------------------------------------------------------------- engine + optim + log
@dataclass
class EngineConfig:
    name: str = "torch"  # torch | deepspeed
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    ds_config: Optional[str] = None  # a DeepSpeed JSON that overrides the generated one
    backend: str = "auto"  # auto | nccl | gloo
    device: str = "auto"  # torch engine: auto (cuda:<local rank> when there is a GPU, else cpu) | cpu | cuda[:i]


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 20
    steps: int = 200
    accum_steps: int = 1
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay of the student (0 = off)
    max_bad_steps: int = 5  # consecutive non-finite losses that stop the run


@dataclass
class LogConfig:
    interval: int = 10
    tensorboard: bool = False
    progress: str = "auto"  # auto (on a TTY) | on | off
    checkpoint_interval: int = 100
    keep: int = 2
    phases: bool = field(default=False, metadata={
        "help": "log phase_s/<phase>: seconds per step in data, teachers, student, heads_loss, backward, optimiser "
                "(syncs the GPU at each phase boundary, so a little slower)"})
    all_ranks: bool = field(default=False, metadata={
        "help": "every rank > 0 also writes its step records to metrics-rank<r>.jsonl (DDP/DeepSpeed checks: "
                "per-rank losses and input sizes)"})


# --------------------------------------------------------------------------- eval + export
@dataclass
class EvalConfig:
    features: str = "summary"  # summary | pooled
    attributes: List[str] = field(default_factory=list)  # empty = all attributes + proxy groups
    bootstrap: int = 200  # bootstrap replicates for the 95% intervals (0 = off)
    ece_binnings: List[str] = field(default_factory=lambda: ["range10", "unit15"])  # FairMedFM/MEDFAIR | torchmetrics
    probe_c: float = 1.0  # inverse L2 strength of the logistic-regression probe
    threshold_method: str = "youden"  # youden | f1: how the validation threshold is chosen
    optimistic_f1: bool = False  # also FairMedFM's best-F1 threshold on the evaluated split (labelled optimistic)
    label_fractions: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: int = 3
    max_iter: int = 1000
    fidelity: bool = True
    # zero-shot through CLIP-family text towers (agglom eval zero_shot=recipe|FILE): class (label value or the
    # datasheet's class name) -> [prompt, ...]; multi-label: label -> {0: [negative prompts], 1: [positive prompts]}
    zero_shot_prompts: Dict[Any, Any] = field(default_factory=dict)
    zero_shot_teachers: List[str] = field(default_factory=list)  # empty: every teacher with a text tower
    # dense (segmentation) probe on spatial features against the samples' masks (agglom.eval.dense.dense): off by default,
    # because it adds a pass of spatial maps and a probe per model; the dataset needs masks in every split
    dense: bool = False
    dense_steps: int = 300  # Adam steps of the 1x1 probe (batches of 64 masked training samples)
    dense_lr: float = 0.01
    dense_head: str = "linear"  # linear (1x1, the probe protocol) | conv (3x3 conv to 32 channels, GELU, 1x1)
    dense_features: str = "tokens"  # the student's dense-probe input: tokens (its patch tokens) | adapters (its
    # spatial adapters' maps, i.e. the teachers' feature spaces it emulates; the SAM decoder reads the same maps)
    dense_grid: int = 16  # spatial maps with a side above this are average-pooled to it (memory: SAM's 64x64 neck); 0: never
    # prompted segmentation through each SAM-family teacher's own prompt encoder + mask decoder (agglom.eval.sam.run):
    # the teacher's encoder vs the student's SAM adapter in its place, prompts from each test mask; needs run=
    sam_prompts: bool = False
    sam_prompt: str = "box"  # box (around the mask) | point (its centre) | box+point
    # the mode-switch test (agglom.eval.resolution.resolution): fidelity and the probe at these multiples of the training size
    # (e.g. [0.5, 1, 2]; each rounded to the patch size), a `resolution` section, resolution.png; empty: off
    resolutions: List[float] = field(default_factory=list)
    resolution_tol: float = 0.02  # fidelity within this of its best size counts as validated; smaller jumps are noise
    resolution_jump: float = 3.0  # a switch: an adjacent change this many times the median per-octave change elsewhere


@dataclass
class ExportConfig:
    min_group_count: int = 10
    push_to_hub: Optional[str] = None


# --------------------------------------------------------------------------- the recipe
@dataclass
class Recipe:
    """A training recipe: `agglom train recipe=PATH key=value ...`."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    resume: str = "auto"  # auto (from the run dir) | never | PATH to a checkpoint
    data: DataConfig = field(default_factory=DataConfig)
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    teachers: List[TeacherEntry] = field(default_factory=list)
    student: StudentConfig = field(default_factory=StudentConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
