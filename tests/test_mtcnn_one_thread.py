"""MTCNN runs on one torch thread whatever the caller's count (plugins/models/mtcnn.py): its
boxes and landmarks on the test photos are the same bits at 1 and 2 threads (with the
caller's 2 threads they differed: a degraded sample's pixels by up to 2 levels, Quality-Scores
by up to 5e-4), and the caller's thread count is given back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from synfiqa_plugins.models.mtcnn import MTCNNDetector


@pytest.fixture
def photos(faces_dir):
    return [np.asarray(Image.open(path).convert("RGB")) for path in sorted(faces_dir.glob("*.jpg"))]


def detections(detector, photos, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        found = [detector.detect(photo) for photo in photos]
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    return found


def test_detections_do_not_depend_on_the_thread_count(photos):
    detector = MTCNNDetector(device="cpu")
    one, two = detections(detector, photos, 1), detections(detector, photos, 2)
    assert [len(faces) for faces in one] == [len(faces) for faces in two] == [1] * len(photos)
    for faces_one, faces_two in zip(one, two):
        for a, b in zip(faces_one, faces_two):
            assert np.array_equal(a.box, b.box) and np.array_equal(a.landmarks, b.landmarks) and a.score == b.score
