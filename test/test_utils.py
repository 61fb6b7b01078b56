import argparse

import pytest
import torch

from icefall.cli.flags import str2bool
from icefall.utils import AttributeDict, make_pad_mask, to_int_tuple


def test_str2bool_accepts_icefall_spellings():
    for s in ["1", "true", "True", "yes", "y", "t"]:
        assert str2bool(s) is True
    for s in ["0", "false", "FALSE", "no", "n", "f"]:
        assert str2bool(s) is False
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_to_int_tuple_parses_per_stack_flags():
    assert to_int_tuple("2,2,3,4,3,2") == (2, 2, 3, 4, 3, 2)
    assert to_int_tuple("32") == (32,)
    assert to_int_tuple(7) == (7,)
    with pytest.raises(ValueError, match="--encoder-dim"):
        to_int_tuple("192,x", "encoder_dim")


def test_make_pad_mask_marks_frames_past_length():
    mask = make_pad_mask(torch.tensor([3, 1, 0]), max_len=4)
    expected = torch.tensor([[0, 0, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_attribute_dict_reads_and_writes_attributes():
    p = AttributeDict({"a": 1})
    p.b = 2
    assert p["b"] == 2 and p.a == 1
    with pytest.raises(AttributeError):
        _ = p.missing
