"""The procedural scenes, the word tokenizer built from their captions, the demo's style sets and their measures."""
from __future__ import annotations

import numpy as np
import pytest

from training import scenes as sd
from training import style_sets


def test_scenes_are_reproducible_prefix_stable_and_captioned_from_their_factors():
    a, b = sd.scenes(40, seed=3), sd.scenes(10, seed=3)
    assert a[:10] == b and sd.scenes(5, seed=3, start=10) == a[10:15]
    assert [s.caption for s in sd.scenes(10, seed=4)] != [s.caption for s in b]
    for s in a:
        assert s.colour != s.background
        words = s.caption.split()
        assert (words[0] == "a") == (s.count == 1) and (words[0] == "two") == (s.count == 2)
        assert s.colour in words and (s.shape in words if s.count == 1 else sd.plural(s.shape) in words)
        assert ("background" not in words) or f"over a {s.background} background" in s.caption
        assert set(words) <= set(sd.vocabulary())
    images = sd.render_scenes(a)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images[:10], sd.render_scenes(b))


def test_a_scene_is_drawn_where_its_caption_says():
    scene = sd.Scene("square", "red", "white", 1, "left", ((0.28, 0.5),), 0.2, "a red square on the left")
    image = sd.render_scene(scene).astype(int)
    red = (image[..., 0] > 150) & (image[..., 1] < 100)
    ys, xs = np.nonzero(red)
    assert xs.mean() < 12 and 13 < ys.mean() < 19  # the left third, vertically centred
    assert (image[0, -1] == sd.BACKGROUNDS["white"]).all()


def test_shape_image_set_labels_each_scene_with_its_shape():
    data = sd.shape_image_set(12, seed=1)
    assert data.tasks[0].labels == sd.SHAPES and data.arrays.shape == (12, 32, 32, 3)
    assert [sd.SHAPES[t] for t in data.targets[:, 0]] == [s.shape for s in sd.scenes(12, seed=1)]


def test_word_tokenizer_makes_each_caption_word_one_token():
    from training.base_diffusion import bpe_merges, word_tokenizer

    tokenizer = word_tokenizer(sd.vocabulary())
    for word in sd.vocabulary():
        assert tokenizer.convert_ids_to_tokens(tokenizer(word).input_ids) == [
            "<|startoftext|>", f"{word}</w>", "<|endoftext|>"]
    caption = "two yellow triangles one above the other over a gray background"
    assert len(tokenizer(caption).input_ids) == len(caption.split()) + 2
    assert tokenizer.convert_ids_to_tokens(tokenizer("zebra").input_ids)[1:-1] == ["z", "e", "b", "r", "a</w>"]
    # most frequent pair first, ties by the smaller pair: ("a", "b") < ("a", "b</w>") < ("ab", "c</w>")
    assert bpe_merges(["ab", "abc"]) == [("a", "b"), ("a", "b</w>"), ("ab", "c</w>")]


@pytest.mark.parametrize("name", list(style_sets.STYLES))
def test_each_style_moves_its_statistic_far_from_plain_scenes(name):
    """The measures the benchmark uses separate the styles: a styled set sits far from plain scenes and close to
    another styled set of the same style (distances from a held-out reference set)."""
    spec = style_sets.STYLES[name]
    reference = spec.statistic(style_sets.style_set(spec, 64, seed=7)[0])
    plain = sd.render_scenes(sd.scenes(64, seed=8))
    styled, captions = style_sets.style_set(spec, 64, seed=8)
    assert captions == [s.caption for s in sd.scenes(64, seed=8)]
    d_plain = style_sets.style_distance(spec, plain, reference)
    d_styled = style_sets.style_distance(spec, styled, reference)
    assert d_styled < 0.25 * d_plain, (d_styled, d_plain)  # measured: crimson 0.18, stripes 0.08, blur < 0.001


def test_a_nearly_flat_image_dominates_the_per_image_share_but_not_the_pooled_one():
    """Why the power shares are pooled: a flat gray image with faint grain has nearly all of its tiny AC power at
    high frequencies, so its share weighs as much as a whole scene's in a per-image mean."""
    scenes = sd.render_scenes(sd.scenes(7, seed=3))
    grain = np.full((1, 32, 32, 3), 128, np.uint8)
    grain[0, ::2, ::2] += 2  # a checkerboard of 2 grey levels: all of its AC power is above 1/4 cycle per pixel
    both = np.concatenate([scenes, grain])
    spec = style_sets.STYLES["blur"]
    pooled, per_image = spec.statistic, spec.second.statistic
    assert spec.second.key == "per_image"
    assert per_image(both)[0] > per_image(scenes)[0] + 0.1  # one image in eight moves the mean by > 0.1
    assert abs(pooled(both)[0] - pooled(scenes)[0]) < 0.001


def test_the_soft_histogram_counts_a_colour_near_a_bin_edge_with_its_neighbours():
    """Two colours 4 levels apart across a hard bin edge (192 in red): hard bins count them as wholly different
    colours, soft bins as nearly the same one. Both histograms sum to 1, and at a bin centre they agree."""
    def image(rgb):
        return np.full((1, 2, 2, 3), rgb, np.uint8)

    a, b = image((190, 22, 58)), image((194, 22, 58))
    soft, hard = style_sets.colour_histogram, style_sets.colour_histogram_hard
    assert np.abs(hard(a) - hard(b)).sum() == 2.0
    assert np.abs(soft(a) - soft(b)).sum() < 0.15
    for h in (soft, hard):
        assert h(a).sum() == pytest.approx(1.0)
    centre = image((224, 32, 96))
    assert np.array_equal(soft(centre), hard(centre))
    assert style_sets.STYLES["crimson"].second.statistic is hard


def test_crimson_keeps_every_shape_visible_on_every_background():
    for colour, rgb in sd.COLOURS.items():
        for background, bg in sd.BACKGROUNDS.items():
            if colour != background:
                a = style_sets.crimson(np.array([[rgb]], np.uint8)).astype(int)
                b = style_sets.crimson(np.array([[bg]], np.uint8)).astype(int)
                assert np.abs(a - b).sum() > 60, (colour, background)


def test_style_set_files_train_with_their_captions(tmp_path):
    from training.style import ImageFolderError, image_prompts, load_image_folder

    folder = style_sets.write_style_set(style_sets.STYLES["blur"], tmp_path / "blur", 3, seed=1)
    (folder / "notes.txt").write_text("not a caption: no image of that name")
    images = load_image_folder(folder, 32)
    assert images.files == ["000.png", "001.png", "002.png"] and images.unreadable == ["notes.txt"]
    captions = [s.caption for s in sd.scenes(3, seed=1)]
    assert images.captions == captions
    assert image_prompts(images, "{caption}, {style} style", "blur") == [f"{c}, blur style" for c in captions]
    assert image_prompts(images, "a photo in {style} style", "blur") == ["a photo in blur style"] * 3
    (folder / "001.txt").unlink()
    with pytest.raises(ImageFolderError, match=r"1 image\(s\) have no caption file .*: 001.png"):
        image_prompts(load_image_folder(folder, 32), "{caption}", "blur")
