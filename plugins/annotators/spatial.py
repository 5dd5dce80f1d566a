"""sd: the spatial domain of the MR score, from the recorded degradation intensities
(docs/method.md#52-sd): for every severity axis, r = (N - rank) / N with average-tie
ranks over ALL degraded samples of the dataset; sd = the minimum over the axes."""
from __future__ import annotations

from synfiqa import hookimpl
from synfiqa.annotation import YAW_AXIS, Annotator
from synfiqa.errors import ConfigError
from synfiqa.mr_label import spatial_score



class SpatialAnnotator(Annotator):
    """Min over |yaw| and every severity axis the degradation chain declared of the
    dataset-wide rank score. `include_yaw=false` is for foreign datasets that never
    recorded a pose; the paper always ranks |yaw|."""

    scope = "dataset"
    provides = ("sd",)

    def __init__(self, include_yaw: bool = True):
        if not isinstance(include_yaw, bool):
            raise ConfigError(f"sd: include_yaw must be true or false, got {include_yaw!r}")
        self.include_yaw = include_yaw

    def axes(self, table) -> list[str]:
        axes = ([YAW_AXIS] if self.include_yaw else []) + list(table.severity_axes)
        return list(dict.fromkeys(axes))  # an axis named twice is ranked once

    def annotate_dataset(self, table, context):
        axes = self.axes(table)
        if not axes:
            raise ConfigError("sd: no severity axis to rank (the degradation chain declared none and "
                              "include_yaw is false)")
        try:
            columns = [table.column(axis) for axis in axes]
        except KeyError as error:
            raise ConfigError(f"sd: {error.args[0]}") from None
        return {"sd": spatial_score(columns)}


@hookimpl
def register_annotators(register):
    register("sd", SpatialAnnotator)
