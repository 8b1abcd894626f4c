"""Export: the student as a stock timm folder, an adapter pack beside it, and a model card; for a SAM-family
teacher also SAM's own prompt encoder + mask decoder, so the student replaces SAM's image encoder
(``StudentSamPredictor.from_export(dir)``, ``build_student_sam(dir)``: imported on first use)."""
from agglom.export.adapters import AdapterPack, load_adapter_pack, load_pack_text_tower
from agglom.export.sam_pack import load_sam_decoder
from agglom.export.timm_folder import export_run

__all__ = ["AdapterPack", "export_run", "load_adapter_pack", "load_pack_text_tower", "load_sam_decoder",
           "StudentSamPredictor", "build_student_sam"]


def __getattr__(name: str):
    if name in ("StudentSamPredictor", "build_student_sam"):  # segment-anything is imported only when used
        from agglom.export import sam_predictor

        return getattr(sam_predictor, name)
    raise AttributeError(f"module 'agglom.export' has no attribute {name!r}")
