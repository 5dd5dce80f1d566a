"""The ``caphuman`` Stage-2 backend: MR-FIQA's generator (CapHuman's ControlFace on SD1.5) in
diffusers modules with a custom denoising loop (docs/stage2_diffusion.md).

* :mod:`.network`: ControlFace (ControlNet + mask head + identity projections), the DDIM + CFG
  sampler with the ControlNet reused across the guidance halves, the converted folder's layout;
* :mod:`.convert`: the original LDM-format files -> that folder (``synfiqa convert caphuman``);
* :mod:`.identity`: the per-identity inputs (FaceNet ID token, parsed CLIP image tokens, DECA codes);
* :mod:`.backend`: the backend itself (plan entries -> hints -> 512x512 images).
"""
