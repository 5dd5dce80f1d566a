"""sd: the spatial domain of the MR score, from the recorded degradation intensities."""
from __future__ import annotations

from synfiqa import hookimpl
from synfiqa.annotation import Annotator
from synfiqa.scoring import spatial_score

YAW_AXIS = "pose.abs_yaw"


class SpatialAnnotator(Annotator):
    """Min over every declared severity axis (and |yaw|) of the dataset-wide rank score."""

    scope = "dataset"
    provides = ("sd",)

    def __init__(self, include_yaw: bool = True):
        self.include_yaw = include_yaw

    def annotate_dataset(self, table, context):
        axes = ([YAW_AXIS] if self.include_yaw else []) + list(table.severity_axes)
        return {"sd": spatial_score([table.column(axis) for axis in axes])}


@hookimpl
def register_annotators(register):
    register("sd", SpatialAnnotator)
