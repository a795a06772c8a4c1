"""Student networks and their registry of presets."""

from zeroseg.student_config import (
    STUDENT_LAYOUT,
    StudentConfig,
    flat_student_config,
    list_students,
    nested_student_config,
    student_config,
)

from .grouping import Assignment, GroupingBlock
from .pretrained import create_student, load_pretrained
from .registry import build_student
from .student import (
    Student,
    count_parameters,
    parameter_breakdown,
    random_masking,
    sincos_pos_embed_2d,
)

__all__ = [
    "STUDENT_LAYOUT",
    "Assignment",
    "GroupingBlock",
    "Student",
    "StudentConfig",
    "build_student",
    "count_parameters",
    "create_student",
    "flat_student_config",
    "list_students",
    "load_pretrained",
    "nested_student_config",
    "parameter_breakdown",
    "random_masking",
    "sincos_pos_embed_2d",
    "student_config",
]
