import pytest
import torch

from zeroseg.inference import (
    class_probabilities,
    dense_score_map,
    grid_score_map,
    label_map,
    labels_from_scores,
    pixel_class_scores,
)

TEXT = torch.eye(3, 4)  # 3 classes along the first 3 axes of a 4-d space


def test_class_probabilities_rows_sum_to_one():
    p = class_probabilities(torch.randn(5, 4), TEXT, scale=100.0)
    assert p.shape == (5, 3)
    assert torch.allclose(p.sum(-1), torch.ones(5))


def test_label_map_known_answer():
    # group 0 = class 2 exactly, group 1 = class 0 exactly, group 2 = ambiguous (background)
    segments = torch.tensor([[0.0, 0.0, 3.0, 0.0], [2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    pixel_groups = torch.zeros(3, 2, 3)
    pixel_groups[0, 0, :] = 0.9  # top row -> group 0
    pixel_groups[1, 1, :2] = 0.8  # bottom-left -> group 1
    pixel_groups[2, 1, 2] = 0.7  # bottom-right -> group 2
    labels = label_map(pixel_groups, segments, TEXT, threshold=0.9)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[3, 3, 3], [1, 1, 0]]
    # no background: the ambiguous group takes one of its two tied classes
    labels = label_map(pixel_groups, segments, TEXT, threshold=0.9, background="none")
    assert labels[1, 2].item() in (1, 2)


def test_background_modes():
    cos = torch.tensor([[0.9, 0.1, 0.0], [0.3, 0.29, 0.0]])
    assert labels_from_scores(cos, 0.8).tolist() == [1, 0]  # row 2: softmax max = 0.73
    assert labels_from_scores(cos, 0.5, background="cosine").tolist() == [1, 0]
    assert labels_from_scores(cos, 0.5, background="none").tolist() == [1, 1]
    assert labels_from_scores(cos, 0.0, background="prompt").tolist() == [0, 0]
    with pytest.raises(ValueError):
        labels_from_scores(cos, 0.5, background="bogus")


def test_pixel_class_scores_agree_with_label_map():
    torch.manual_seed(0)
    pg, segs = torch.rand(4, 8, 8), torch.randn(4, 4)
    scores = pixel_class_scores(pg, segs, TEXT)
    assert scores.shape == (3, 8, 8)
    a = labels_from_scores(scores, 0.6, class_dim=0)
    assert torch.equal(a, label_map(pg, segs, TEXT, 0.6))


def test_labels_from_grid_blocks():
    cells = torch.zeros(2, 2, 4)
    cells[0, 0, 0] = cells[0, 1, 1] = cells[1, 0, 2] = 1.0
    cells[1, 1] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # ambiguous -> background
    labels = labels_from_scores(grid_score_map(cells, TEXT, (4, 6)), 0.9, class_dim=0)
    expected = torch.tensor(
        [[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [3, 3, 3, 0, 0, 0], [3, 3, 3, 0, 0, 0]]
    )
    assert torch.equal(labels, expected)


def test_labels_from_dense_constant_regions():
    dense = torch.zeros(2, 2, 4)
    dense[:, 0, 1] = 1.0  # left column -> class 1 (label 2)
    dense[:, 1, 2] = 1.0  # right column -> class 2 (label 3)
    labels = labels_from_scores(dense_score_map(dense, TEXT, (8, 8)), 0.5, class_dim=0)
    assert labels.shape == (8, 8)
    assert (labels[:, :3] == 2).all() and (labels[:, 5:] == 3).all()
