"""Student networks and their registry of presets."""

from .grouping import Assignment, GroupingBlock
from .pretrained import create_student, load_pretrained
from .registry import build_student, list_students, student_config
from .student import (
    Student,
    StudentConfig,
    count_parameters,
    parameter_breakdown,
    random_masking,
    sincos_pos_embed_2d,
)

__all__ = [
    "Assignment",
    "GroupingBlock",
    "Student",
    "StudentConfig",
    "build_student",
    "count_parameters",
    "create_student",
    "list_students",
    "load_pretrained",
    "parameter_breakdown",
    "random_masking",
    "sincos_pos_embed_2d",
    "student_config",
]
