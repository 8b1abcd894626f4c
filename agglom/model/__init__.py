"""The trainable part: a stock timm student, per-teacher adapter heads and feature normalisers."""
from agglom.model.agglomerator import AgglomModel, TeacherSpec
from agglom.model.heads import HEADS, build_head
from agglom.model.normalisers import NORMALISERS, build_normaliser
from agglom.model.student import build_student, student_tokens

__all__ = ["AgglomModel", "TeacherSpec", "HEADS", "build_head", "NORMALISERS", "build_normaliser",
           "build_student", "student_tokens"]
