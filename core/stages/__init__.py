"""The pipeline's stages, one driver module each, in the order a build runs them.

    s1_generate    identities from a generator (a folder of photos, or a generative model)
    s2_filter      identity filters (yaw, glasses, expression, uniqueness), each decision recorded
    s3_synthesize  Stage 2: the plan of R reference and D degraded specs per identity (pose, expression,
                   light, framing, prompt; plan.py), and the backend that turns it into face crops
    s4_degrade     the degradation chain over aligned faces, every parameter recorded
    s5_annotate    the MR label: fr, sd, vl per sample, then dataset-wide ranks and min-max
    s6_train       a FIQA network trained on built datasets (CR-FIQA recipe, CR or MR target, DDP)
    s7_score       quality scores of any photos: FIQA networks or the MR label with references
    s8_evaluate    EDC / pAUC of a quality score against face recognition
    export         a finished build as WebDataset shards, MXNet RecordIO, Parquet or an HF imagefolder
    build          runs s1, s2, the per-identity work (align, references, s4, s5) and the
                   dataset-wide step into one SynFIQA dataset

A driver reads the config and writes its stage's outputs; the contracts it drives (what a
generator, filter, degradation, annotator or model must offer) live beside this package in
`synfiqa.generation`, `synfiqa.filtering`, `synfiqa.degradation`, `synfiqa.annotation`,
`synfiqa.models` and `synfiqa.protocols`. Every command of the CLI is a thin call of one driver.
"""
