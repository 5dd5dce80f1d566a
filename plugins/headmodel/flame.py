"""FLAME in plain torch: shape, expression and pose blend shapes, linear blend skinning over
five joints, and the 68 landmarks (17 yaw-dependent contour points, then 51 static ones).

The maths follows the FLAME paper (Li et al., SIGGRAPH Asia 2017) as DECA evaluates it:

* ``v_shaped = v_template + shapedirs[..., :n_shape] @ shape + shapedirs[..., E:E+n_exp] @ exp``
  with ``E`` = ``expression_offset`` (300 in FLAME 2020: 300 shape, then 100 expression columns);
* joints ``J = J_regressor @ v_shaped`` (5 joints: global, neck, jaw, left eye, right eye;
  parents ``[-1, 0, 1, 1, 1]``);
* the full pose is 15 numbers, axis-angle per joint, ordered global, neck, jaw, eyes (DECA's
  ``pose`` code is (global, jaw); neck and eyes default to zero);
* pose correctives ``posedirs @ vec(R_j - I)`` over the non-root joints;
* ``v = sum_j w_vj G_j [v_posed; 1]`` with ``G_j`` the world transform of joint j composed
  along the tree, minus its rest-pose joint location.

Everything is batched (N, ...) and differentiable; no pytorch3d, no chumpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

NECK = 1  # the joint whose chain (neck, global) drives the dynamic contour
FLAME_PARENTS = (-1, 0, 1, 1, 1)
CONTOUR_MAX_YAW = 39  # the dynamic-contour table covers yaw -39..39 degrees (79 rows)


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices: R = I + a K + b K^2 with K the
    cross-product matrix of the vector, a = sin(t)/t, b = (1 - cos t)/t^2 (their limits 1 and
    1/2 below t = 1e-6, so zero gives the identity exactly)."""
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)
    theta = theta2.clamp_min(1e-24).sqrt()
    small = theta < 1e-6
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(safe)) / (safe * safe))
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def yaw_of(rotation: torch.Tensor) -> torch.Tensor:
    """The rotation about y (radians) of (..., 3, 3) matrices, as DECA's ``rot_mat_to_euler``:
    atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2))."""
    return torch.atan2(-rotation[..., 2, 0], torch.sqrt(rotation[..., 0, 0] ** 2 + rotation[..., 1, 0] ** 2))


def contour_row(yaw_degrees: torch.Tensor) -> torch.Tensor:
    """The row of the dynamic-contour table for a yaw in degrees, DECA's rule (FLAME.py's
    ``_find_dynamic_lmk_idx_and_bcoords``): y = round(min(yaw, 39)); rows 0..39 hold yaw
    0..39, rows 40..78 hold yaw -1..-39 (row 39 - y), and any yaw below -39 uses row 78."""
    y = torch.round(torch.clamp(yaw_degrees, max=CONTOUR_MAX_YAW)).long()
    negative = torch.where(y < -CONTOUR_MAX_YAW, torch.full_like(y, 2 * CONTOUR_MAX_YAW), CONTOUR_MAX_YAW - y)
    return torch.where(y < 0, negative, y)


def barycentric_points(vertices: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor,
                       bary: torch.Tensor) -> torch.Tensor:
    """Points on the mesh: vertices (N,V,3), faces (F,3), face_index (N,L), bary (N,L,3)
    -> (N,L,3) = sum_k bary[..., k] * vertices[faces[face_index, k]]."""
    corners = faces[face_index]  # (N, L, 3)
    batch = torch.arange(vertices.shape[0], device=vertices.device)[:, None, None]
    return (vertices[batch, corners] * bary[..., None]).sum(-2)


@dataclass
class FlameOutput:
    vertices: torch.Tensor        # (N, V, 3) posed mesh, FLAME units (metres)
    landmarks2d: torch.Tensor     # (N, 68, 3): 17 dynamic contour points, then 51 static ones
    landmarks3d: torch.Tensor | None  # (N, 68, 3) from the full (static) 68-point embedding, if the file has one
    joints: torch.Tensor          # (N, 5, 3) posed joint locations


class Flame(torch.nn.Module):
    """The FLAME head model from plain arrays (see :func:`~.assets.load_generic_model` and
    :func:`~.assets.load_landmark_embedding`)."""

    def __init__(self, model: dict, landmarks: dict | None = None, n_shape: int = 100, n_exp: int = 50,
                 expression_offset: int = 300, dtype: torch.dtype = torch.float32):
        super().__init__()
        shapedirs = np.asarray(model["shapedirs"], dtype=np.float64)
        if shapedirs.shape[-1] < expression_offset + n_exp or n_shape > expression_offset:
            raise ValueError(f"shapedirs has {shapedirs.shape[-1]} columns: cannot take {n_shape} shape columns "
                             f"and {n_exp} expression columns from column {expression_offset}")
        self.n_shape, self.n_exp = n_shape, n_exp
        t = lambda array, kind=dtype: torch.as_tensor(np.asarray(array), dtype=kind)  # noqa: E731
        self.register_buffer("v_template", t(model["v_template"]))
        self.register_buffer("faces", t(model["f"], torch.long))
        self.register_buffer("shapedirs", t(np.concatenate(
            [shapedirs[:, :, :n_shape], shapedirs[:, :, expression_offset:expression_offset + n_exp]], -1)))
        posedirs = np.asarray(model["posedirs"], dtype=np.float64)
        # (V, 3, P) -> (P, V*3): one row per entry of the flattened (R_j - I), j = 1..J-1
        self.register_buffer("posedirs", t(posedirs.reshape(-1, posedirs.shape[-1]).T))
        self.register_buffer("J_regressor", t(model["J_regressor"]))
        parents = np.asarray(model["kintree_table"])[0].astype(np.int64)
        parents[0] = -1  # FLAME stores the root's parent as uint32 max
        self.register_buffer("parents", torch.as_tensor(parents))
        self.register_buffer("lbs_weights", t(model["weights"]))
        chain, joint = [], NECK
        while joint != -1:
            chain.append(joint)
            joint = int(parents[joint])
        self.neck_chain = tuple(chain)  # (1, 0) for FLAME: neck, then global
        self.has_landmarks = landmarks is not None
        self.has_full_landmarks = bool(landmarks) and "full_lmk_faces_idx" in landmarks
        if landmarks is not None:
            self.register_buffer("lmk_faces_idx", t(landmarks["static_lmk_faces_idx"], torch.long).reshape(-1))
            self.register_buffer("lmk_bary_coords", t(landmarks["static_lmk_bary_coords"]).reshape(-1, 3))
            self.register_buffer("dynamic_lmk_faces_idx", t(landmarks["dynamic_lmk_faces_idx"], torch.long))
            self.register_buffer("dynamic_lmk_bary_coords", t(landmarks["dynamic_lmk_bary_coords"]))
            if self.has_full_landmarks:
                self.register_buffer("full_lmk_faces_idx", t(landmarks["full_lmk_faces_idx"], torch.long).reshape(-1))
                self.register_buffer("full_lmk_bary_coords", t(landmarks["full_lmk_bary_coords"]).reshape(-1, 3))

    # ------------------------------------------------------------------ pieces

    def full_pose(self, pose: torch.Tensor | None, batch: int, neck_pose=None, eye_pose=None) -> torch.Tensor:
        """(N, 15) from DECA's (N, 6) pose (global, jaw) and optional neck (N,3) / eyes (N,6);
        a (N, 15) pose is taken as is."""
        zeros = lambda n: self.v_template.new_zeros(batch, n)  # noqa: E731
        if pose is None:
            pose = zeros(6)
        if pose.shape[-1] == 15:
            return pose
        neck_pose = zeros(3) if neck_pose is None else neck_pose.expand(batch, 3)
        eye_pose = zeros(6) if eye_pose is None else eye_pose.expand(batch, 6)
        return torch.cat([pose[:, :3], neck_pose, pose[:, 3:6], eye_pose], 1)

    def shaped(self, shape: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        betas = torch.cat([shape, expression], 1)
        return self.v_template + torch.einsum("nl,vkl->nvk", betas, self.shapedirs)

    def skin(self, v_shaped: torch.Tensor, full_pose: torch.Tensor):
        """Pose correctives and LBS: (posed vertices (N,V,3), posed joints (N,J,3))."""
        n, joints_count = v_shaped.shape[0], self.J_regressor.shape[0]
        joints = torch.einsum("jv,nvk->njk", self.J_regressor, v_shaped)
        rotations = rodrigues(full_pose.reshape(n, -1, 3))  # (N, J, 3, 3)
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        pose_feature = (rotations[:, 1:] - eye).reshape(n, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(n, -1, 3)
        # world transforms along the kinematic tree
        local_t = joints.clone()
        local_t[:, 1:] = joints[:, 1:] - joints[:, self.parents[1:]]
        world_r, world_t = [rotations[:, 0]], [local_t[:, 0]]
        for j in range(1, joints_count):
            p = int(self.parents[j])
            world_r.append(world_r[p] @ rotations[:, j])
            world_t.append(world_t[p] + (world_r[p] @ local_t[:, j, :, None])[..., 0])
        world_r, world_t = torch.stack(world_r, 1), torch.stack(world_t, 1)
        # the transform that takes a rest-pose point to its posed place: R_j (x - J_j) + t_j
        offset = world_t - (world_r @ joints[..., None])[..., 0]
        blended_r = torch.einsum("vj,njab->nvab", self.lbs_weights, world_r)
        blended_t = torch.einsum("vj,nja->nva", self.lbs_weights, offset)
        vertices = (blended_r @ v_posed[..., None])[..., 0] + blended_t
        return vertices, world_t

    def landmarks(self, vertices: torch.Tensor, full_pose: torch.Tensor) -> torch.Tensor:
        """The 68 landmarks: 17 contour points from the row of the dynamic table chosen by the
        yaw of the neck chain (global @ neck), then the 51 static points."""
        n = vertices.shape[0]
        chain = rodrigues(full_pose.reshape(n, -1, 3)[:, list(self.neck_chain)])
        relative = torch.eye(3, dtype=vertices.dtype, device=vertices.device).expand(n, 3, 3)
        for k in range(len(self.neck_chain)):
            relative = chain[:, k] @ relative
        row = contour_row(yaw_of(relative) * 180.0 / math.pi)
        faces_idx = torch.cat([self.dynamic_lmk_faces_idx[row], self.lmk_faces_idx.expand(n, -1)], 1)
        bary = torch.cat([self.dynamic_lmk_bary_coords[row], self.lmk_bary_coords.expand(n, -1, -1)], 1)
        return barycentric_points(vertices, self.faces, faces_idx, bary)

    # ------------------------------------------------------------------ forward

    def forward(self, shape: torch.Tensor | None = None, expression: torch.Tensor | None = None,
                pose: torch.Tensor | None = None, neck_pose: torch.Tensor | None = None,
                eye_pose: torch.Tensor | None = None) -> FlameOutput:
        """shape (N, n_shape), expression (N, n_exp), pose (N, 6) = (global, jaw) axis-angle
        as DECA's codes, or (N, 15) for all five joints; missing codes are zero."""
        batch = next((x.shape[0] for x in (shape, expression, pose) if x is not None), 1)
        shape = self.v_template.new_zeros(batch, self.n_shape) if shape is None else shape
        expression = self.v_template.new_zeros(batch, self.n_exp) if expression is None else expression
        full_pose = self.full_pose(pose, batch, neck_pose, eye_pose)
        vertices, joints = self.skin(self.shaped(shape, expression), full_pose)
        if self.has_landmarks:
            landmarks2d = self.landmarks(vertices, full_pose)
        else:
            landmarks2d = vertices.new_zeros(batch, 0, 3)
        landmarks3d = None
        if self.has_full_landmarks:
            landmarks3d = barycentric_points(vertices, self.faces, self.full_lmk_faces_idx.expand(batch, -1),
                                             self.full_lmk_bary_coords.expand(batch, -1, -1))
        return FlameOutput(vertices, landmarks2d, landmarks3d, joints)
