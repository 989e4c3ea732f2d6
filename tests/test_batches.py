"""Batches: exact normalization, and augmentation as batch tensor ops that keep content."""

from __future__ import annotations

import torch

from tunewise.data.batches import Augment, Batches


def _images(n=16, size=8):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 4


def test_batches_cover_indices_and_normalize():
    images, labels = _images()
    idx = torch.tensor([1, 3, 5, 7, 9])
    batches = Batches(images, labels, idx, 2, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = list(batches)
    assert len(batches) == 3 and [len(y) for _, y in out] == [2, 2, 1]
    x = torch.cat([b for b, _ in out])
    expected = (images[idx].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in out]), labels[idx])


def test_shuffle_drop_last_is_a_permutation():
    images, labels = _images(n=10)
    gen = torch.Generator().manual_seed(1)
    batches = Batches(images, labels, torch.arange(10), 3, (0, 0, 0), (1, 1, 1), shuffle=True, drop_last=True, generator=gen)
    seen = torch.cat([y for _, y in batches])
    assert len(batches) == 3 and len(seen) == 9


def test_flip_only_gives_original_or_mirror():
    x = torch.randn(64, 3, 8, 8)
    out = Augment(hflip=True, crop="none")(x, torch.Generator().manual_seed(0))
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - x.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54  # about half flipped


def test_translate_is_an_exact_whole_pixel_shift():
    x = torch.randn(32, 3, 16, 16)
    out = Augment(hflip=False, crop="translate", crop_pad=0.125)(x, torch.Generator().manual_seed(0))
    shifted = 0
    for a, b in zip(x, out):
        # find the shift (dy, dx) that reproduces the centre of the output exactly
        hits = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.allclose(b[:, 4:12, 4:12], a[:, 4 + dy : 12 + dy, 4 + dx : 12 + dx], atol=1e-4)
        ]
        assert hits, "output is not a whole-pixel shift of its input"
        shifted += hits[0] != (0, 0)
    assert shifted > 16


def test_resized_crop_keeps_shape_and_changes_content():
    x = torch.randn(8, 3, 16, 16)
    out = Augment(hflip=False, crop="resized")(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)
