"""Retrieval ranks and recalls (evaluate/retrieval.py) on score matrices small enough to rank by hand: ties, images
without a caption, a custom score, median ranks, input checks, top_k. Found by the mutation run (scripts/mutation.sh)."""
import numpy as np
import pytest
import torch

from clipforge.evaluate.retrieval import KS, ranks_image_to_text, ranks_text_to_image, retrieval_metrics, top_k

IMG = np.eye(3, dtype=np.float32)
# caption 0 -> image 0 (exact), caption 1 -> image 1 (but ties with image 2), caption 2 -> image 2 (ranks it 3rd)
TXT = np.array([[1.0, 0, 0], [0, 0.5, 0.5], [0.9, 0.8, 0.1]], np.float32)
OWNER = np.array([0, 1, 2])


def test_ranks_count_strictly_better_candidates_and_ties_go_to_the_query():
    assert ranks_text_to_image(IMG, TXT, OWNER).tolist() == [0, 0, 2]
    # image 0: its caption 0 scores 1.0, caption 2 scores 0.9 -> rank 0; image 1: caption 1 0.5 < caption 2 0.8 -> 1
    # image 2: caption 2 scores 0.1, captions 1 (0.5) -> rank 1
    assert ranks_image_to_text(IMG, TXT, OWNER).tolist() == [0, 1, 1]


def test_an_images_rank_is_that_of_its_best_caption_and_chunks_do_not_matter():
    txt = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3]], np.float32)   # image 0 owns captions 0 and 1
    img = np.eye(2, dtype=np.float32)
    owner = np.array([0, 0, 1])
    assert ranks_image_to_text(img, txt, owner).tolist() == [0, 1]
    assert ranks_image_to_text(img, txt, owner, chunk=1).tolist() == [0, 1]
    assert ranks_text_to_image(img, txt, owner, chunk=1).tolist() == ranks_text_to_image(img, txt, owner).tolist() == [1, 0, 1]


def test_a_custom_score_function_is_used_both_ways():
    flip = lambda a, b: -(a @ b.T)                     # noqa: E731 - the worst match becomes the best
    assert ranks_text_to_image(IMG, TXT, OWNER, score=flip).tolist() == [2, 1, 0]
    assert ranks_image_to_text(IMG, TXT, OWNER, score=flip).tolist() == [2, 1, 1]
    m = retrieval_metrics(IMG, TXT, OWNER, score=flip)
    assert m["text_to_image_R@1"] == pytest.approx(1 / 3) and m["image_to_text_R@1"] == 0.0


def test_metrics_values_median_ranks_and_images_without_captions():
    img = np.eye(4, dtype=np.float32)                  # image 3 has no caption: not an image->text query
    m = retrieval_metrics(img, np.concatenate([TXT, np.zeros((3, 1), np.float32)], 1), OWNER)
    assert m["image_to_text_R@1"] == pytest.approx(1 / 3)          # ranks [0, 1, 1]
    assert m["text_to_image_R@1"] == pytest.approx(2 / 3)          # ranks [0, 0, 2]
    assert m["text_to_image_R@5"] == m["image_to_text_R@5"] == m["text_to_image_R@10"] == 1.0
    assert m["MR"] == pytest.approx(np.mean([1 / 3, 1, 1, 2 / 3, 1, 1]))
    assert m["image_to_text_median_rank"] == 2.0 and m["text_to_image_median_rank"] == 1.0
    assert KS == (1, 5, 10)
    only = retrieval_metrics(IMG, TXT, OWNER, ks=(2,))
    assert only["image_to_text_R@2"] == 1.0 and only["text_to_image_R@2"] == pytest.approx(2 / 3)
    assert only["MR"] == pytest.approx((1 + 2 / 3) / 2) and "image_to_text_R@1" not in only


def test_metrics_of_an_empty_split_are_zero():
    m = retrieval_metrics(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    assert all(v == 0.0 for v in m.values()) and len(m) == 9


def test_owner_must_match_the_texts_and_index_the_images():
    with pytest.raises(ValueError, match="text_owner has 2 entries for 3 texts"):
        retrieval_metrics(IMG, TXT, [0, 1])
    with pytest.raises(ValueError) as e:
        retrieval_metrics(IMG, TXT, [0, 1, 3])
    assert str(e.value) == "text_owner must index into the images"
    with pytest.raises(ValueError, match="must index into the images"):
        retrieval_metrics(IMG, TXT, [0, -1, 2])
    assert retrieval_metrics(IMG, TXT, [0, 1, 2])["MR"] > 0       # the last image is a valid owner


def test_ranks_of_no_queries_are_empty():
    assert ranks_image_to_text(np.zeros((0, 3), np.float32), TXT, OWNER).shape == (0,)
    assert ranks_text_to_image(IMG, np.zeros((0, 3), np.float32), np.zeros(0, np.int64)).shape == (0,)


def test_top_k_gives_the_best_candidates_in_order():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    c = np.array([[0.2, 0.9], [0.9, 0.1], [0.5, 0.5]], np.float32)
    idx, val = top_k(q, c, k=2)
    assert idx.tolist() == [[1, 2], [0, 2]]
    np.testing.assert_allclose(val, [[0.9, 0.5], [0.9, 0.5]], atol=1e-6)
    assert top_k(q, c)[0].shape == (2, 3)                          # default k=5, at most every candidate
    idx, _ = top_k(q, c, k=1, score=lambda a, b: -(a @ b.T))
    assert idx.tolist() == [[0], [1]]
    assert isinstance(top_k(torch.from_numpy(q), torch.from_numpy(c), 1)[0], np.ndarray)
