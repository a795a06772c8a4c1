import numpy as np
import pytest
import torch

from zeroseg.predict import apply_rule, parse_rule


def test_parse_rule():
    assert parse_rule("prompt") == ("prompt", 0.0)
    assert parse_rule("threshold:0.9") == ("threshold", 0.9)
    assert parse_rule("cosine:0.25") == ("cosine", 0.25)
    for bad in ("prompt:1", "threshold", "threshold:x", "margin:0.1"):
        with pytest.raises(ValueError, match="background rule"):
            parse_rule(bad)


def test_rules_on_a_known_map():
    # row 0 is the background prompt; two classes. Pixel (0,0): background wins; (0,1): class 1
    # confidently; (1,0): classes tie (low confidence); (1,1): class 2 but low cosine.
    cos = torch.tensor(
        [
            [[0.9, 0.1], [0.1, 0.1]],
            [[0.5, 0.8], [0.5, 0.1]],
            [[0.1, 0.1], [0.5, 0.3]],
        ]
    )
    assert apply_rule(cos, "prompt", (2, 2)).tolist() == [[0, 1], [1, 2]]
    # threshold ignores the background prompt: softmax(100 * cos) over the two classes
    assert apply_rule(cos, "threshold:0.9", (2, 2)).tolist() == [[1, 1], [0, 2]]
    assert apply_rule(cos, "cosine:0.4", (2, 2)).tolist() == [[1, 1], [1, 0]]
    assert np.array_equal(apply_rule(None, "prompt", (3, 4)), np.zeros((3, 4), np.int64))
