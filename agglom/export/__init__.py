"""Export: the student as a stock timm folder, an adapter pack beside it, and a model card."""
from agglom.export.adapters import AdapterPack, load_adapter_pack, load_pack_text_tower
from agglom.export.timm_folder import export_run

__all__ = ["AdapterPack", "export_run", "load_adapter_pack", "load_pack_text_tower"]
