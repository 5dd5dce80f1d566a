"""s6: training a FIQA network on a built dataset (`synfiqa train`, docs/train.md): the
CR-FIQA recipe with the certainty-ratio target (CR) or the MR labels of a SynFIQA build
(MR), on one CPU, one GPU or many processes under torchrun.

    settings.py   the recipe's constants and the `[train]` config table
    data.py       FaceDataset: SynFIQA builds, identity folders, RecordIO (image, identity, label, params)
    recordio.py   MXNet train.rec/train.idx, read without mxnet
    order.py      the data order: a pure function of (seed, epoch, step)
    loss.py       the ArcFace margin head and the CR-FIQA loss
    network.py    the network of a `fiqa` component (its training_network)
    loop.py       the training loop: DDP, AMP, checkpoints, resume, metrics
    export.py     ONNX export checked under onnxruntime
    plot.py       the loss plot
"""
from synfiqa.stages.s6_train.data import FaceDataset, collate, to_network_input
from synfiqa.stages.s6_train.loop import TrainResult, read_metrics, train
from synfiqa.stages.s6_train.network import network_builder
from synfiqa.stages.s6_train.recordio import RecordFile
from synfiqa.stages.s6_train.settings import TrainSettings, load_settings

__all__ = ["FaceDataset", "RecordFile", "TrainResult", "TrainSettings", "collate",
           "load_settings", "network_builder", "read_metrics", "to_network_input", "train"]
