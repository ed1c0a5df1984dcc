"""The RLE bounds check: run lengths parsed in numpy agree with pycocotools, bad RLEs are refused."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from samft.data.rle import checked_rle, decode_rle, rle_run_lengths


def _from_runs(runs, h, w):
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)  # background first
    return flat.reshape(w, h).T  # column-major, as COCO


@settings(max_examples=100, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_run_lengths_rebuild_the_encoded_mask(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    runs = rle_run_lengths(rle["counts"])
    assert runs.sum() == mask.size and runs.min() >= 0
    np.testing.assert_array_equal(_from_runs(runs, *mask.shape), mask)


def test_large_runs_use_multi_character_numbers():
    mask = np.zeros((300, 400), bool)
    mask[100:250, 50:390] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    runs = rle_run_lengths(rle["counts"].decode())
    np.testing.assert_array_equal(_from_runs(runs, 300, 400), mask)
    checked = checked_rle({"size": [300, 400], "counts": rle["counts"].decode()}, 300, 400)
    np.testing.assert_array_equal(decode_rle(checked), mask)


@pytest.mark.parametrize("segmentation, message", [
    ({"size": [4, 4], "counts": "0`"}, "end in the middle"),
    ({"size": [4, 4], "counts": "4 4"}, "alphabet"),
    ({"size": [4, 4], "counts": ""}, "empty"),
    ({"size": [4, 5], "counts": "d0"}, "differs from the image size"),
    ({"size": [4, 4], "counts": [3, 20]}, "cover 23 pixels"),
    ({"counts": "d0"}, "not an RLE"),
    ([[0, 0, 1, 1, 2, 0]], "not an RLE"),
])
def test_bad_rles_are_refused_before_decoding(segmentation, message):
    with pytest.raises(ValueError, match=message):
        checked_rle(segmentation, 4, 4)


def test_uncompressed_rle_is_accepted():
    rle = checked_rle({"size": [2, 3], "counts": [1, 3, 2]}, 2, 3)
    assert decode_rle(rle).tolist() == [[0, 1, 0], [1, 1, 0]]
