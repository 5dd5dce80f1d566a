"""The FLAME 3-D head model in plain torch (no pytorch3d, no chumpy): shape, expression and
pose, linear blend skinning, the 68 landmarks with DECA's dynamic contour, DECA's
orthographic camera, spherical-harmonics shading and the UV albedo, plus loaders for the
user-supplied FLAME / DECA files (see docs/headmodel.md)."""
from .assets import (ASSETS, flame_from_assets, load_generic_model, load_landmark_embedding,
                     load_texture_space, locate_file, texture_from_assets)
from .hints import FLAT_ALBEDO, REFERENCE_SCALE, Hints, render_hints, render_hints_batch, spec_cam, spec_pose
from .flame import FLAME_PARENTS, Flame, FlameOutput, barycentric_points, contour_row, rodrigues, yaw_of
from .safe_pickle import RestrictedUnpickler
from .shading import (SH_CONSTANTS, FlameTexture, crop_pixels, crop_to_image_matrix, orthographic_projection,
                      project, sh_basis, sh_shading, to_image_axes, transform_points, vertex_normals)

__all__ = [
    "ASSETS", "FLAME_PARENTS", "FLAT_ALBEDO", "Hints", "REFERENCE_SCALE", "render_hints", "render_hints_batch",
    "spec_cam", "spec_pose", "Flame", "FlameOutput", "FlameTexture", "RestrictedUnpickler", "SH_CONSTANTS",
    "barycentric_points", "contour_row", "crop_pixels", "crop_to_image_matrix", "flame_from_assets",
    "load_generic_model", "load_landmark_embedding", "load_texture_space", "locate_file", "orthographic_projection",
    "project", "rodrigues", "sh_basis", "sh_shading", "texture_from_assets", "to_image_axes", "transform_points",
    "vertex_normals", "yaw_of",
]


from synfiqa import hookimpl  # noqa: E402


@hookimpl
def register_commands(cli):
    """`synfiqa render`: the conditioning hints of one plan entry (docs/headmodel.md)."""
    from .hints import render_command

    cli.add_command(render_command())
