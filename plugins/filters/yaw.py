"""Yaw filter: keep identities whose face is near frontal, |yaw| < max_abs_yaw degrees
(20 in the paper), as measured by a pose model from the registry."""
from __future__ import annotations

import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.filtering import Decision, FaceSubject, not_measured


class YawFilter:
    def __init__(self, max_abs_yaw: float = 20.0, pose: str = ""):
        self.max_abs_yaw = float(max_abs_yaw)
        self.pose = pose   # empty: the run's models.pose

    def _model(self, context):
        if self.pose:
            return context.create("pose", self.pose)
        return context.model("pose")

    def judge(self, subjects: list[FaceSubject], context) -> list[Decision]:
        measurable = [s for s in subjects if s.has_face]
        yaws: dict[int, float] = {}
        if measurable:
            crops = torch.from_numpy(np.stack([s.crop for s in measurable])).permute(0, 3, 1, 2).contiguous()
            landmarks = torch.from_numpy(np.stack([s.crop_landmarks for s in measurable])).to(torch.float32)
            estimated = self._model(context).estimate(crops, landmarks)[:, 0]
            yaws = {id(s): float(y) for s, y in zip(measurable, estimated)}
        decisions = []
        for subject in subjects:
            if id(subject) not in yaws:
                decisions.append(not_measured(subject))
                continue
            yaw = yaws[id(subject)]
            if abs(yaw) < self.max_abs_yaw:
                decisions.append(Decision(True, yaw, f"|yaw| {abs(yaw):.1f} < {self.max_abs_yaw:g}"))
            else:
                decisions.append(Decision(False, yaw, f"|yaw| {abs(yaw):.1f} >= {self.max_abs_yaw:g}"))
        return decisions


@hookimpl
def register_filters(register):
    register("yaw", YawFilter)
