"""The student as SAM's image encoder: segment-anything's own ``Sam`` and ``SamPredictor`` with the student (plus its
adapter head for a SAM teacher) where SAM's ``ImageEncoderViT`` was.

    from agglom.export.sam_predictor import StudentSamPredictor
    predictor = StudentSamPredictor.from_export("runs/my-run/export")      # the export folder alone
    predictor.set_image(image)                                          # HxWx3 (or HxW) uint8
    masks, scores, low_res = predictor.predict(box=np.array([x0, y0, x1, y1]), multimask_output=False)

What replaces the encoder (:class:`StudentSamEncoder`) takes what SAM's encoder takes — the image resized long side
to SAM's size, normalised with SAM's pixel mean/std, padded bottom/right to a square — and returns what SAM's neck
returns: ``[B, C, h, w]`` (256 x 64 x 64 for SAM ViT-B and MedSAM at 1024 px; 32 x 8 x 8 for ``tiny-sam``). Inside:
SAM's normalisation is undone, the square is resized to the student's input size (grayscale by ITU-R 601 luma for a
one-channel student) and normalised with the student's mean/std; the student's spatial adapter for that teacher is
de-normalised (the run's normaliser inverted: the teacher's own feature space) and, where the student's grid
differs from SAM's embedding grid, resized to it bilinearly (:func:`student_sam_embedding`). Prompts, the mask
decoder, the ResizeLongestSide coordinate transform and the mask post-processing are segment-anything's own code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from torch import nn

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, PIL's "L"


def student_sam_embedding(model: nn.Module, teacher: str, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The student's spatial adapter output for ``teacher`` on the student-normalised batch ``x``, in the teacher's
    own feature space (the run's normaliser inverted), on SAM's embedding grid ``size`` (bilinear where the
    student's adapter grid differs, e.g. a pooled feature cache): ``[B, C, *size]`` fp32."""
    pred = model(x)[teacher]
    sp = model.denormalise(teacher, {"spatial": pred["spatial"]})["spatial"]
    if tuple(sp.shape[-2:]) != tuple(size):
        sp = F.interpolate(sp, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return sp


class StudentSamEncoder(nn.Module):
    """A drop-in for SAM's ``image_encoder``: SAM-preprocessed ``[B, 3, img_size, img_size]`` -> the student's
    adapter output for ``teacher`` in SAM's embedding space ``[B, C, e, e]``. ``model``: an
    :class:`~agglom.model.AgglomModel` (``load_adapter_pack(dir).model`` or a run's)."""

    def __init__(self, model: nn.Module, teacher: str, img_size: int, embedding_size: int,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        super().__init__()
        self.model, self.teacher = model.eval(), teacher
        self.img_size, self.embedding_size = int(img_size), int(embedding_size)
        pc = model.student.pretrained_cfg
        self.in_chans = int(model.student.patch_embed.proj.in_channels)
        self.student_size = tuple(int(v) for v in pc["input_size"][-2:])
        mean, std = list(pc["mean"])[:self.in_chans], list(pc["std"])[:self.in_chans]
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("student_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("student_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), False)

    def to_student(self, x: torch.Tensor) -> torch.Tensor:
        """SAM's input (its pixel normalisation, padded square) -> the student's (its size, channels, mean/std)."""
        px = (x.float() * self.pixel_std + self.pixel_mean) / 255.0  # pixels in [0, 1]; SAM's padding: its mean
        if self.in_chans == 1:
            px = (px * self.luma).sum(1, keepdim=True)
        if tuple(px.shape[-2:]) != self.student_size:
            px = F.interpolate(px, size=self.student_size, mode="bilinear", align_corners=False, antialias=True)
        return (px - self.student_mean) / self.student_std

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedding_size
        return student_sam_embedding(self.model, self.teacher, self.to_student(x), (e, e))


def assemble_student_sam(model: nn.Module, teacher: str, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                         pixel_mean: Sequence[float], pixel_std: Sequence[float], mask_threshold: float = 0.0) -> Sam:
    """segment-anything's ``Sam`` with :class:`StudentSamEncoder` as its image encoder and the given (the SAM
    teacher's own) prompt encoder and mask decoder."""
    img = int(prompt_encoder.input_image_size[0])
    encoder = StudentSamEncoder(model, teacher, img, int(prompt_encoder.image_embedding_size[0]), pixel_mean,
                                pixel_std)
    sam = Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder,
              pixel_mean=list(pixel_mean), pixel_std=list(pixel_std))
    sam.mask_threshold = float(mask_threshold)
    return sam.eval()


def build_student_sam(export_dir: Path, teacher: Optional[str] = None, device: Any = "cpu") -> Sam:
    """The ``Sam`` of an export folder: its student + adapter for ``teacher`` (default: the export's only SAM
    teacher) as the image encoder, the teacher's packed prompt encoder + mask decoder (``sam/<teacher>/``)."""
    from agglom.export.adapters import load_adapter_pack
    from agglom.export.sam_pack import load_sam_decoder

    prompt, decoder, meta = load_sam_decoder(Path(export_dir), teacher)
    pack = load_adapter_pack(Path(export_dir))
    sam = assemble_student_sam(pack.model, meta["teacher"], prompt, decoder, meta["pixel_mean"], meta["pixel_std"],
                               meta.get("mask_threshold", 0.0))
    return sam.to(device)


class StudentSamPredictor(SamPredictor):
    """segment-anything's ``SamPredictor`` (``set_image``, ``predict(point_coords, point_labels, box, mask_input,
    multimask_output)``, ``predict_torch``) over a ``Sam`` whose image encoder is the student. ``set_image`` also
    takes a grayscale ``HxW`` / ``HxWx1`` image (replicated to RGB); :meth:`set_embedding` decodes a given image
    embedding (the eval feeds the teacher's and the student's through the same decoder)."""

    @classmethod
    def from_export(cls, export_dir: Path, teacher: Optional[str] = None, device: Any = "cpu") -> "StudentSamPredictor":
        return cls(build_student_sam(export_dir, teacher, device))

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim == 3 and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        super().set_image(image, image_format)

    def set_embedding(self, embedding: torch.Tensor, input_size: Tuple[int, int],
                      original_size: Tuple[int, int]) -> None:
        """Use ``embedding`` ``[1, C, e, e]`` (SAM's embedding of an image of ``original_size`` whose long side was
        resized to ``input_size`` in SAM's frame) as the current image's features."""
        self.reset_image()
        self.features = embedding.to(self.device, torch.float32)
        self.input_size, self.original_size = tuple(input_size), tuple(original_size)
        self.is_image_set = True


__all__ = ["StudentSamEncoder", "StudentSamPredictor", "assemble_student_sam", "build_student_sam",
           "student_sam_embedding"]
